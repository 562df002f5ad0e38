"""The batch script the Slurm launcher submits: the default template and its rendering.

Pure text: nothing here runs a command or touches a file. ``config.py`` uses
:data:`DEFAULT_BATCH_SCRIPT` as the default of ``slurm_batch_script`` (which documents its fields).
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

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
ENDPOINT_FILE="{state_dir}/endpoint-$SLURM_JOB_ID.json"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
# JUPYTER_LLM_AF_HOST (in slurm_backend_env) names the interface the service should use
HOST=${{JUPYTER_LLM_AF_HOST:-$(hostname -f 2>/dev/null || hostname)}}
echo "job $SLURM_JOB_ID started on $HOST at $(date +%s.%N)"
export OLLAMA_HOST="0.0.0.0:$PORT"
export JUPYTER_LLM_AF_PORT="$PORT"
# written then renamed, so the service never reads half a file
printf '{{"host": "%s", "port": %s, "job_id": "%s"}}\\n' "$HOST" "$PORT" "$SLURM_JOB_ID" >"$ENDPOINT_FILE.tmp"
mv "$ENDPOINT_FILE.tmp" "$ENDPOINT_FILE"
{backend_command} &
CHILD=$!
trap 'kill -TERM $CHILD 2>/dev/null' TERM INT
trap 'echo "time limit near: the service submits a successor"' USR1
while kill -0 $CHILD 2>/dev/null; do wait $CHILD; done
rm -f "$ENDPOINT_FILE"
"""


def render_script(settings: SlurmSettings) -> str:
    """The batch script for one job: the template with the site's directives and environment."""
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
    )
