"""Admission in front of the backend workers: slots per (worker, model), GPU memory, fair bounded queues.

Imports nothing from Jupyter. A request handler does::

    async with admission.slot(user, model, deadline, stream=True) as ticket:
        ...forward to the backend job ``ticket.worker``, stream the whole response...

and the slot is held until the ``async with`` block exits.

Workers are the backend jobs requests may be placed on (:class:`WorkerInfo`, kept current with
:meth:`Admission.set_workers`); without any, one worker of unlimited memory and no per-model limit
stands in, which is exactly a single global queue of ``max_concurrent`` slots.

* A request runs on a worker that has its model loaded with a free slot (``parallel_per_model``
  per loaded model, like ``OLLAMA_NUM_PARALLEL``), the least loaded such worker first; at most
  ``max_concurrent`` requests run over all workers, ``max_running`` per worker when set.
* A model not loaded anywhere is admitted where the GPU memory holds it beside what is loaded
  (sizes from ``size_of``; unknown sizes fit), evicting idle models (no running request) least
  recently used first when needed, like Ollama's scheduler; the ticket names what it evicts
  (``ticket.evict``) and that it loads (``ticket.load``). A model loaded elsewhere gets a second
  copy only in free memory, never by evicting.
* No load starves: a load that cannot be placed takes a *plan* on one worker (the one whose
  victims, the models it must evict, have the fewest running requests): from then on no request
  that arrived after the load is admitted there for a victim model, and no other model is loaded
  there, so the victims drain and the load goes next. Requests for other models keep flowing.
* Waiting requests are admitted round robin across users (FIFO within a user for each model): the
  first user in the ring with a request that can run now is served and goes to the back, so a
  user with 50 queued requests delays another user's request for the same model by at most one
  turn, and a request that can run (an embedding) is not held behind ones that cannot (long
  generations of a model whose slots are full, or a load waiting for memory).
* Limits are checked when a request would have to wait: ``max_queue_per_user`` → 429,
  ``max_queue`` (all users) → 503, both with a Retry-After estimated from recent hold times of
  the model.
* A ``deadline`` (``time.monotonic()``) bounds the wait: :class:`AdmissionTimeout`.
* A cancelled waiter (client gone) leaves the queue at once and never leaks a slot.

Positions: while all ``max_concurrent`` slots are taken, the place in the round robin over every
waiting request (what decides then); otherwise the place among the waiting requests for the same
model. Each waiter is one ``asyncio.Future`` plus one timer; an admission or release costs
O(users + models × workers), with no polling.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import AdmissionTimeout, BadRequest, QueueFull
from .modelfit import check_fits

# Slot hold time assumed before any request has finished (seconds): a typical short generation.
DEFAULT_HOLD_S = 5.0
# Weight of the newest hold time in the moving average: reacts within ~5 requests.
EWMA_ALPHA = 0.2
# Retry-After bounds: the openai client honours Retry-After only up to 60 s, and 0 means "hammer".
MIN_RETRY_S = 1
MAX_RETRY_S = 60
# Per-model hold-time averages kept: model names come from clients, so the table is bounded.
MAX_TRACKED_MODELS = 256
# The worker that stands in until the service names real ones: unlimited memory, no per-model limit.
DEFAULT_WORKER = "default"
# Memory comparisons tolerate rounding in reported sizes (GB).
_EPS_GB = 1e-6
# ``pool_of`` not given: every worker serves every model.
_ANY = object()


def model_key(name: str) -> str:
    """The name admission accounts a model under: Ollama's ``llama3`` and ``llama3:latest`` are one."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A backend job requests can be placed on, as the service knows it.

    ``gpu_memory_gb`` 0: no memory checks. ``parallel_per_model`` 0: no per-model limit (only
    ``max_concurrent`` / ``max_running``). ``loaded``: models resident now (``/api/ps``) with their
    size in GB, None when unknown (then ``size_of`` is asked); ``loaded=None``: the service cannot
    list them (an OpenAI-protocol backend), admission keeps its own account. ``max_running`` 0: no
    per-worker cap. ``pool``: the group of jobs it belongs to (Slurm pools); with ``pool_of`` given
    to :class:`Admission`, a request only goes to workers of its model's pool.
    """

    key: str
    gpu_memory_gb: float = 0.0
    parallel_per_model: int = 0
    loaded: Mapping[str, float | None] | None = field(default_factory=dict)
    max_running: int = 0
    pool: str = ""


@dataclass(slots=True, eq=False)
class Ticket:
    """One request's passage through the queue (times are ``time.monotonic()`` values)."""

    id: str
    user: str
    model: str
    stream: bool
    enqueued_at: float
    started_at: float | None = None
    # 1-based place in the admission order when first queued; 0 when admitted without waiting.
    position_at_start: int = 0
    # Set on admission: the worker to send it to; whether the model was not loaded there by
    # admission's accounting (a model of unknown size is only tracked while it runs or when the
    # service reports it), so this request loads it; the idle models counted as unloaded to make
    # room (unload them if the backend does not do it itself, as Ollama does).
    worker: str = ""
    load: bool = False
    evict: tuple[str, ...] = ()


