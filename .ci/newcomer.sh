#!/usr/bin/env bash
# CI, first step: the README's first command run exactly as a new user runs it (issue 11).
#
# In a fresh clone of the current commit (so uncommitted files are not there), with its own fresh
# .venv (no test extras), headless, in the background, no stdin:
#     bash scripts/lab.sh --no-browser --port <free port> --ServerApp.token=<random>
# then checks, with .ci/newcomer_check.py from a small separate checker venv (playwright +
# websocket-client, Debian chromium), that (a) the panel shows the embedded default as ready,
# (b) {base_url}llm/api/chat answers with real tokens, (c) a kernel started by the server has
# working `ollama` and `openai` clients with no configuration. Stops the server by PID (and its
# process group) and prints the time each phase took. Any failure exits non-zero with the log tail.
#
#   bash .ci/newcomer.sh          # the README's first command (scripts/lab.sh)
#   bash .ci/newcomer.sh --pip    # the README's "without the scripts": pip install ".[local]" &&
#                                 # jupyter-llm-af setup-local && jupyter lab (from the clone)
#
# The llama-server build cache (~/.cache/jupyter_llm_af) and pip's cache are shared, so after the
# first build this costs a pip install of JupyterLab and a labextension build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-lab}
INSTALL_TIMEOUT=${NEWCOMER_INSTALL_TIMEOUT:-2400}   # 40 min: a cold llama.cpp build + all of JupyterLab
SERVER_TIMEOUT=${NEWCOMER_SERVER_TIMEOUT:-120}
CHECKER_VENV=$ROOT/.ci/cache/checker-venv
ARTIFACTS=$ROOT/artifacts
mkdir -p "$ARTIFACTS" "$ROOT/.ci/cache"
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
phases=()
t_all=$(now)

# What the checks need (not the product): Debian chromium for the panel (as scripts/install.sh
# --test does; never `playwright install`), curl, ps/pgrep. This runs before that install.
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v curl >/dev/null || need+=(curl)
command -v ps >/dev/null && command -v pkill >/dev/null || need+=(procps)
if [ "${#need[@]}" -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[newcomer] apt: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}"
fi

# the checker's own venv: nothing of the product in it
t=$(now)
if ! "$CHECKER_VENV/bin/python" -c "import playwright, websocket" 2>/dev/null; then
  python3 -m venv "$CHECKER_VENV"
  "$CHECKER_VENV/bin/pip" install -q playwright websocket-client
fi
phases+=("checker venv: $(since "$t") s")

WORK=$(mktemp -d /tmp/llm-af-newcomer-XXXXXX)
CLONE=$WORK/jupyter_llm_af
LOG=$WORK/lab.log
LAB_PID=""

alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st#Z}" = "$st" ]; }
# live (not zombie) processes of a session
in_session() { ps -e -o pid=,sid=,stat=,args= | awk -v s="$1" '$2 == s && $3 !~ /^Z/'; }

term_lab() {
  # jupyter lab was started as a session (and process-group) leader: its PID is the group id
  [ -n "$LAB_PID" ] && alive "$LAB_PID" || return 0
  kill -TERM "$LAB_PID" 2>/dev/null || true
  for _ in $(seq 1 150); do alive "$LAB_PID" || break; sleep 0.2; done
  alive "$LAB_PID" || wait "$LAB_PID" 2>/dev/null || true
}

stop_lab() {
  [ -n "$LAB_PID" ] || return 0
  term_lab
  # whatever is left in its group or session (the embedded llama-server has its own group)
  kill -KILL -- "-$LAB_PID" 2>/dev/null || true
  pkill -KILL -s "$LAB_PID" 2>/dev/null || true
  LAB_PID=""
}

fail() {
  echo "[newcomer] FAILED: $*" >&2
  echo "[newcomer] ---- last 80 lines of the server's output ($LOG) ----" >&2
  tail -n 80 "$LOG" >&2 || true
  exit 1
}

finish() {
  rc=$?
  stop_lab
  cp "$LOG" "$ARTIFACTS/newcomer-$MODE.log" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap finish EXIT

t=$(now)
git clone -q "$ROOT" "$CLONE"
git -C "$CLONE" checkout -q --detach "$(git -C "$ROOT" rev-parse HEAD)"
phases+=("clone $(git -C "$CLONE" rev-parse --short HEAD): $(since "$t") s")

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
BASE="http://127.0.0.1:$PORT/"
# A new user's environment: no venv on PATH, no LLM client settings, empty Jupyter user dirs
# (a user-level kernelspec or config from this machine must not stand in for the product's own).
CLEAN_PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -e '/\.venv/' -e 'checker-venv' | paste -sd: -)
user_env=(
  env -u VIRTUAL_ENV -u PYTHONPATH -u OLLAMA_HOST -u OLLAMA_API_KEY -u OPENAI_BASE_URL
  -u OPENAI_API_BASE -u OPENAI_API_KEY -u JUPYTER_LLM_AF_URL -u JUPYTER_LLM_AF_TOKEN
  -u JUPYTER_LLM_AF_SHARED_URL -u JUPYTER_LLM_AF_DATA_DIR -u JUPYTER_PATH -u JUPYTER_CONFIG_PATH
  "PATH=$CLEAN_PATH"
  "JUPYTER_CONFIG_DIR=$WORK/home/.jupyter"
  "JUPYTER_DATA_DIR=$WORK/home/.local/share/jupyter"
  "JUPYTER_RUNTIME_DIR=$WORK/home/.local/share/jupyter/runtime"
  "JUPYTERLAB_SETTINGS_DIR=$WORK/home/.jupyter/lab/user-settings"
  "JUPYTERLAB_WORKSPACES_DIR=$WORK/home/.jupyter/lab/workspaces"
)
lab_args=(--no-browser --port "$PORT" "--ServerApp.token=$TOKEN")

