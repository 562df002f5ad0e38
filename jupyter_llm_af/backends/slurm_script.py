"""The batch script the Slurm launcher submits: the default template and its rendering.

Pure text (the one file read is this package's ``gateway.py``, the source the script carries).
``config.py`` uses :data:`DEFAULT_BATCH_SCRIPT` as the default of ``slurm_batch_script`` (which
documents its fields). With the gateway on, the backend binds 127.0.0.1 and the gateway, fed to
``python3 -`` from the script itself (so the node needs nothing installed), guards the port.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .. import gateway

if TYPE_CHECKING:
    from .slurm_settings import SlurmSettings

DEFAULT_BATCH_SCRIPT = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --output={state_dir}/{job_name}-%j.out
#SBATCH --chdir={state_dir}
#SBATCH --time={time_limit}
#SBATCH --signal=B:USR1@{signal_before_s}
{sbatch_directives}
# Written by jupyter_llm_af. The service reads the endpoint file to find this backend.
set -u
{env_exports}
PY=${{JUPYTER_LLM_AF_PYTHON:-python3}}
ENDPOINT_FILE="{state_dir}/endpoint-$SLURM_JOB_ID.json"
SECRET_FILE="{state_dir}/secret-$SLURM_JOB_ID"
GATEWAY={gateway}
free_port() {{  # a port free on interface $1 now
  "$PY" -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}}
# JUPYTER_LLM_AF_HOST (in slurm_backend_env) names the interface the service should use
HOST=${{JUPYTER_LLM_AF_HOST:-$(hostname -f 2>/dev/null || hostname)}}
echo "job $SLURM_JOB_ID started on $HOST at $(date +%s.%N)"
PORT=$(free_port 0.0.0.0)
if [ "$GATEWAY" = true ]; then
  # the backend listens on loopback only; the gateway on $PORT lets in the service's requests only
  [ -f "$SECRET_FILE" ] || mv "{secret_file}" "$SECRET_FILE"
  export JUPYTER_LLM_AF_BIND_HOST=127.0.0.1 JUPYTER_LLM_AF_PORT=$(free_port 127.0.0.1)
else
  export JUPYTER_LLM_AF_BIND_HOST=0.0.0.0 JUPYTER_LLM_AF_PORT=$PORT
fi
export OLLAMA_HOST="$JUPYTER_LLM_AF_BIND_HOST:$JUPYTER_LLM_AF_PORT"
{backend_command} &
BACKEND=$!
GATEWAY_PID=
if [ "$GATEWAY" = true ]; then
  "$PY" - --listen "0.0.0.0:$PORT" --upstream "127.0.0.1:$JUPYTER_LLM_AF_PORT" \\
    --secret-file "$SECRET_FILE" <<'JUPYTER_LLM_AF_GATEWAY' &
{gateway_source}
JUPYTER_LLM_AF_GATEWAY
  GATEWAY_PID=$!
fi
# written then renamed, so the service never reads half a file
printf '{{"host": "%s", "port": %s, "job_id": "%s", "gateway": %s}}\\n' \\
  "$HOST" "$PORT" "$SLURM_JOB_ID" "$GATEWAY" >"$ENDPOINT_FILE.tmp"
mv "$ENDPOINT_FILE.tmp" "$ENDPOINT_FILE"
trap 'kill -TERM $BACKEND $GATEWAY_PID 2>/dev/null' TERM INT
trap 'echo "time limit near: the service submits a successor"' USR1
# the job lives while its backend and its gateway both do: either one ending ends it
while kill -0 $BACKEND 2>/dev/null && {{ [ -z "$GATEWAY_PID" ] || kill -0 $GATEWAY_PID 2>/dev/null; }}; do
  wait -n
done
kill -TERM $BACKEND $GATEWAY_PID 2>/dev/null
wait
rm -f "$ENDPOINT_FILE" "$SECRET_FILE"
"""


@functools.lru_cache(maxsize=1)
def gateway_source() -> str:
    return Path(gateway.__file__).read_text()


def render_script(settings: SlurmSettings, secret_file: str = "") -> str:
    """The batch script for one job: the template with the site's directives and environment.

    ``secret_file``: the 0600 file holding this job's gateway secret (its path only is written).
    """
    directives = [
        f"--{opt}={value}"
        for opt, value in (
            ("partition", settings.partition),
            ("account", settings.account),
            ("qos", settings.qos),
            ("gres", settings.gres),
        )
        if value
    ]
    directives += settings.extra_directives
    exports = [f"export {key}={shlex.quote(str(value))}" for key, value in settings.backend_env.items()]
    return settings.batch_script.format(
        job_name=settings.job_name,
        state_dir=str(settings.state_dir),
        time_limit=settings.time_limit,
        signal_before_s=int(max(1, min(settings.renew_before, 65535))),
        sbatch_directives="\n".join(f"#SBATCH {d}" for d in directives),
        env_exports="\n".join(exports),
        backend_command=settings.backend_command,
        gateway="true" if settings.gateway else "false",
        secret_file=secret_file,
        gateway_source=gateway_source() if settings.gateway else "",
    )
