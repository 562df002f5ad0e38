"""Helpers for tests and benchmarks against the real local Slurm (``.ci/slurm-up.sh``)."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CI = REPO / ".ci"


def slurm_is_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in out


def ensure_slurm() -> str | None:
    """Start the local cluster if it is not up. Returns why it cannot be used, or None."""
    if not shutil.which("sbatch"):
        return "Slurm is not installed (apt-get install slurmctld slurmd slurm-client munge)"
    if slurm_is_up():
        return None
    if os.geteuid() != 0:
        return "Slurm is not running and starting it (.ci/slurm-up.sh) needs root"
    result = subprocess.run([str(CI / "slurm-up.sh")], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not slurm_is_up():
        return f".ci/slurm-up.sh failed: {result.stderr.strip() or result.stdout.strip()}"
    return None


def node_size() -> tuple[int, int]:
    """(fake GPUs, CPUs) the local node offers (``Gres=gpu:N``, ``CPUTot``); 0 where unknown."""
    try:
        out = subprocess.run(
            ["scontrol", "-o", "show", "node", "localhost"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, 0
    gpus = cpus = 0
    for part in out.split():
        if part.startswith("Gres=gpu:"):
            tail = part.split(":")[-1].split("(")[0]
            gpus = int(tail) if tail.isdigit() else 0
        elif part.startswith("CPUTot="):
            cpus = int(part.split("=", 1)[1] or 0)
    return gpus, cpus


def restart_slurm(ngpus: int, ncpus: int) -> str | None:
    """(Re)start the local cluster with ``ngpus`` fake GPUs and ``ncpus`` CPUs (root; wipes its
    state, cancels every job). Returns why it could not, or None."""
    if os.geteuid() != 0:
        return f"restarting Slurm with {ngpus} GPUs (.ci/slurm-up.sh) needs root"
    env = {**os.environ, "NGPUS": str(ngpus), "NCPUS": str(ncpus)}
    result = subprocess.run([str(CI / "slurm-up.sh")], capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0 or not slurm_is_up() or node_size() != (ngpus, ncpus):
        why = result.stderr.strip() or result.stdout.strip() or f"the node offers {node_size()}"
        return f".ci/slurm-up.sh (NGPUS={ngpus} NCPUS={ncpus}) failed: {why}"
    return None


def ensure_node(ngpus: int, ncpus: int) -> tuple[str | None, tuple[int, int]]:
    """The local cluster up with at least ``ngpus`` fake GPUs and ``ncpus`` CPUs (one per job),
    restarting it so if it has fewer. Returns (why it cannot be used or None, the node's size
    before: give it back afterwards with :func:`restart_slurm`)."""
    why = ensure_slurm()
    if why:
        return why, (0, 0)
    before = node_size()
    if before[0] >= ngpus and before[1] >= ncpus:
        return None, before
    return restart_slurm(max(ngpus, before[0]), max(ncpus, before[1])), before


def controller(action: str) -> None:
    """Stop ('down') or start ('up') only slurmctld; jobs, slurmd and saved state stay."""
    script = CI / ("slurm-down.sh" if action == "down" else "slurm-up.sh")
    subprocess.run([str(script), "controller"], check=True, capture_output=True, text=True, timeout=60)


def unique_job_name(prefix: str = "llmaf-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def squeue(*args: str) -> list[list[str]]:
    """Rows of ``squeue -h -o %i|%j|%T|%r <args>`` (empty when the controller is down)."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%j|%T|%r", *args], capture_output=True, text=True, timeout=30
    ).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def jobs_named(prefix: str, all_states: bool = False) -> list[list[str]]:
    """Jobs whose name starts with ``prefix`` (``all_states``: finished ones Slurm still remembers)."""
    rows = squeue(*(["-t", "all"] if all_states else []))
    return [r for r in rows if r[1].startswith(prefix)]


def cancel_named(prefix: str, timeout: float = 15.0) -> list[str]:
    """scancel every job whose name starts with ``prefix``; wait until squeue no longer lists them."""
    ids = [r[0] for r in jobs_named(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
    end = time.monotonic() + timeout
    while jobs_named(prefix) and time.monotonic() < end:
        time.sleep(0.1)
    return ids


def sbatch_wrap(job_name: str, command: str, *options: str) -> str:
    """Submit a one-line job (e.g. a GPU holder); return its id."""
    out = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={job_name}", "--output=/dev/null", *options, "--wrap", command],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.strip().split(";")[0]


async def scancel(*job_ids: str) -> None:
    proc = await asyncio.create_subprocess_exec("scancel", *job_ids)
    assert await proc.wait() == 0


def job_state(job_id: str) -> str:
    rows = squeue("-t", "all", "-j", job_id)
    return rows[0][2] if rows else ""


def backend_command(delay: float = 0.01) -> str:
    """The job's backend: the Ollama test double from this checkout, run by this venv's Python."""
    listen = "--host 127.0.0.1 --port $JUPYTER_LLM_AF_PORT"  # loopback only, never 0.0.0.0 in tests
    return f"{sys.executable} -m tests.resources.ollama_double {listen} --delay {delay}"


def llama_server_command(model: str = "smollm2:135m", threads: int = 2) -> str:
    """A real llama.cpp llama-server with an embedded model (``jupyter-llm-af setup-local``)."""
    from jupyter_llm_af import embedded

    binary = embedded.find_llama_server()
    models = {m.name: m for m in embedded.load_manifest()}
    if not binary or model not in models:
        raise RuntimeError("llama-server or its models are not set up (jupyter-llm-af setup-local)")
    return (
        f"{shlex.quote(binary)} -m {shlex.quote(models[model].path)} --alias {model}"
        f" --host 127.0.0.1 --port $JUPYTER_LLM_AF_PORT -c 2048 -np 2 -t {threads} --no-webui"
    )


def backend_settings(state_dir: Path, job_name: str, **overrides: Any) -> dict[str, Any]:
    """Plain SlurmBackend settings for the local cluster; short timings for tests."""
    settings: dict[str, Any] = dict(
        state_dir=state_dir,
        job_name=job_name,
        backend_command=backend_command(),
        backend_env={"PYTHONPATH": str(REPO), "JUPYTER_LLM_AF_HOST": "127.0.0.1"},
        gres="gpu:1",
        time_limit="5",
        command_timeout=15.0,
        submit_backoff=30.0,
        backend_ready_timeout=60.0,
        idle_timeout=600.0,
        renew_before=60.0,
        max_pending_poll=1.0,  # the tests release held GPUs and want to see it quickly
        steady_poll=2.0,
    )
    settings.update(overrides)
    return settings


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.1, what: str = ""
) -> float:
    """Poll ``condition`` until true; return the seconds it took. AssertionError on timeout."""
    start = time.monotonic()
    while True:
        value = condition()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        await asyncio.sleep(interval)
