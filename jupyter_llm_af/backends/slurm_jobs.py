"""One Slurm job as the launcher tracks it, and its ``JobDoc`` for ``GET /backend/state``.

Pure: no commands, no files, no network. Per-job state lives on :class:`SlurmJob` so that a
launcher can hold several of them (current, successor, draining; later a pool).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime

from ..gateway import SECRET_HEADER
from ..state import JobDoc
from .base import Endpoint
from .slurm_cli import JobInfo, JobPhase


@dataclass
class SlurmJob:
    """What the service knows about one of its jobs."""

    id: str
    info: JobInfo | None = None
    phase: JobPhase = JobPhase.PENDING
    submitted_mono: float = field(default_factory=time.monotonic)
    submitted_at: datetime | None = None
    estimated_start: datetime | None = None
    next_estimate_mono: float = field(default_factory=lambda: time.monotonic() + 2.0)  # backfill first
    running_since: float | None = None  # monotonic, first seen RUNNING
    unready_since: float | None = None  # monotonic, since when it should answer but does not
    url: str | None = None
    host: str | None = None
    ready: bool = False
    probe_failures: int = 0
    last_probe_mono: float = 0.0
    events: dict[str, float] = field(default_factory=dict)  # wall-clock times (benchmarks, logs)
    gateway: bool = False  # its port is a gateway: every request carries the secret
    secret: str | None = field(default=None, repr=False)
    secret_nonce: str | None = None  # names secret-<nonce> until the running job renames it

    def mark(self, event: str) -> None:
        self.events.setdefault(event, time.time())

    @property
    def node(self) -> str | None:
        return (self.info.nodes if self.info and self.info.nodes else None) or self.host

    def time_left(self) -> float | None:
        return self.info.time_left_now() if self.info else None

    def expected_start(self) -> datetime | None:
        """Slurm's estimate for a pending job (``squeue --start``, else the listing's start time)."""
        return self.estimated_start or (self.info.start_time if self.info else None)

    def headers(self) -> dict[str, str]:
        """What every request to this job carries (the gateway's secret; nothing without a gateway)."""
        return {SECRET_HEADER: self.secret} if self.gateway and self.secret else {}

    def endpoint(self) -> Endpoint | None:
        return Endpoint(url=self.url, key=self.id, headers=self.headers()) if self.url else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 1)


def job_doc(job: SlurmJob, slurm_reachable: bool = True) -> JobDoc:
    """The job as ``GET /backend/state`` shows it (``state`` is ``UNKNOWN`` while Slurm is down)."""
    info = job.info
    running = job.phase in (JobPhase.RUNNING, JobPhase.ENDING, JobPhase.SUSPENDED)
    pending = job.phase is JobPhase.PENDING
    return {
        "id": job.id,
        "state": "UNKNOWN" if not slurm_reachable else (info.state if info else "SUBMITTED"),
        "reason": info.reason if info else "",
        "node": job.node,
        "submitted_at": _iso(job.submitted_at or (info.submit_time if info else None)),
        "started_at": _iso(info.start_time) if info and running else None,
        "end_time": _iso(info.end_time) if info and not pending else None,
        "time_left_s": _finite(info.time_left_now()) if info and running else None,
        "time_limit_s": _finite(info.time_limit_s) if info else None,
        "estimated_start": _iso(job.expected_start()) if pending else None,
        "ready": job.ready,
    }
