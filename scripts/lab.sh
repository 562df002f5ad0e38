#!/usr/bin/env bash
# Install (if needed) and start JupyterLab with jupyter_llm_af on its embedded default backend.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/jupyter-lab ] && .venv/bin/python -c "import jupyter_llm_af" 2>/dev/null \
  && [ -f .venv/share/jupyter_llm_af/manifest.json ] || bash scripts/install.sh
args=()
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec .venv/bin/jupyter lab "${args[@]}" "$@"