class _Waiter:
    __slots__ = ("ticket", "key", "seq", "fut", "timer", "queued")

    def __init__(self, ticket: Ticket, key: str, seq: int, fut: asyncio.Future[None]):
        self.ticket = ticket
        self.key = key  # model_key(ticket.model)
        self.seq = seq  # arrival order
        self.fut = fut
        self.timer: asyncio.TimerHandle | None = None
        self.queued = True


class _Worker:
    __slots__ = (
        "key",
        "gpu_memory_gb",
        "parallel",
        "max_running",
        "loaded",
        "running",
        "total",
        "last_used",
        "plan",
        "live",
        "pool",
    )

    def __init__(self, key: str):
        self.key = key
        self.pool = ""
        self.gpu_memory_gb = 0.0
        self.parallel = 0
        self.max_running = 0
        self.loaded: dict[str, float] = {}  # model -> GB (0.0: size unknown)
        self.running: dict[str, int] = {}  # model -> requests running
        self.total = 0
        self.last_used: dict[str, float] = {}  # model -> when its last request finished
        self.plan: _Plan | None = None  # the load this worker's memory is reserved for
        self.live = True  # False: removed by set_workers, kept until its requests finish

    def has(self, model: str) -> bool:
        # A model with a running request is loaded (or loading) even when its size is unknown.
        return model in self.loaded or model in self.running

    def used_gb(self) -> float:
        return sum(self.loaded.values())


class _Plan:
    """A waiting load's reservation of one worker: ``victims`` drain, then the load goes."""

    __slots__ = ("model", "worker", "victims", "seq")

    def __init__(self, model: str, worker: _Worker, victims: tuple[str, ...], seq: int):
        self.model = model
        self.worker = worker
        self.victims = victims
        self.seq = seq  # requests for a victim that arrived after this still wait


# (worker, loads the model, models evicted)
_Placement = tuple[_Worker, bool, tuple[str, ...]]


def _enough(
    order: Iterable[str], sizes: Mapping[str, float], free: float, need: float
) -> tuple[str, ...] | None:
    """The first models of ``order`` whose sizes, added to ``free``, make ``need`` GB; None if all
    do not. Only what is needed is kept: a later, bigger one may make an earlier one moot."""
    chosen: list[str] = []
    for m in order:
        chosen.append(m)
        free += sizes[m]
        if need <= free + _EPS_GB:
            for extra in chosen[:-1]:
                if need <= free - sizes[extra] + _EPS_GB:
                    chosen.remove(extra)
                    free -= sizes[extra]
            return tuple(chosen)
    return None


class _Slot:
    """Async context manager returned by :meth:`Admission.slot` (a class: cheaper than a generator)."""

    __slots__ = ("_adm", "_args", "_ticket")

    def __init__(self, adm: Admission, user: str, model: str, deadline: float, stream: bool):
        self._adm = adm
        self._args = (user, model, deadline, stream)
        self._ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        self._ticket = await self._adm._acquire(*self._args)
        return self._ticket

    async def __aexit__(self, *exc: object) -> None:
        if self._ticket is not None:
            self._adm._release(self._ticket)
            self._ticket = None


