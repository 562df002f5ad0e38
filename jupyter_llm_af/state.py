"""The ``GET /backend/state`` contract: state names, the document, and the one sentence users read.

Imports nothing from Jupyter. Every launcher fills a :class:`LauncherState`; the service adds what
it knows (models, queue, user) to make a :class:`StateDoc`. The panel (``labextension/src/tokens.ts``)
and the magics read these fields and never work out "is it serving?" themselves: ``serving`` says
it. ``tests/test_state_contract.py`` keeps the TypeScript types in step with this module.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict


class BackendState(str, Enum):
    """Lifecycle states, as ``state`` reports them."""

    IDLE = "idle"  # nothing running; starts on the first request
    SUBMITTING = "submitting"  # sbatch in progress
    PENDING = "pending"  # job queued in Slurm
    STARTING = "starting"  # process/job running, backend not answering yet
    READY = "ready"
    RENEWING = "renewing"  # serving; a successor job is on its way
    DRAINING = "draining"  # serving (or releasing); an old job finishes its requests
    FAILED = "failed"
    UNKNOWN = "unknown"  # Slurm cannot be asked; may still be serving


# States in which requests are normally answered at once. ``serving`` in the document is the
# authority (``unknown`` can serve too, ``draining`` may be a release): this set is for launchers.
SERVING_STATES = frozenset({BackendState.READY, BackendState.RENEWING, BackendState.DRAINING})
# States that hold (or are about to hold) resources: the panel's "Stop" makes sense.
ACTIVE_STATES = frozenset(
    {
        BackendState.SUBMITTING,
        BackendState.PENDING,
        BackendState.STARTING,
        BackendState.READY,
        BackendState.RENEWING,
        BackendState.DRAINING,
    }
)


class JobDoc(TypedDict, total=False):
    """One Slurm job behind the backend (times: ISO 8601; null where Slurm does not know)."""

    id: str
    state: str
    reason: str
    node: str | None
    submitted_at: str | None
    started_at: str | None
    end_time: str | None
    time_left_s: float | None
    time_limit_s: float | None
    estimated_start: str | None
    ready: bool
    # several jobs (slurm_max_jobs > 1, slurm_pools): which pool, its role there, what it holds
    pool: str  # "default" or a slurm_pools name
    role: str  # current | successor | draining
    models: list[str]  # models loaded there (its /api/ps), as far as the service knows
    inflight: int  # requests running on it


class PoolDoc(TypedDict, total=False):
    """One pool of Slurm jobs: ``default`` (the ``slurm_*`` settings) or a ``slurm_pools`` entry."""

    name: str
    state: str  # a BackendState value: the pool's most advanced job (idle when it has none)
    message: str  # one sentence about this pool
    jobs: int  # jobs it runs now (pending ones included)
    min_jobs: int
    max_jobs: int
    gres: str
    gpu_memory_gb: float  # per job; 0 = not checked
    models: list[str]  # the models sent to this pool; [] = any model that fits (default pool)


class LauncherState(TypedDict, total=False):
    """What a launcher reports (``Backend.describe``)."""

    kind: str  # local | upstream | slurm | relay | unconfigured
    state: str  # a BackendState value
    message: str  # the one user-facing sentence
    job: JobDoc | None
    successor: JobDoc | None
    draining: list[str]
    idle_s: float
    inflight: int
    last_error: str | None
    # Slurm with several jobs or pools: every job of every pool; ``job``/``successor`` above stay
    # the default pool's first job (what a one-job service reports), for older readers.
    jobs: list[JobDoc]
    pools: list[PoolDoc]
    # admins only
    backend_url: str | None
    job_name: str
    state_dir: str
    pid: int | None


class QueueTotals(TypedDict):
    waiting: int
    running: int
    users_waiting: int
    max_concurrent: int
    max_queue: int
    max_queue_per_user: int


class UserDoc(TypedDict):
    name: str
    admin: bool


class StateDoc(LauncherState, total=False):
    """The whole ``GET /backend/state`` answer."""

    serving: bool  # a request now would be answered without waiting for a start
    protocol: str  # ollama | openai
    healthy: bool
    models: list[str]
    default_model: str | None
    model_notes: dict[str, str]  # model name -> one sentence to show where users pick models
    queue: QueueTotals
    gpu: dict[str, Any] | None
    user: UserDoc
    version: str
    relay: bool


def is_active(state: str) -> bool:
    try:
        return BackendState(state) in ACTIVE_STATES
    except ValueError:
        return False
