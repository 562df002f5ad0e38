#!/usr/bin/env bash
# Run the whole test suite: installs what is missing, starts the local one-node Slurm cluster
# (root needed) for the Slurm tests, runs pytest, stops Slurm. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PATH"
export CHP_BIN="$PWD/.ci/cache/chp/node_modules/.bin/configurable-http-proxy"
bash .ci/slurm-up.sh
trap 'bash .ci/slurm-down.sh >/dev/null 2>&1 || true' EXIT
mkdir -p artifacts
python -m pytest -p no:cacheprovider -ra "$@"