class Admission:
    """Per-(worker, model) slots + GPU memory + fair bounded queue. Use from one event loop.

    ``size_of(model)`` gives the GB a model needs once loaded (None: unknown, assumed to fit);
    ``workers`` the initial backend jobs (default: one unlimited stand-in, see module doc);
    ``pool_of(model)`` the pool whose workers may serve a model (None: no pool can, the request
    is refused); without it every worker serves every model.
    """

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        max_queue_per_user: int,
        *,
        size_of: Callable[[str], float | None] | None = None,
        workers: Iterable[WorkerInfo] | None = None,
        pool_of: Callable[[str], str | None] | None = None,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_queue_per_user = max_queue_per_user
        self._size_of = size_of
        self._pool_of = pool_of
        self._ids = itertools.count(1)
        self._running: dict[str, Ticket] = {}
        # Every waiter of a user in arrival order (positions), and per user and model (FIFO per
        # model); the round-robin ring of users that have waiters: served users move to the back.
        self._queues: dict[str, deque[_Waiter]] = {}
        self._per_user: dict[str, dict[str, deque[_Waiter]]] = {}
        self._ring: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, _Waiter] = {}
        # Waiting requests per model, in the order the models started waiting (plans go in it).
        self._model_waiting: dict[str, int] = {}
        self._workers: dict[str, _Worker] = {}
        self._live: list[_Worker] = []
        self._plans: dict[str, _Plan] = {}
        self._hold_ewma: float | None = None
        self._hold_by_model: dict[str, float] = {}
        self.set_workers(workers if workers is not None else [WorkerInfo(DEFAULT_WORKER)], _dispatch=False)

    # -- limits ----------------------------------------------------------------------------
    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        # Set at runtime once the backend's parallelism is known; raising it admits waiters now,
        # lowering it lets running requests finish and admits no more until below the new limit.
        if value < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._max_concurrent = value
        self._dispatch()

    # -- workers ---------------------------------------------------------------------------
    def set_workers(self, workers: Iterable[WorkerInfo], *, _dispatch: bool = True) -> None:
        """Replace the set of backend jobs (their memory, parallelism and loaded models).

        ``loaded`` is taken as the truth except for models with requests running there (they
        are loaded or loading). A worker that disappears keeps its running requests until they
        finish but gets no new ones. Waiters are admitted at once if this made room.
        """
        infos = list(workers)
        if not infos:
            raise ValueError("set_workers needs at least one worker (the job that would start)")
        seen: set[str] = set()
        for info in infos:
            if info.parallel_per_model < 0 or info.max_running < 0:
                raise ValueError(f"worker {info.key!r}: limits must be >= 0")
            wk = self._workers.get(info.key)
            if wk is None:
                wk = self._workers[info.key] = _Worker(info.key)
            wk.live = True
            wk.gpu_memory_gb = float(info.gpu_memory_gb)
            wk.parallel = info.parallel_per_model
            wk.max_running = info.max_running
            wk.pool = info.pool
            if info.loaded is None:  # the service cannot list them: keep admission's own account
                seen.add(info.key)
                continue
            loaded: dict[str, float] = {}
            for name, size in info.loaded.items():
                key = model_key(name)
                loaded[key] = float(size) if size is not None else self._size(key)
            for key in wk.running:
                if key not in loaded and key in wk.loaded:
                    loaded[key] = wk.loaded[key]
            wk.loaded = loaded
            for key in list(wk.last_used):
                if key not in loaded:
                    del wk.last_used[key]
            seen.add(info.key)
        for key, wk in list(self._workers.items()):
            if key not in seen:
                wk.live = False
                if wk.plan is not None:
                    self._drop_plan(wk.plan)
                if not wk.total:
                    del self._workers[key]
        self._live = [wk for wk in self._workers.values() if wk.live]
        for plan in list(self._plans.values()):
            if not self._plan_valid(plan):
                self._drop_plan(plan)
        if _dispatch:
            self._dispatch()

    def model_loaded(self, worker: str, model: str, size_gb: float | None = None) -> None:
        """The backend ``worker`` now holds ``model`` (e.g. seen in its ``/api/ps``)."""
        wk = self._workers.get(worker)
        if wk is None:
            return
        key = model_key(model)
        wk.loaded[key] = float(size_gb) if size_gb is not None else self._size(key)
        self._dispatch()

    def model_unloaded(self, worker: str, model: str) -> None:
        """The backend ``worker`` let ``model`` go (keep-alive expired, or unloaded on request)."""
        wk = self._workers.get(worker)
        if wk is None:
            return
        key = model_key(model)
        if key in wk.running:
            return  # a request runs on it: it is loaded (or loading) whatever a listing said
        if wk.loaded.pop(key, None) is not None:
            wk.last_used.pop(key, None)
            for plan in list(self._plans.values()):
                if not self._plan_valid(plan):
                    self._drop_plan(plan)
            self._dispatch()

    def _size(self, key: str) -> float:
        if self._size_of is None:
            return 0.0
        size = self._size_of(key)
        return float(size) if size else 0.0

    # -- the one entry point ---------------------------------------------------------------
    def slot(self, user: str, model: str, deadline: float, stream: bool = False) -> _Slot:
        """Async context manager yielding a :class:`Ticket` once admitted; holds the slot inside.

        Raises :class:`QueueFull` at once when the request would have to wait beyond the limits,
        :class:`AdmissionTimeout` when ``deadline`` (``time.monotonic()``) passes while waiting,
        :class:`BadRequest` when the model fits no worker's GPU at all.
        """
        return _Slot(self, user, model, deadline, stream)

    async def _acquire(self, user: str, model: str, deadline: float, stream: bool) -> Ticket:
        now = time.monotonic()
        seq = next(self._ids)
        ticket = Ticket(str(seq), user, model, stream, now)
        key = model_key(model)
        if len(self._running) < self._max_concurrent:
            # No waiter can run now (dispatch leaves none that could), so this one overtakes nobody.
            placement = self._place(key, seq)
            if placement is not None:
                self._start(ticket, key, placement, now)
                return ticket
        self._check_fits_somewhere(model, key)

        q = self._queues.get(user)
        mine = len(q) if q is not None else 0
        if mine >= self.max_queue_per_user:
            assert q is not None
            # Retry when this user's first waiting request should have been admitted.
            first = q[0]
            retry = self._retry_for(first.key, self._position(first, 0, 0))
            raise QueueFull(
                f"You already have {mine} requests waiting (limit {self.max_queue_per_user}); "
                f"retry in {retry} s",
                429,
                retry,
            )
        if len(self._waiters) >= self.max_queue:
            retry = self.estimate_retry_after(None, None if self._cap_full() else key)
            raise QueueFull(
                f"The shared queue is full ({len(self._waiters)} requests waiting from "
                f"{len(self._ring)} users, {len(self._running)} running); retry in {retry} s",
                503,
                retry,
            )

        loop = asyncio.get_running_loop()
        w = _Waiter(ticket, key, seq, loop.create_future())
        self._waiters[ticket.id] = w
        models = self._per_user.get(user)
        if q is None:
            # A new user is served after one turn of each user already waiting: O(1).
            self._queues[user] = deque((w,))
            self._per_user[user] = {key: deque((w,))}
            self._ring[user] = None
            model_index = 0
        else:
            q.append(w)
            assert models is not None
            mq = models.get(key)
            if mq is None:
                models[key] = deque((w,))
                model_index = 0
            else:
                mq.append(w)
                model_index = len(mq) - 1
        self._model_waiting[key] = self._model_waiting.get(key, 0) + 1
        ticket.position_at_start = self._position(w, len(self._queues[user]) - 1, model_index)
        # A timer (not wait_for) bounds the wait: no extra task per waiter.
        w.timer = loop.call_later(max(0.0, deadline - now), self._expire, w)
        # Nothing became runnable (this one was not, the others are as they were), but a model
        # loaded nowhere may need its plan now.
        if not self._loaded_anywhere(key):
            self._replan()

        try:
            await w.fut
        except BaseException:
            fut = w.fut
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Cancelled right after being granted a slot: give it back.
                self._release(ticket, finished=False)
            else:
                # Cancelled while waiting (or timed out): leave the queue now (idempotent).
                self._remove(w)
            raise
        return ticket

    def _check_fits_somewhere(self, model: str, key: str) -> None:
        """A model larger than every worker's GPU would wait forever: refuse it now."""
        size = self._size(key)
        pool = self._route(key)
        if pool is None:  # no pool serves it (the service says why before asking admission)
            biggest = max((wk.gpu_memory_gb for wk in self._live), default=0.0)
            why = check_fits(model, size, biggest) if size else None
            raise BadRequest(
                why or f"no backend job can serve model '{model}'", param="model", code="model_too_large"
            )
        live = [wk for wk in self._live if pool is _ANY or wk.pool == pool]
        if not size or not live:
            return
        biggest = max(wk.gpu_memory_gb for wk in live)
        if any(wk.gpu_memory_gb <= 0 for wk in live) or size <= biggest + _EPS_GB:
            return
        raise BadRequest(check_fits(model, size, biggest) or "", param="model", code="model_too_large")

    def _route(self, key: str) -> str | None | object:
        """The pool serving ``key`` (``_ANY``: no pools, every worker; None: none serves it)."""
        return _ANY if self._pool_of is None else self._pool_of(key)

    # -- placement -------------------------------------------------------------------------
    def _frozen(self, wk: _Worker, key: str, seq: int) -> bool:
        plan = wk.plan
        return plan is not None and key in plan.victims and seq > plan.seq

    def _place(self, key: str, seq: int) -> _Placement | None:
        """Where a request for ``key`` (arrived as ``seq``) can run now, or None."""
        best: _Worker | None = None
        loaded_somewhere = False
        pool = self._route(key)
        if pool is None:
            return None
        for wk in self._live:  # every request's path: kept flat
            if pool is not _ANY and wk.pool != pool:
                continue
            running = wk.running
            if key in running:
                if wk.parallel and running[key] >= wk.parallel:
                    loaded_somewhere = True
                    continue
            elif key not in wk.loaded:
                continue
            loaded_somewhere = True
            if wk.max_running and wk.total >= wk.max_running:
                continue
            plan = wk.plan
            if plan is not None and key in plan.victims and seq > plan.seq:
                continue
            if best is None or wk.total < best.total:
                best = wk
        if best is not None:
            return (best, False, ())
        # Load it: into free memory anywhere, or (first copy only) by evicting idle models.
        size = self._size(key)
        choice: _Placement | None = None
        rank: tuple[bool, int] | None = None
        for wk in self._live:
            if pool is not _ANY and wk.pool != pool:
                continue
            if wk.has(key) or (wk.plan is not None and wk.plan.model != key):
                continue
            if wk.max_running and wk.total >= wk.max_running:
                continue
            evict = self._room(wk, key, size, allow_evict=not loaded_somewhere)
            if evict is None:
                continue
            r = (bool(evict), wk.total)
            if rank is None or r < rank:
                choice, rank = (wk, True, evict), r
        return choice

    def _room(self, wk: _Worker, key: str, size: float, allow_evict: bool) -> tuple[str, ...] | None:
        """Idle models to evict so that ``size`` GB fit on ``wk`` (empty: it fits); None: no room."""
        if wk.gpu_memory_gb <= 0 or not size:
            return ()
        if size > wk.gpu_memory_gb + _EPS_GB:
            return None
        free = wk.gpu_memory_gb - wk.used_gb()
        if size <= free + _EPS_GB:
            return ()
        if not allow_evict:
            return None
        # Idle models, those nobody waits for first, then least recently used (Ollama: LRU).
        idle = sorted(
            (m for m in wk.loaded if m not in wk.running and m != key),
            key=lambda m: (m in self._model_waiting, wk.last_used.get(m, 0.0)),
        )
        return _enough(idle, wk.loaded, free, size)

    # -- plans: a waiting load is not overtaken forever ------------------------------------
    def _replan(self) -> None:
        """Give each waiting model that is loaded nowhere and cannot be placed a plan (oldest first)."""
        for key in self._model_waiting:
            plan = self._plans.get(key)
            if self._loaded_anywhere(key):
                if plan is not None:
                    self._drop_plan(plan)  # it got a place another way: free what it held
                continue
            if plan is not None or self._place(key, 0) is not None:
                continue
            self._make_plan(key)

    def _loaded_anywhere(self, key: str) -> bool:
        pool = self._route(key) if self._pool_of is not None else _ANY
        for wk in self._live:
            if pool is not _ANY and wk.pool != pool:
                continue
            if key in wk.loaded or key in wk.running:
                return True
        return False

    def _make_plan(self, key: str) -> None:
        size = self._size(key)
        best: tuple[int, int, int] | None = None
        best_plan: tuple[_Worker, tuple[str, ...]] | None = None
        pool = self._route(key)
        for wk in self._live:
            if pool is not _ANY and wk.pool != pool:
                continue
            if wk.plan is not None or wk.gpu_memory_gb <= 0 or size > wk.gpu_memory_gb + _EPS_GB:
                continue
            free = wk.gpu_memory_gb - wk.used_gb()
            if size <= free + _EPS_GB:
                continue  # memory is not what blocks it here (a worker cap is): it waits its turn
            # Fewest running requests first (they drain soonest), then least recently used.
            order = sorted(
                (m for m in wk.loaded if m != key),
                key=lambda m: (wk.running.get(m, 0), wk.last_used.get(m, 0.0)),
            )
            victims = _enough(order, wk.loaded, free, size)
            if victims is None:
                continue
            r = (sum(wk.running.get(m, 0) for m in victims), len(victims), wk.total)
            if best is None or r < best:
                best, best_plan = r, (wk, tuple(victims))
        if best_plan is None:
            return  # every fitting worker is reserved for another load: next in line
        wk, chosen = best_plan
        oldest = min(mq[0].seq for models in self._per_user.values() if (mq := models.get(key)))
        plan = _Plan(key, wk, chosen, oldest)
        wk.plan = plan
        self._plans[key] = plan

    def _plan_valid(self, plan: _Plan) -> bool:
        wk = plan.worker
        if not wk.live or wk.plan is not plan:
            return False
        if any(v not in wk.loaded for v in plan.victims):
            return False  # a victim went by itself: plan again with what is there now
        room = wk.gpu_memory_gb - wk.used_gb() + sum(wk.loaded[v] for v in plan.victims)
        return self._size(plan.model) <= room + _EPS_GB

    def _drop_plan(self, plan: _Plan) -> None:
        if self._plans.get(plan.model) is plan:
            del self._plans[plan.model]
        if plan.worker.plan is plan:
            plan.worker.plan = None

    # -- scheduler -------------------------------------------------------------------------
    def _cap_full(self) -> bool:
        return len(self._running) >= self._max_concurrent

    def _dispatch(self) -> None:
        """Grant what can run now to waiters in round-robin order."""
        for key in self._model_waiting:
            if not self._loaded_anywhere(key) or self._plans:
                self._replan()  # only then can a plan be made or dropped
                break
        while self._waiters and len(self._running) < self._max_concurrent:
            memo: dict[Any, _Placement | None] = {}
            found: tuple[_Waiter, _Placement] | None = None
            for user in self._ring:
                found = self._first_runnable(user, memo)
                if found is not None:
                    break
            if found is None:
                return
            w, placement = found
            self._take(w)
            if w.timer is not None:
                w.timer.cancel()
            if w.fut.done():
                # Its task was cancelled and has not run its cleanup yet: skip it.
                continue
            self._start(w.ticket, w.key, placement, time.monotonic())
            w.fut.set_result(None)
            if placement[1]:
                self._replan()  # a load took memory: another waiting load may need its plan now

    def _first_runnable(
        self, user: str, memo: dict[Any, _Placement | None]
    ) -> tuple[_Waiter, _Placement] | None:
        """The user's oldest waiter that can run now, with where; O(models the user waits for)."""
        best: tuple[_Waiter, _Placement] | None = None
        for key, mq in self._per_user[user].items():
            head = mq[0]
            if best is not None and head.seq > best[0].seq:
                continue
            memo_key: Any = key
            if self._plans:
                frozen = [p.worker.key for p in self._plans.values() if self._frozen(p.worker, key, head.seq)]
                memo_key = (key, *frozen)
            if memo_key in memo:
                placement = memo[memo_key]
            else:
                placement = memo[memo_key] = self._place(key, head.seq)
            if placement is not None:
                best = (head, placement)
        return best

    def _take(self, w: _Waiter) -> None:
        """Unlink a waiter that is being admitted (it heads its user's queue for its model)."""
        w.queued = False
        user = w.ticket.user
        q = self._queues[user]
        if q[0] is w:
            q.popleft()
        else:
            q.remove(w)  # an older request of this user waits for another model
        models = self._per_user[user]
        mq = models[w.key]
        mq.popleft()
        if not mq:
            del models[w.key]
        if q:
            self._ring.move_to_end(user)
        else:
            del self._queues[user], self._per_user[user], self._ring[user]
        del self._waiters[w.ticket.id]
        self._dec_waiting(w.key)

    def _dec_waiting(self, key: str) -> bool:
        """One waiter fewer for ``key``; True when that ended a plan (capacity may be unfrozen)."""
        n = self._model_waiting[key] - 1
        if n:
            self._model_waiting[key] = n
            return False
        del self._model_waiting[key]
        plan = self._plans.get(key)
        if plan is not None:
            self._drop_plan(plan)
            return True
        return False

    def _start(self, ticket: Ticket, key: str, placement: _Placement, now: float) -> None:
        wk, load, evict = placement
        ticket.started_at = now
        ticket.worker = wk.key
        ticket.load = load
        ticket.evict = evict
        if load:
            for v in evict:
                wk.loaded.pop(v, None)
                wk.last_used.pop(v, None)
            size = self._size(key)
            if size:
                wk.loaded[key] = size
            plan = self._plans.get(key)
            if plan is not None and plan.worker is wk:
                self._drop_plan(plan)
        wk.running[key] = wk.running.get(key, 0) + 1
        wk.total += 1
        self._running[ticket.id] = ticket

    def _remove(self, w: _Waiter) -> None:
        if not w.queued:
            return
        w.queued = False
        user = w.ticket.user
        q = self._queues[user]
        q.remove(w)  # O(requests of this user), bounded by max_queue_per_user
        models = self._per_user[user]
        mq = models[w.key]
        mq.remove(w)
        if not mq:
            del models[w.key]
        if not q:
            del self._queues[user], self._per_user[user], self._ring[user]
        del self._waiters[w.ticket.id]
        if w.timer is not None:
            w.timer.cancel()
        if self._dec_waiting(w.key):
            self._dispatch()  # the victims of the plan it held may run again

    def _expire(self, w: _Waiter) -> None:
        if w.fut.done() or not w.queued:
            return
        position = self._position(w)
        cap_bound = self._cap_full()
        total = len(self._waiters) if cap_bound else self._model_waiting[w.key]
        why = self._why_waiting(w.key) if not cap_bound else None
        retry = self._retry_for(w.key, position)
        self._remove(w)
        waited = time.monotonic() - w.ticket.enqueued_at
        if cap_bound:
            scope = f"({self._max_concurrent} requests run at once)"
        else:
            scope = f"among requests for this model ({self._capacity(w.key)} run at once; {why})"
        w.fut.set_exception(
            AdmissionTimeout(
                f"Waited {waited:.0f} s in the queue for model '{w.ticket.model}' and was still at "
                f"position {position} of {total} {scope}; retry in {retry} s",
                retry,
                position,
            )
        )

    def _release(self, ticket: Ticket, finished: bool = True) -> None:
        if self._running.pop(ticket.id, None) is None:
            return
        now = time.monotonic()
        key = model_key(ticket.model)
        wk = self._workers.get(ticket.worker)
        if wk is not None:
            n = wk.running[key] - 1
            if n:
                wk.running[key] = n
            else:
                del wk.running[key]
                if not finished and ticket.load:
                    wk.loaded.pop(key, None)  # never reached the backend: it did not load it
            wk.total -= 1
            if key in wk.loaded:
                wk.last_used[key] = now
            if not wk.live and not wk.total:
                del self._workers[wk.key]
        if finished and ticket.started_at is not None:
            held = now - ticket.started_at
            prev = self._hold_ewma
            self._hold_ewma = held if prev is None else prev + EWMA_ALPHA * (held - prev)
            prev_m = self._hold_by_model.pop(key, None)  # re-inserted last: the table stays LRU
            self._hold_by_model[key] = held if prev_m is None else prev_m + EWMA_ALPHA * (held - prev_m)
            if len(self._hold_by_model) > MAX_TRACKED_MODELS:
                del self._hold_by_model[next(iter(self._hold_by_model))]
        self._dispatch()

    # -- positions -------------------------------------------------------------------------
    def _position(self, w: _Waiter, user_index: int | None = None, model_index: int | None = None) -> int:
        """1-based place in the order the scheduler will admit: O(users).

        Round k of the round robin admits the k-th waiter of every user (in ring order) that has
        more than k; so the i-th waiter of the user at ring index r comes after
        sum(min(len(v), i)) earlier-round admissions and the users before r that have > i.
        Counted over all waiters while every slot is taken, else over those for the same model.
        The indexes, when the caller knows them, save a scan of the user's queue.
        """
        user = w.ticket.user
        before = 0
        ahead = 1  # users before ``user`` in the ring still get their round-i turn first
        if self._cap_full():
            queues = self._queues
            i = queues[user].index(w) if user_index is None else user_index
            for v in self._ring:
                if v == user:
                    before += i
                    ahead = 0
                    continue
                n = len(queues[v])
                before += n if n <= i else i + ahead
        else:
            key = w.key
            per_user = self._per_user
            i = per_user[user][key].index(w) if model_index is None else model_index
            for v in self._ring:
                if v == user:
                    before += i
                    ahead = 0
                    continue
                mq = per_user[v].get(key)
                if mq is not None:
                    n = len(mq)
                    before += n if n <= i else i + ahead
        return before + 1

    def position(self, ticket_id: str) -> int | None:
        """Current 1-based place of a waiting request; None when it is not waiting."""
        w = self._waiters.get(ticket_id)
        return self._position(w) if w is not None else None

    def _admission_order(self, key: str | None = None) -> list[_Waiter]:
        """Waiters (all, or for model ``key``) in the order they will be admitted: O(waiters)."""
        if key is None:
            lists = [list(self._queues[u]) for u in self._ring]
        else:
            lists = [list(mq) for u in self._ring if (mq := self._per_user[u].get(key))]
        order: list[_Waiter] = []
        k = 0
        while lists:
            lists = [lst for lst in lists if len(lst) > k]
            order.extend(lst[k] for lst in lists)
            k += 1
        return order

    # -- estimates and state ---------------------------------------------------------------
    @property
    def hold_time_s(self) -> float:
        """Moving average of how long a request holds a slot (seconds)."""
        return self._hold_ewma if self._hold_ewma is not None else DEFAULT_HOLD_S

    def hold_time_for(self, model: str) -> float:
        """Moving average of how long a request for ``model`` holds a slot (else the overall one)."""
        return self._hold_by_model.get(model_key(model), self.hold_time_s)

    def _capacity(self, key: str) -> int:
        """Requests for ``key`` that can run at once where it is loaded (where it would load)."""
        slots = 0
        pool = self._route(key) if self._pool_of is not None else _ANY
        live = [wk for wk in self._live if pool is _ANY or wk.pool == pool] or self._live
        for wk in live:
            if wk.has(key):
                slots += wk.parallel or wk.max_running or self._max_concurrent
        if not slots:
            slots = max((wk.parallel or wk.max_running or self._max_concurrent for wk in live), default=1)
        return max(1, min(slots, self._max_concurrent))

    def estimate_retry_after(self, ahead: int | None = None, model: str | None = None) -> int:
        """Seconds until ``ahead`` waiting requests (default: all; with ``model``, all for it)
        have been admitted, in 1..60; with ``model``, from that model's hold times and slots."""
        if model is None:
            if ahead is None:
                ahead = len(self._waiters) + 1
            secs = self.hold_time_s * max(ahead, 1) / self._max_concurrent
        else:
            key = model_key(model)
            if ahead is None:
                ahead = self._model_waiting.get(key, 0) + 1
            secs = self.hold_time_for(key) * max(ahead, 1) / self._capacity(key)
        return max(MIN_RETRY_S, min(MAX_RETRY_S, math.ceil(secs)))

    def _retry_for(self, key: str, position: int) -> int:
        # The same scope as the position: all requests while every slot is taken, else the model's.
        return self.estimate_retry_after(position, None if self._cap_full() else key)

    def _why_waiting(self, key: str) -> str:
        plan = self._plans.get(key)
        if plan is not None:
            return (
                f"waiting for GPU memory on {plan.worker.key}: {', '.join(plan.victims)} "
                "finish their requests first, then are unloaded"
            )
        if self._loaded_anywhere(key):
            return "all slots of this model are busy"
        return "waiting for GPU memory: another model's load goes first"

    def longest_wait_s(self, model: str | None = None) -> float:
        """How long the oldest waiting request (for ``model``, or any) has waited: a scale-out
        signal for a launcher. O(users)."""
        now = time.monotonic()
        if model is None:
            heads = [q[0] for q in self._queues.values()]
        else:
            key = model_key(model)
            heads = [mq[0] for models in self._per_user.values() if (mq := models.get(key))]
        return max((now - w.ticket.enqueued_at for w in heads), default=0.0)

    def waiting_models(self) -> dict[str, tuple[int, float]]:
        """Per model with waiting requests: (how many wait, how long the oldest has waited, s).
        What a launcher reads to decide to scale out (per pool). O(users × models)."""
        now = time.monotonic()
        out: dict[str, tuple[int, float]] = {}
        for models in self._per_user.values():
            for key, mq in models.items():
                count, oldest = out.get(key, (0, 0.0))
                out[key] = (count + len(mq), max(oldest, now - mq[0].ticket.enqueued_at))
        return out

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def running(self) -> int:
        return len(self._running)

    def totals(self) -> dict[str, int]:
        """Counts for ``GET /backend/state`` (no user names)."""
        return {
            "waiting": len(self._waiters),
            "running": len(self._running),
            "users_waiting": len(self._ring),
            "max_concurrent": self._max_concurrent,
            "max_queue": self.max_queue,
            "max_queue_per_user": self.max_queue_per_user,
        }

    def models(self, visible: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Per model: waiting, running, the workers holding it, its size, why its requests wait.

        ``visible`` (model keys) limits the list to those plus the models loaded or running on a
        worker (public anyway through ``/api/ps``); None lists every model.
        """
        names: set[str] = set(self._model_waiting)
        for wk in self._workers.values():
            names.update(wk.loaded)
            names.update(wk.running)
        if visible is not None:
            allowed = set(visible)
            names = {n for n in names if n in allowed or any(wk.has(n) for wk in self._live)}
        out: list[dict[str, Any]] = []
        for name in sorted(names):
            waiting = self._model_waiting.get(name, 0)
            plan = self._plans.get(name)
            size = self._size(name)
            entry: dict[str, Any] = {
                "name": name,
                "waiting": waiting,
                "running": sum(wk.running.get(name, 0) for wk in self._workers.values()),
                "workers": [wk.key for wk in self._live if wk.has(name)],
                "size_gb": round(size, 2) if size else None,
                "waiting_for": None,
            }
            if waiting:
                if self._cap_full():
                    entry["waiting_for"] = "turn"  # every slot of the service is taken
                elif plan is not None or not entry["workers"]:
                    entry["waiting_for"] = "memory"
                else:
                    entry["waiting_for"] = "slot"
            if plan is not None:
                entry["plan"] = {"worker": plan.worker.key, "evicts": list(plan.victims)}
            out.append(entry)
        return out

    def workers(self, visible: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Per worker: memory, what is loaded (with running counts), requests running, and the
        load it is reserved for (with ``visible``, only if that model is in it)."""
        allowed = None if visible is None else set(visible)
        return [
            {
                "key": wk.key,
                "gpu_memory_gb": wk.gpu_memory_gb,
                "used_gb": round(wk.used_gb(), 2),
                "parallel_per_model": wk.parallel,
                "running": wk.total,
                "models": {m: wk.running.get(m, 0) for m in sorted(set(wk.loaded) | set(wk.running))},
                "reserved_for": (
                    wk.plan.model
                    if wk.plan is not None and (allowed is None or wk.plan.model in allowed)
                    else None
                ),
            }
            for wk in self._live
        ]

    @staticmethod
    def _entry(t: Ticket, now: float, position: int | None, with_user: bool) -> dict[str, Any]:
        if t.started_at is None:
            e: dict[str, Any] = {"id": t.id, "model": t.model, "state": "waiting", "position": position}
            e["waited_s"] = round(now - t.enqueued_at, 1)
            e["running_s"] = 0.0
        else:
            e = {"id": t.id, "model": t.model, "state": "running"}
            e["waited_s"] = round(t.started_at - t.enqueued_at, 1)
            e["running_s"] = round(now - t.started_at, 1)
            e["worker"] = t.worker
        e["stream"] = t.stream
        if with_user:
            e["user"] = t.user
        return e

    def snapshot(self, user: str, admin: bool = False) -> dict[str, Any]:
        """The caller's own requests, totals, per-model and per-worker figures, and (admins only)
        everyone's requests with names. Non-admins see the models they asked for or that are loaded."""
        now = time.monotonic()
        mine = [self._entry(t, now, None, False) for t in self._running.values() if t.user == user]
        q = self._queues.get(user)
        if q is not None:
            mine.extend(self._entry(w.ticket, now, self._position(w), False) for w in q)
        own = None if admin else {model_key(e["model"]) for e in mine}
        out: dict[str, Any] = {
            "mine": mine,
            "totals": self.totals(),
            "models": self.models(own),
            "workers": self.workers(own),
        }
        if admin:
            everyone = [self._entry(t, now, None, True) for t in self._running.values()]
            if self._cap_full():
                everyone.extend(
                    self._entry(w.ticket, now, pos, True)
                    for pos, w in enumerate(self._admission_order(), start=1)
                )
            else:
                for key in self._model_waiting:
                    everyone.extend(
                        self._entry(w.ticket, now, pos, True)
                        for pos, w in enumerate(self._admission_order(key), start=1)
                    )
            out["all"] = everyone
        return out
