"""Async wrapper over the Slurm command line (sbatch, squeue, scancel, scontrol ping).

Only text formats are used: Slurm 22.05 has no ``scontrol --json`` and its ``squeue --json``
ignores ``-j``/``-u``. Every command runs through :func:`run_command` with a timeout; failures
raise :class:`SlurmError` subclasses carrying Slurm's stderr. A query that fails never means
"the job is gone": the caller gets an exception and treats the job's state as unknown.

Commands are configurable command lines (batchspawner style) split with :func:`shlex.split`
and run without a shell. Nothing here imports Jupyter or traitlets.
"""

from __future__ import annotations

import asyncio
import enum
import getpass
import math
import os
import re
import shlex
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# -- errors ---------------------------------------------------------------------------------


class SlurmError(Exception):
    """A Slurm command failed. ``stderr`` is Slurm's own explanation (what users should see)."""

    timed_out = False  # killed by its timeout: the controller may have acted (sbatch: submitted)

    def __init__(
        self, message: str, command: Sequence[str] = (), returncode: int | None = None, stderr: str = ""
    ):
        super().__init__(message)
        self.message = message
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr.strip()

    @property
    def controller_unreachable(self) -> bool:
        """True when the controller could not be asked (transient), not when it said no."""
        text = self.stderr.lower()
        return self.timed_out or any(
            marker in text
            for marker in (
                "unable to contact slurm controller",
                "socket timed out",
                "protocol authentication error",
                "munge",
                "slurm_receive_msg",
            )
        )


class SlurmTimeout(SlurmError):
    """The command did not finish within its timeout and was killed."""

    timed_out = True


class SlurmCommandNotFound(SlurmError):
    """The command's executable is not installed or not on PATH."""


class SlurmSubmitError(SlurmError):
    """sbatch failed (rejected by the controller, or the controller was unreachable)."""


class SlurmParseError(SlurmError):
    """A command succeeded but its output was not in the expected format."""


# -- parsing --------------------------------------------------------------------------------

_NO_VALUE = {"", "N/A", "NONE", "(NULL)", "UNKNOWN", "INVALID"}


def parse_duration(text: str) -> float | None:
    """Seconds in a Slurm duration: ``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS``, ``D-HH``, ``MM``.

    ``UNLIMITED``/``INFINITE`` → ``math.inf``; ``INVALID`` (ended job), ``N/A``, empty → None.
    """
    text = text.strip()
    upper = text.upper()
    if upper in ("UNLIMITED", "INFINITE"):
        return math.inf
    if upper in _NO_VALUE:
        return None
    days = 0
    if "-" in text:
        day_part, text = text.split("-", 1)
        if not day_part.isdigit():
            raise ValueError(f"bad Slurm duration: {text!r}")
        days = int(day_part)
    parts = text.split(":") if text else []
    if not parts or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise ValueError(f"bad Slurm duration: {text!r}")
    numbers = [int(p) for p in parts]
    if days:
        # after "D-": H, H:M or H:M:S
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
    elif len(numbers) == 1:
        hours, minutes, seconds = 0, numbers[0], 0  # a bare number is minutes (sbatch --time)
    elif len(numbers) == 2:
        hours, (minutes, seconds) = 0, numbers
    else:
        hours, minutes, seconds = numbers
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def format_duration(seconds: float) -> str:
    """Slurm's own ``[D-]HH:MM:SS`` (for ``--time``); whole seconds."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    core = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{core}" if days else core


def parse_timestamp(text: str) -> datetime | None:
    """Slurm's ``YYYY-MM-DDTHH:MM:SS`` (controller's local time) → aware datetime; N/A → None."""
    text = text.strip()
    if text.upper() in _NO_VALUE:
        return None
    try:
        return datetime.fromisoformat(text).astimezone()  # naive = local time
    except ValueError:
        return None


class JobPhase(str, enum.Enum):
    """What a job's Slurm state means for the service."""

    PENDING = "pending"  # queued, held, requeued: will (maybe) run later
    STARTING = "starting"  # CONFIGURING: allocated, nodes booting
    RUNNING = "running"
    SUSPENDED = "suspended"
    ENDING = "ending"  # COMPLETING etc.: do not send traffic
    ENDED = "ended"  # a final state (still listed for MinJobAge with -t all)
    UNKNOWN = "unknown"  # Slurm could not be asked


