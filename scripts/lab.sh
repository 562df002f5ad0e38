#!/usr/bin/env bash
# Install (if needed) and start JupyterLab with jupyter_llm_af on its embedded default backend.
set -euo pipefail
cd "$(dirname "$0")/.."
# (re)install when anything the product needs to run is missing, e.g. a .venv from before a new
# runtime dependency
need="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"
[ -x .venv/bin/jupyter-lab ] && .venv/bin/python -c "$need" jupyter_llm_af ipykernel ollama openai 2>/dev/null \
  && [ -f .venv/share/jupyter_llm_af/manifest.json ] || bash scripts/install.sh
args=()
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec .venv/bin/jupyter lab "${args[@]}" "$@"