t_install=$(now)
if [ "$MODE" = "--pip" ]; then
  MODE=pip
  SHOT=newcomer-panel-pip
  # the README's "without the scripts", with the clone standing in for the package on PyPI
  mkdir -p "$WORK/user"
  cd "$WORK/user"
  "${user_env[@]}" setsid bash -c '
    set -e
    python3 -m venv venv && . venv/bin/activate
    pip install -q --upgrade pip
    pip install -q "$0[local]"
    jupyter-llm-af setup-local
    echo "[install] done"
    args=(); [ "$(id -u)" = 0 ] && args+=(--allow-root)
    exec jupyter lab "${args[@]}" "$@"' "$CLONE" "${lab_args[@]}" </dev/null >"$LOG" 2>&1 &
  LAB_PID=$!
  cd "$ROOT"
else
  MODE=lab
  SHOT=newcomer-panel
  # exactly the README's first command; setsid: its own session and process group, so the
  # server and everything it starts can be stopped by its PID
  ( cd "$CLONE" && exec "${user_env[@]}" setsid bash scripts/lab.sh "${lab_args[@]}" ) </dev/null >"$LOG" 2>&1 &
  LAB_PID=$!
fi
echo "[newcomer] $MODE: started (pid $LAB_PID) on port $PORT; log $LOG"

# wait for the install (bounded), then for the server (bounded)
deadline=$(( $(date +%s) + INSTALL_TIMEOUT ))
until grep -q '^\[install\] done' "$LOG" 2>/dev/null; do
  alive "$LAB_PID" || fail "the install exited before it was done"
  [ "$(date +%s)" -lt "$deadline" ] || fail "the install did not finish within $INSTALL_TIMEOUT s"
  sleep 2
done
phases+=("install (fresh .venv, no test extras): $(since "$t_install") s")

t=$(now)
deadline=$(( $(date +%s) + SERVER_TIMEOUT ))
until curl -sf -o /dev/null -H "Authorization: token $TOKEN" "${BASE}api/status"; do
  alive "$LAB_PID" || fail "jupyter lab exited (it should keep running)"
  [ "$(date +%s)" -lt "$deadline" ] || fail "jupyter lab did not answer within $SERVER_TIMEOUT s"
  sleep 0.5
done
phases+=("jupyter lab answering: $(since "$t") s")

# (b) by curl, as a terminal user would; the checker only reads the JSON
t=$(now)
state=$(curl -s -H "Authorization: token $TOKEN" "${BASE}llm/backend/state") || fail "GET llm/backend/state failed"
MODEL=$(printf '%s' "$state" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("default_model") or "smollm2:135m")') \
  || fail "llm/backend/state is not JSON: $state"
answer=$(curl -s --max-time 180 -H "Authorization: token $TOKEN" "${BASE}llm/api/chat" \
  -d "{\"model\": \"$MODEL\", \"stream\": false, \"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}], \"options\": {\"num_predict\": 32}}") \
  || fail "POST llm/api/chat failed"
printf '%s' "$answer" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
text = doc.get("message", {}).get("content", "")
assert text.strip() and doc.get("eval_count", 0) > 0, doc
model, n = doc.get("model"), doc["eval_count"]
print(f"[newcomer] (b) llm/api/chat {model}: {n} tokens: {text.strip()[:80]!r}")
' || fail "llm/api/chat gave no real tokens: $answer"
phases+=("(b) llm/api/chat: $(since "$t") s")

# (a) the panel and (c) the kernel's clients
"$CHECKER_VENV/bin/python" .ci/newcomer_check.py --base "$BASE" --token "$TOKEN" --model "$MODEL" \
  --screenshot "$ARTIFACTS/screenshots/$SHOT.png" --times "$WORK/check-times" \
  || fail "newcomer_check.py"
while read -r line; do phases+=("$line"); done <"$WORK/check-times"

t=$(now)
pid=$LAB_PID
term_lab
alive "$pid" && fail "jupyter lab (pid $pid) still running 30 s after SIGTERM"
# a clean stop takes its backend with it: nothing of its session may be left
for _ in $(seq 1 25); do [ -z "$(in_session "$pid")" ] && break; sleep 0.2; done
left=$(in_session "$pid")
stop_lab
[ -z "$left" ] || fail "processes left in the server's session after it stopped: $left"
phases+=("stop (SIGTERM to pid $pid): $(since "$t") s")
# a clean stop leaves neither the router's presets nor its log in the runtime dir (issue 14)
left=$(find "$WORK/home" \( -name 'llm-af-presets-*.ini' -o -name 'jupyter-llm-af-local-*.log' \) -print)
[ -z "$left" ] || fail "files left behind after a clean stop: $left"

echo "[newcomer] PASS ($MODE). Times:"
for p in "${phases[@]}"; do echo "[newcomer]   $p"; done
echo "[newcomer]   total: $(since "$t_all") s"
