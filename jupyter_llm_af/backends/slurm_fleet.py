"""Several Slurm jobs behind one service: pools of *lanes*, scale out on sustained demand, scale in
when a job idles.

A *lane* is one :class:`~jupyter_llm_af.backends.slurm.SlurmBackend` (today's state machine,
unchanged: its own job name, submit on demand, renewal with a successor and handover, idle release
after ``idle_timeout``, adoption after a restart). A *pool* is a list of lanes with the same job
settings: the ``default`` pool (the ``slurm_*`` settings, ``slurm_max_jobs`` lanes) and one per
``slurm_pools`` entry. Lane job names: ``<slurm_job_name>`` (the default pool's first: a running
site's job is adopted after an upgrade), ``<name>-2`` …, ``<name>-<pool>-1`` ….

The service's admission queue places each request on a *worker*; the fleet publishes one worker
per lane that serves (key = the lane's job name), or, in a pool where none serves, the one lane
that is coming up (else the first lane, standing by: the first request placed there starts its
job). So one burst starts one job per pool, not every job. ``lease(worker=…)`` sends the request
to that lane. Every ``FLEET_TICK_S`` the fleet reads the queue per pool (the ``demand`` callback)
and, when the oldest request has waited ``scale_out_wait`` s or ``scale_out_depth`` requests per
serving job wait, for ``scale_out_after`` s without a break, asks the next free lane for a job —
one coming job per pool at a time. A lane nobody sends requests to idles and releases its job;
``min_jobs`` lanes per pool are pinned (never released, an admin's stop aside).

Models go to pools by :meth:`SlurmFleet.pool_for`: a model a pool lists goes there; one larger than
the default job's GPU goes to the first pool whose GPU holds it; else the default pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..admission import WorkerInfo, model_key
from ..modelfit import check_fits
from ..state import BackendState, JobDoc, LauncherState, PoolDoc
from . import slurm_messages as msg
from .base import Backend, ControlNotSupported, Endpoint
from .slurm import SlurmBackend
from .slurm_cli import SlurmCLI, SlurmOps
from .slurm_settings import DEFAULT_POOL, FleetSettings, PoolSpec

__all__ = ["SlurmFleet", "Lane", "job_capacity"]

log = logging.getLogger(__name__)

FLEET_TICK_S = 0.5  # demand check, worker publication, /api/ps refresh cadence
_EPS_GB = 1e-6
# the order in which a pool's state is "more advanced" (its PoolDoc state)
_STATE_RANK = [
    BackendState.READY,
    BackendState.RENEWING,
    BackendState.DRAINING,
    BackendState.STARTING,
    BackendState.PENDING,
    BackendState.SUBMITTING,
    BackendState.UNKNOWN,
    BackendState.FAILED,
    BackendState.IDLE,
]


def job_capacity(env: dict[str, str], default_parallel: int = 4) -> tuple[int, int]:
    """(parallel_per_model, max_running) of one job from its backend environment: Ollama's
    ``OLLAMA_NUM_PARALLEL`` per loaded model, ``OLLAMA_MAX_LOADED_MODELS`` (default 3) at once."""
    raw_parallel = str(env.get("OLLAMA_NUM_PARALLEL", ""))
    parallel = int(raw_parallel) if raw_parallel.isdigit() and int(raw_parallel) > 0 else default_parallel
    raw_loaded = str(env.get("OLLAMA_MAX_LOADED_MODELS", "3"))
    loaded = int(raw_loaded) if raw_loaded.isdigit() and int(raw_loaded) > 0 else 3
    return (parallel if loaded > 1 else 0), parallel * loaded


@dataclass(eq=False)
class Lane:
    """One slot for a job in a pool, with its own launcher."""

    pool: PoolSpec
    index: int  # 1-based within its pool
    backend: SlurmBackend
    loaded: dict[str, float | None] | None = None  # its /api/ps (Ollama), None: not known
    ps_at: float = 0.0  # monotonic time of the last /api/ps
    ps_entries: list[dict[str, Any]] = field(default_factory=list)  # that /api/ps's entries, as sent

    @property
    def name(self) -> str:
        return self.backend.job_name

    @property
    def serving(self) -> bool:
        return self.backend.serving_endpoint() is not None

    @property
    def has_job(self) -> bool:
        return self.backend.has_job


class SlurmFleet(Backend):
    """Pools of Slurm job lanes behind one endpoint chooser (``kind`` stays ``slurm``).

    ``fleet``: the pools (the default one first); ``cli`` replaces the Slurm command line (a fake in
    unit tests), shared by every lane; ``size_of(model)`` gives a model's GB (routing by size);
    ``ollama``: the jobs speak Ollama (their ``/api/ps`` says what is loaded); ``default_parallel``:
    a job's parallelism when its ``OLLAMA_NUM_PARALLEL`` is not set.

    The service wires ``on_workers`` (``Admission.set_workers``), ``demand(pool) → (waiting,
    oldest wait s)`` and ``worker_models() → {worker: [models]}`` (admission's account).
    """

    kind = "slurm"

    def __init__(
        self,
        fleet: FleetSettings,
        *,
        cli: SlurmOps | None = None,
        size_of: Callable[[str], float | None] | None = None,
        ollama: bool = True,
        default_parallel: int = 4,
    ):
        super().__init__()
        self.fleet = fleet
        default = fleet.pools[0].settings
        self.cli: SlurmOps = cli or SlurmCLI(default.commands(), user=default.user, env=default.slurm_env)
        self.size_of = size_of
        self.ollama = ollama
        self.lanes: list[Lane] = []
        self._pool_models: dict[str, frozenset[str]] = {}
        self._capacity: dict[str, tuple[int, int]] = {}
        for pool in fleet.pools:
            self._pool_models[pool.name] = frozenset(model_key(m) for m in pool.models)
            self._capacity[pool.name] = job_capacity(pool.settings.backend_env, default_parallel)
            for index in range(1, pool.max_jobs + 1):
                settings = dataclasses.replace(pool.settings, job_name=pool.lane_name(index, fleet.base_name))
                lane = Lane(pool, index, SlurmBackend(settings, cli=self.cli))
                lane.backend.on_event = self._lane_event
                lane.backend.pinned = index <= pool.min_jobs
                self.lanes.append(lane)
        self._by_name = {lane.name: lane for lane in self.lanes}
        if len(self._by_name) != len(self.lanes):
            raise ValueError("slurm_pools: two pools give their jobs the same name")
        self.on_event: Callable[..., None] | None = None
        self.on_workers: Callable[[list[WorkerInfo]], None] | None = None
        self.demand: Callable[[str], tuple[int, float]] | None = None
        self.worker_models: Callable[[], dict[str, list[str]]] | None = None
        self._over_since: dict[str, float | None] = {p.name: None for p in fleet.pools}
        self._scaling: dict[str, str] = {p.name: "" for p in fleet.pools}
        self._published: list[WorkerInfo] | None = None
        self._held = False  # an admin's stop: min_jobs pins are off until a start or a request
        self._closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self.scale_outs: list[tuple[float, str]] = []  # (monotonic time, lane) for tests/benchmarks

    @classmethod
    def from_config(
        cls, cfg: Any, runtime_dir: str | None = None, **kwargs: Any
    ) -> SlurmBackend | SlurmFleet:
        """Today's single :class:`SlurmBackend` when one job is configured, else a fleet."""
        from .slurm_settings import SlurmSettings

        default = SlurmSettings.from_config(cfg, runtime_dir)
        fleet = FleetSettings.from_config(cfg, default)
        if fleet.single:
            return SlurmBackend(default)
        return cls(fleet, **kwargs)

    # -- pools and lanes -----------------------------------------------------------------------------
    def pool_lanes(self, pool: str) -> list[Lane]:
        return [lane for lane in self.lanes if lane.pool.name == pool]

    def lane(self, name: str) -> Lane | None:
        return self._by_name.get(name)

    def pool_for(self, model: str) -> str | None:
        """The pool serving ``model``: the pool listing it, else the default pool if it fits there,
        else the first pool whose GPU holds it; None when none does (refused)."""
        key = model_key(model)
        for pool in self.fleet.pools[1:]:
            if key in self._pool_models[pool.name]:
                return pool.name
        default = self.fleet.pools[0]
        size = self.size_of(key) if self.size_of is not None else None
        if not size or default.gpu_memory_gb <= 0 or size <= default.gpu_memory_gb + _EPS_GB:
            return DEFAULT_POOL
        for pool in self.fleet.pools[1:]:
            if pool.gpu_memory_gb > 0 and size <= pool.gpu_memory_gb + _EPS_GB:
                return pool.name
        return None

    def fit_error(self, model: str) -> str | None:
        """A sentence when no pool's job can hold ``model`` (unknown sizes pass)."""
        size = self.size_of(model_key(model)) if self.size_of is not None else None
        if not size:
            return None
        name = self.pool_for(model)
        if name is None:
            biggest = max(p.gpu_memory_gb for p in self.fleet.pools)
            return check_fits(model, size, biggest)
        pool = self.fleet.pool(name)
        return check_fits(model, size, pool.gpu_memory_gb) if pool.gpu_memory_gb > 0 else None

    def _lane_for(self, worker: str) -> Lane:
        lane = self._by_name.get(worker)
        if lane is not None:
            return lane
        # no worker named (listings) or admission's stand-in: the default pool's least busy server
        lanes = self.pool_lanes(DEFAULT_POOL)
        serving = [lane for lane in lanes if lane.serving]
        if serving:
            return min(serving, key=lambda lane: lane.backend.inflight())
        return lanes[0]

    # -- admission workers ---------------------------------------------------------------------------
    def workers(self) -> list[WorkerInfo]:
        """One worker per serving lane; in a pool where none serves, the lane coming up (else its
        first, standing by): a request placed there starts its job."""
        infos: list[WorkerInfo] = []
        for pool in self.fleet.pools:
            lanes = self.pool_lanes(pool.name)
            chosen = [lane for lane in lanes if lane.serving]
            if not chosen:
                chosen = [lane for lane in lanes if lane.has_job][:1] or lanes[:1]
            parallel, max_running = self._capacity[pool.name]
            for lane in chosen:
                # no job serving: nothing is loaded there (a released job's models went with it)
                loaded = {} if not lane.serving else dict(lane.loaded) if lane.loaded is not None else None
                infos.append(
                    WorkerInfo(
                        lane.name,
                        gpu_memory_gb=pool.gpu_memory_gb,
                        parallel_per_model=parallel,
                        loaded=loaded,
                        max_running=max_running,
                        pool=pool.name,
                    )
                )
        return infos

    def _publish(self) -> None:
        infos = self.workers()
        if infos == self._published or self.on_workers is None:
            return
        self._published = infos
        try:
            self.on_workers(infos)
        except Exception:
            log.exception("Slurm fleet: publishing the workers failed")

    # -- Backend hooks -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        # every lane adopts the jobs with its name before any request can ask for a new one
        await asyncio.gather(*(lane.backend.start() for lane in self.lanes))
        self._publish()
        self._task = asyncio.create_task(self._loop(), name="slurm-fleet")

    async def shutdown(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await asyncio.gather(*(lane.backend.shutdown() for lane in self.lanes), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        return await self._lane_for("").backend.ready_endpoint(deadline)

    async def endpoint_for(self, deadline: float, worker: str = "") -> Endpoint:
        lane = self._lane_for(worker)
        lane.backend.note_activity()
        return await lane.backend.ready_endpoint(deadline)

    @contextlib.asynccontextmanager
    async def lease(
        self, deadline: float, activity: bool = True, worker: str = ""
    ) -> AsyncIterator[Endpoint]:
        """The lane admission chose counts the request (its idle clock, its drain before a
        handover); the fleet only notes activity."""
        lane = self._lane_for(worker)
        if activity:
            self.note_activity()
            self._held = False
            self._apply_pins()
        try:
            async with lane.backend.lease(deadline, activity) as endpoint:
                yield endpoint
        finally:
            if activity:
                self.note_activity()

    def inflight(self, key: str | None = None) -> int:
        return sum(lane.backend.inflight(key) for lane in self.lanes)

    async def wait_drained(self, key: str, timeout: float | None = None) -> bool:
        for lane in self.lanes:
            if key in lane.backend.jobs_seen:
                return await lane.backend.wait_drained(key, timeout)
        return True

    def endpoint_failed(self, endpoint: Endpoint) -> None:
        for lane in self.lanes:
            if endpoint.key in lane.backend.jobs_seen:
                lane.backend.endpoint_failed(endpoint)
                return

    def serving_endpoint(self) -> Endpoint | None:
        """A serving job's endpoint, the default pool's first (model listings); never starts one."""
        for lane in self.lanes:
            endpoint = lane.backend.serving_endpoint()
            if endpoint is not None:
                return endpoint
        return None

    _serving_endpoint = serving_endpoint  # the name the service's state() asks for

    def serving_url(self) -> str | None:
        endpoint = self.serving_endpoint()
        return endpoint.url if endpoint else None

    @property
    def submitted_job_ids(self) -> list[str]:
        return [job_id for lane in self.lanes for job_id in lane.backend.submitted_job_ids]

    async def control(self, action: str) -> LauncherState:
        if action == "start":
            self._held = False
            self._apply_pins()
            await self.pool_lanes(DEFAULT_POOL)[0].backend.control("start")
            return self.describe(admin=True)
        if action == "stop":
            self._held = True
            self._apply_pins()
            await asyncio.gather(*(lane.backend.control("stop") for lane in self.lanes))
            self._publish()
            return self.describe(admin=True)
        raise ControlNotSupported(f"the slurm backend has no '{action}' action")

    def _apply_pins(self) -> None:
        for lane in self.lanes:
            lane.backend.pinned = not self._held and lane.index <= lane.pool.min_jobs

    def _lane_event(self, event: str, **labels: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, **labels)  # the lane guards against a failing hook
        self._wake.set()  # a job became ready, ended, ...: publish the workers now

    # -- the fleet's loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._closed:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Slurm fleet: tick failed")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLEET_TICK_S)

    async def _tick(self) -> None:
        now = time.monotonic()
        for pool in self.fleet.pools:
            self._scale(pool, now)
        if self.ollama:
            await self._refresh_loaded(now)
        self._publish()

    def _scale(self, pool: PoolSpec, now: float) -> None:
        """One more job when the queue for this pool's models stays over a threshold."""
        lanes = self.pool_lanes(pool.name)
        with_job = [lane for lane in lanes if lane.has_job]
        serving = [lane for lane in with_job if lane.serving]
        waiting, oldest = self.demand(pool.name) if self.demand is not None else (0, 0.0)
        fleet = self.fleet
        by_wait = fleet.scale_out_wait > 0 and oldest >= fleet.scale_out_wait
        by_depth = fleet.scale_out_depth > 0 and waiting >= fleet.scale_out_depth * max(1, len(serving))
        coming = len(with_job) > len(serving)
        if not (by_wait or by_depth) or not serving or coming or len(with_job) >= pool.max_jobs:
            # nothing to do, the first job starts on demand, one is on its way, or all run
            self._over_since[pool.name] = None
            if not coming:
                self._scaling[pool.name] = ""
            return
        since = self._over_since[pool.name]
        if since is None:
            self._over_since[pool.name] = now
            return
        if now - since < fleet.scale_out_after:
            return
        free = next(lane for lane in lanes if not lane.has_job)
        why = f"{waiting} waiting, the oldest for {oldest:.0f} s"
        log.info("Slurm fleet: pool %s scales out to %d jobs (%s)", pool.name, len(with_job) + 1, why)
        self._scaling[pool.name] = f"starting job {len(with_job) + 1}: {why}"
        self._over_since[pool.name] = None
        self.scale_outs.append((now, free.name))
        free.backend.request_start()

    async def _refresh_loaded(self, now: float) -> None:
        """What each serving Ollama job holds (``/api/ps``), every ``steady_poll`` seconds."""
        due = [
            lane
            for lane in self.lanes
            if lane.serving and now - lane.ps_at >= lane.backend.settings.steady_poll
        ]
        for lane in self.lanes:
            if not lane.serving:
                lane.loaded, lane.ps_entries = None, []
        if not due or self._http is None:
            return
        await asyncio.gather(*(self._ps(lane, now) for lane in due))

    async def running_models(self) -> list[dict[str, Any]] | None:
        """``/api/ps`` of the whole fleet: every serving Ollama job asked now, entries merged (the
        same model on two jobs is listed twice, as two loads). None: the jobs do not speak Ollama."""
        if not self.ollama:
            return None
        serving = [lane for lane in self.lanes if lane.serving]
        now = time.monotonic()
        await asyncio.gather(*(self._ps(lane, now) for lane in serving))
        return [entry for lane in serving if lane.serving for entry in lane.ps_entries]

    async def _ps(self, lane: Lane, now: float) -> None:
        endpoint = lane.backend.serving_endpoint()
        if endpoint is None or self._http is None:
            return
        lane.ps_at = now
        try:
            url, timeout = endpoint.url + "/api/ps", lane.backend.settings.probe_timeout
            response = await self._http.get(url, headers=endpoint.headers, timeout=timeout)
            models = response.json().get("models", []) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if not isinstance(models, list):
            return
        lane.ps_entries = [entry for entry in models if isinstance(entry, dict)]
        loaded: dict[str, float | None] = {}
        for entry in models:
            if not isinstance(entry, dict):
                continue
            name = entry.get("model") or entry.get("name")
            size = entry.get("size_vram") or entry.get("size")
            if isinstance(name, str) and name:
                sized = isinstance(size, (int, float)) and size > 0
                loaded[name] = round(float(size) / 1e9, 2) if sized else None  # type: ignore[arg-type]
        lane.loaded = loaded

    # -- state ---------------------------------------------------------------------------------------
    @property
    def state(self) -> BackendState:
        return self._primary().backend.state

    def _primary(self) -> Lane:
        """The lane the top-level fields describe: the default pool's first, unless it has no job
        and another default lane has one (then that one)."""
        lanes = self.pool_lanes(DEFAULT_POOL)
        if lanes[0].has_job:
            return lanes[0]
        return next((lane for lane in lanes if lane.has_job), lanes[0])

    def wait_message(self) -> str:
        return self._primary().backend.wait_message()

    def describe(self, admin: bool = False) -> LauncherState:
        """Today's fields for the primary lane (old readers), plus every job and every pool."""
        doc = self._primary().backend.describe(admin)
        doc["inflight"] = self.inflight()
        doc["idle_s"] = round(time.monotonic() - self.last_activity, 1)
        doc["jobs"] = self.job_docs()
        doc["pools"] = [self._pool_doc(pool) for pool in self.fleet.pools]
        return doc

    def job_docs(self) -> list[JobDoc]:
        hints = self._worker_models()
        docs: list[JobDoc] = []
        for lane in self.lanes:
            for doc in lane.backend.job_docs():
                doc["pool"] = lane.pool.name
                if doc.get("role") == "current":
                    if lane.loaded is not None:
                        doc["models"] = sorted(lane.loaded)
                    else:
                        doc["models"] = sorted(hints.get(lane.name, []))
                else:
                    doc["models"] = []
                docs.append(doc)
        return docs

    def _worker_models(self) -> dict[str, list[str]]:
        if self.worker_models is None:
            return {}
        try:
            return self.worker_models()
        except Exception:
            log.exception("Slurm fleet: worker_models failed")
            return {}

    def _pool_doc(self, pool: PoolSpec) -> PoolDoc:
        lanes = self.pool_lanes(pool.name)
        states = [lane.backend.state for lane in lanes if lane.has_job]
        failed = [lane.backend.state for lane in lanes if not lane.has_job]
        shown = states or [s for s in failed if s is not BackendState.IDLE] or [BackendState.IDLE]
        state = min(shown, key=_STATE_RANK.index)
        return {
            "name": pool.name,
            "state": state.value,
            "message": msg.pool_message(
                pool.name,
                states,
                pool.max_jobs,
                pool.min_jobs,
                sorted(pool.models),
                self._scaling[pool.name],
                lanes[0].backend.wait_message(),
            ),
            "jobs": len(states),
            "min_jobs": pool.min_jobs,
            "max_jobs": pool.max_jobs,
            "gres": pool.settings.gres,
            "gpu_memory_gb": pool.gpu_memory_gb,
            "models": sorted(pool.models),
        }