_PHASES = {
    "PENDING": JobPhase.PENDING,
    "REQUEUED": JobPhase.PENDING,
    "REQUEUE_HOLD": JobPhase.PENDING,
    "REQUEUE_FED": JobPhase.PENDING,
    "RESV_DEL_HOLD": JobPhase.PENDING,
    "SPECIAL_EXIT": JobPhase.PENDING,
    "CONFIGURING": JobPhase.STARTING,
    "RUNNING": JobPhase.RUNNING,
    "RESIZING": JobPhase.RUNNING,
    "SUSPENDED": JobPhase.SUSPENDED,
    "STOPPED": JobPhase.SUSPENDED,
    "COMPLETING": JobPhase.ENDING,
    "SIGNALING": JobPhase.ENDING,
    "STAGE_OUT": JobPhase.ENDING,
    "UPDATE_DB": JobPhase.ENDING,
}


def job_phase(state: str) -> JobPhase:
    if state.upper() == "UNKNOWN":
        return JobPhase.UNKNOWN
    return _PHASES.get(state.upper(), JobPhase.ENDED)


@dataclass
class JobInfo:
    """One line of the query command (``id|name|state|reason|nodes|left|limit|start|end|submit``)."""

    id: str
    name: str
    state: str
    reason: str = ""
    nodes: str = ""
    time_left_s: float | None = None  # math.inf for UNLIMITED
    time_limit_s: float | None = None
    start_time: datetime | None = None  # expected start while pending
    end_time: datetime | None = None
    submit_time: datetime | None = None
    queried_at: float = field(default_factory=time.monotonic)

    @property
    def phase(self) -> JobPhase:
        return job_phase(self.state)

    def time_left_now(self) -> float | None:
        """Time left as of now, counting down from the query (Slurm reports whole seconds)."""
        if self.time_left_s is None or self.phase is not JobPhase.RUNNING:
            return self.time_left_s
        return self.time_left_s - (time.monotonic() - self.queried_at)


QUERY_FIELDS = 10


def parse_job_line(line: str) -> JobInfo:
    parts = line.rstrip("\n").split("|")
    if len(parts) < QUERY_FIELDS:
        raise ValueError(f"expected {QUERY_FIELDS} '|'-separated fields, got: {line!r}")
    extra = len(parts) - QUERY_FIELDS  # a job name containing '|'
    job_id = parts[0].strip()
    name = "|".join(parts[1 : 2 + extra])
    state, reason, nodes, left, limit, start, end, submit = (p.strip() for p in parts[2 + extra :])
    return JobInfo(
        id=job_id,
        name=name,
        state=state,
        reason="" if reason in ("None", "(null)") else reason,
        nodes="" if nodes in ("(null)", "N/A") else nodes,
        time_left_s=parse_duration(left),
        time_limit_s=parse_duration(limit),
        start_time=parse_timestamp(start),
        end_time=parse_timestamp(end),
        submit_time=parse_timestamp(submit),
    )


_JOB_ID = re.compile(r"^(\d+(?:_\d+)?)(?:;\S+)?$")


