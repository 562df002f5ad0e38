"""Every sentence the Slurm launcher shows users: the state message and the reasons requests fail.

Pure functions of the launcher's state; no I/O. ``state_message`` is the one place that says what
a waiting user is waiting for (the panel and the magics show it as given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from ..state import BackendState
from .slurm_cli import JobPhase
from .slurm_jobs import SlurmJob

SHUTTING_DOWN = "The LLM service is shutting down."
STOPPED_BY_ADMIN = "The GPU job was stopped by an administrator."


def human_duration(seconds: float) -> str:
    """``3 h 12 min``, ``4 min``, ``45 s``: for the sentences users read."""
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def clock(value: datetime) -> str:
    """``14:05`` today, ``Nov 26 09:00`` on another day (the reader's local time)."""
    now = datetime.now().astimezone()
    local = value.astimezone(now.tzinfo)
    return local.strftime("%H:%M") if local.date() == now.date() else local.strftime("%b %d %H:%M")


def pending_sentence(head: str, job: SlurmJob) -> str:
    reason = job.info.reason if job.info and job.info.reason else "queued"
    text = f"{head} {job.id} pending ({reason})"
    start = job.expected_start()
    if start:
        text += f", estimated start {clock(start)}"
    return text


def ready_sentence(job: SlurmJob) -> str:
    node = job.node or "?"
    left = job.time_left()
    if left is None:
        return f"Ready on node {node}"
    if math.isinf(left):
        return f"Ready on node {node}, no time limit"
    return f"Ready on node {node}, {human_duration(left)} left"


def state_message(
    state: BackendState,
    *,
    current: SlurmJob | None,
    successor: SlurmJob | None,
    draining: Sequence[str] = (),
    draining_busy: int = 0,
    releasing: bool = False,
    last_error: str | None = None,
    slurm_error: str = "",
) -> str:
    """The one sentence for ``state`` (``describe()["message"]``, and the tail of wait timeouts)."""
    cur, nxt = current, successor
    if state is BackendState.IDLE:
        return "No GPU job (starts on first request)"
    if state is BackendState.SUBMITTING:
        return "Submitting a GPU job to Slurm"
    if state is BackendState.FAILED:
        return f"The GPU job failed: {last_error}"
    if state is BackendState.UNKNOWN:
        why = (slurm_error or "no reply").strip().splitlines()[-1]
        if cur and cur.ready:
            return f"Slurm is not answering ({why}); serving from job {cur.id} on node {cur.host}"
        if cur:
            return f"Slurm is not answering ({why}); job {cur.id} in unknown state, waiting"
        return f"Slurm is not answering ({why}); waiting to submit a GPU job"
    assert cur is not None
    if state is BackendState.PENDING:
        return pending_sentence("Waiting for a GPU: job", cur)
    if state is BackendState.STARTING:
        node = cur.info.nodes if cur.info and cur.info.nodes else "its node"
        return f"Starting: job {cur.id} running on {node}, waiting for the model server to answer"
    if state is BackendState.RENEWING:
        assert nxt is not None
        if nxt.phase is JobPhase.PENDING:
            head = pending_sentence("Renewing: successor job", nxt)
        else:
            head = f"Renewing: successor job {nxt.id} starting"
        return f"{head}; {ready_sentence(cur)}"
    if state is BackendState.DRAINING:
        if releasing:
            return f"Releasing job {cur.id}"
        return f"{ready_sentence(cur)}; job {', '.join(draining)} finishing {draining_busy} request(s)"
    return ready_sentence(cur)


# -- why a request or a job failed -------------------------------------------------------------


def could_not_start(why: str | None) -> str:
    return f"The GPU job could not be started: {why}"


def wait_limit_passed(state_sentence: str) -> str:
    return f"No GPU backend within the wait limit. {state_sentence}."


def with_output(text: str, tail: str) -> str:
    return text + (f"; its output ends with: {tail}" if tail else "")


def ended_early(job_id: str, final_state: str, tail: str) -> str:
    return with_output(f"Job {job_id} ended ({final_state}) before its backend answered", tail)


def not_answering(timeout: float) -> str:
    return f"its backend did not answer within {timeout:g} s"


def sbatch_rejected(detail: str) -> str:
    return f"sbatch rejected the job: {detail}"


def successor_rejected(detail: str) -> str:
    return f"Successor job rejected by Slurm: {detail}"


def state_dir_unwritable(path: str, error: OSError) -> str:
    reason = error.strerror or str(error)
    fix = "set LLMService.slurm_state_dir to a directory the service can write"
    return f"the state dir {path} cannot be written ({reason}): {fix}"


def sbatch_unreachable(detail: str) -> str:
    return f"sbatch could not reach Slurm: {detail}"


_SERVING = (BackendState.READY, BackendState.RENEWING, BackendState.DRAINING)
_COMING = (BackendState.SUBMITTING, BackendState.PENDING, BackendState.STARTING)


def pool_message(
    name: str,
    states: Sequence[BackendState],
    max_jobs: int,
    min_jobs: int,
    models: Sequence[str],
    scaling: str = "",
    first_lane_message: str = "",
) -> str:
    """One sentence about a pool of jobs for the panel: how many run, in which state, and why it
    grows. ``states``: the state of each lane that has a job; ``scaling``: why one more is starting."""
    label = "Default pool" if name == "default" else f"Pool {name}"
    if not states:
        what = f"the first request for {', '.join(sorted(models))}" if models else "the first request"
        if first_lane_message and not first_lane_message.startswith("No GPU job"):
            return f"{label}: {first_lane_message}"
        kept = f"; keeps {min_jobs} running" if min_jobs else ""
        return f"{label}: no job (one starts on {what}; up to {max_jobs}){kept}"
    serving = sum(1 for s in states if s in _SERVING)
    coming = [s.value for s in states if s in _COMING]
    jobs = len(states)
    text = f"{label}: {jobs} job{'s' if jobs != 1 else ''} of at most {max_jobs}, {serving} serving"
    if coming:
        text += f", {len(coming)} {'/'.join(sorted(set(coming)))}"
    other = [s.value for s in states if s in (BackendState.FAILED, BackendState.UNKNOWN)]
    if other:
        text += f", {len(other)} {'/'.join(sorted(set(other)))}"
    if scaling:
        text += f" ({scaling})"
    return text
