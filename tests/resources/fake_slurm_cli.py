"""Slurm's command line as a stand-in whose jobs never leave the queue (always PENDING, reason
Resources): enough for a service to submit, list, adopt and cancel jobs through its real
:class:`~jupyter_llm_af.backends.slurm_cli.SlurmCLI`, and so to log the launcher's events, without a
cluster. Output formats follow ``shared/notes/slurm.md`` (squeue ``-o %i|%j|%T|%r|%N|%L|%l|%S|%e|%V``).
The real-cluster tests (``tests/test_slurm*.py``) stay the authority on how Slurm behaves.

    python tests/resources/fake_slurm_cli.py STATE.json sbatch --parsable   < script
    python tests/resources/fake_slurm_cli.py STATE.json squeue -h -o FMT -n NAME -u USER [-t all]
    python tests/resources/fake_slurm_cli.py STATE.json squeue --start -h -o %i|%S -j ID
    python tests/resources/fake_slurm_cli.py STATE.json scancel ID...
    python tests/resources/fake_slurm_cli.py STATE.json scontrol ping
"""

from __future__ import annotations

import fcntl
import json
import re
import sys
import time
from pathlib import Path


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() and path.stat().st_size else {"next": 1, "jobs": {}}


def _arg(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def main(argv: list[str]) -> int:
    state_path, command, rest = Path(argv[0]), argv[1], argv[2:]
    with open(state_path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _load(state_path)
        code = _run(state, command, rest)
        state_path.write_text(json.dumps(state))
    return code


def _run(state: dict, command: str, rest: list[str]) -> int:
    jobs: dict[str, dict] = state["jobs"]
    if command == "sbatch":
        script = sys.stdin.read()
        named = re.search(r"^#SBATCH --job-name=(\S+)", script, re.M)
        job_id = str(state["next"])
        state["next"] += 1
        submitted = time.strftime("%Y-%m-%dT%H:%M:%S")
        jobs[job_id] = {"name": named.group(1) if named else "sbatch", "submitted": submitted}
        print(job_id)
        return 0
    if command == "squeue":
        if "--start" in rest:
            wanted = _arg(rest, "-j")
            if wanted in jobs:
                print(f"{wanted}|N/A")
            return 0
        name = _arg(rest, "-n")
        for job_id, job in jobs.items():
            if name is None or job["name"] == name:
                print(f"{job_id}|{job['name']}|PENDING|Resources||5:00|5:00|N/A|N/A|{job['submitted']}")
        return 0
    if command == "scancel":
        for job_id in rest:
            jobs.pop(job_id, None)
        return 0
    if command == "scontrol" and rest[:1] == ["ping"]:
        print("Slurmctld(primary) at localhost is UP")
        return 0
    print(f"fake slurm: unknown command {command} {rest}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