def parse_submit_output(stdout: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;cluster``; plain sbatch ``Submitted batch job ID``."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        match = _JOB_ID.match(line) or re.search(r"Submitted batch job (\d+)", line)
        if match:
            return match.group(1)
    raise ValueError(f"no job id in sbatch output: {stdout!r}")


# -- running commands -----------------------------------------------------------------------


async def run_command(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> tuple[int, str, str]:
    """Run ``argv`` (no shell); return (rc, stdout, stderr). Kill it when ``timeout`` passes."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as e:
        raise SlurmCommandNotFound(f"{argv[0]}: command not found", argv, None, str(e)) from e
    except PermissionError as e:
        raise SlurmCommandNotFound(f"{argv[0]}: not executable", argv, None, str(e)) from e
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmTimeout(
            f"{shlex.join(argv)} took longer than {timeout:g} s (killed)", argv, None, "timed out"
        ) from None
    except asyncio.CancelledError:
        # the caller gave up: do not leave the child behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        detail = stderr.strip() or stdout.strip() or f"exit status {proc.returncode}"
        raise SlurmError(f"{argv[0]} failed: {detail}", argv, proc.returncode, stderr or stdout)
    return proc.returncode, stdout, stderr


@dataclass
class SlurmCommands:
    """The command lines used; defaults match the LLMService ``slurm_*_command`` traits."""

    submit: str = "sbatch --parsable"
    query: str = "squeue -h -o %i|%j|%T|%r|%N|%L|%l|%S|%e|%V"
    start_estimate: str = "squeue --start -h -o %i|%S"
    cancel: str = "scancel"
    ping: str = "scontrol ping"
    timeout: float = 15.0


class SlurmOps(Protocol):
    """What the launcher asks of Slurm: :class:`SlurmCLI` on a cluster, a fake in unit tests."""

    calls: Counter[str]

    async def submit(self, script: str) -> str: ...

    async def list_jobs(self, job_name: str, *, all_states: bool = False) -> list[JobInfo]: ...

    async def estimated_start(self, job_id: str) -> datetime | None: ...

    async def cancel(self, *job_ids: str) -> None: ...

    async def ping(self) -> bool: ...


class SlurmCLI:
    """The Slurm operations the launcher needs, as coroutines. Counts each call (for tests)."""

    def __init__(
        self,
        commands: SlurmCommands | None = None,
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.commands = commands or SlurmCommands()
        self.user = user or getpass.getuser()
        self.env = dict(env) if env is not None else None
        self.calls: Counter[str] = Counter()

    def _environ(self) -> dict[str, str] | None:
        return {**os.environ, **self.env} if self.env else None  # e.g. SLURM_CONF for another cluster

    async def _run(self, what: str, argv: list[str], stdin: str | None = None) -> str:
        self.calls[what] += 1
        _, out, _ = await run_command(argv, stdin=stdin, timeout=self.commands.timeout, env=self._environ())
        return out

    async def submit(self, script: str) -> str:
        """Submit ``script`` on stdin; return the job id. Raises :class:`SlurmSubmitError`."""
        argv = shlex.split(self.commands.submit)
        try:
            out = await self._run("submit", argv, stdin=script)
        except SlurmError as e:
            err = SlurmSubmitError(e.message, e.command, e.returncode, e.stderr)
            err.timed_out = e.timed_out  # a killed sbatch may have submitted: not a rejection
            raise err from e
        try:
            return parse_submit_output(out)
        except ValueError as e:
            raise SlurmParseError(str(e), argv, 0, out) from e

    async def list_jobs(self, job_name: str, *, all_states: bool = False) -> list[JobInfo]:
        """The user's jobs with ``job_name`` that Slurm still lists (not finished unless ``all_states``)."""
        argv = shlex.split(self.commands.query) + ["-n", job_name, "-u", self.user]
        if all_states:
            argv += ["-t", "all"]
        out = await self._run("query", argv)
        jobs = []
        for line in out.splitlines():
            if not line.strip():
                continue
            try:
                jobs.append(parse_job_line(line))
            except ValueError as e:
                raise SlurmParseError(str(e), argv, 0, out) from e
        return jobs

    async def estimated_start(self, job_id: str) -> datetime | None:
        """Slurm's expected start of a pending job (``squeue --start``); None if not estimated yet."""
        argv = shlex.split(self.commands.start_estimate) + ["-j", job_id]
        out = await self._run("start_estimate", argv)
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 2 and parts[0].strip() == job_id:
                return parse_timestamp(parts[1])
        return None

    async def cancel(self, *job_ids: str) -> None:
        if not job_ids:
            return
        await self._run("cancel", shlex.split(self.commands.cancel) + list(job_ids))

    async def ping(self) -> bool:
        """True when the controller answers (``scontrol ping`` is instant even when it is down)."""
        self.calls["ping"] += 1
        try:
            argv = shlex.split(self.commands.ping)
            rc, out, _ = await run_command(
                argv, timeout=self.commands.timeout, env=self._environ(), check=False
            )
        except SlurmError:
            return False
        return rc == 0 and "is UP" in out
