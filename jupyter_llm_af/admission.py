"""Admission queue in front of the shared backend: a concurrency limit, bounded fair queues.

Imports nothing from Jupyter. A request handler does::

    async with admission.slot(user, model, deadline, stream=True) as ticket:
        ...forward to the backend, stream the whole response...

and the slot is held until the ``async with`` block exits.

* At most ``max_concurrent`` requests hold a slot; the rest wait in per-user FIFO queues.
* Waiting requests are admitted round robin across users (FIFO within a user), so a user with 50
  queued requests delays another user's single request by at most one turn.
* Limits are checked when a request would have to wait: ``max_queue_per_user`` → 429,
  ``max_queue`` (all users) → 503, both with a Retry-After estimated from recent slot hold times.
* A ``deadline`` (``time.monotonic()``) bounds the wait: :class:`AdmissionTimeout`.
* A cancelled waiter (client gone) leaves the queue at once and never leaks a slot.

Each waiter is one ``asyncio.Future`` plus one timer; admission and release are O(1) (O(users)
to compute a position), with no polling.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .errors import AdmissionTimeout, QueueFull

# Slot hold time assumed before any request has finished (seconds): a typical short generation.
DEFAULT_HOLD_S = 5.0
# Weight of the newest hold time in the moving average: reacts within ~5 requests.
EWMA_ALPHA = 0.2
# Retry-After bounds: the openai client honours Retry-After only up to 60 s, and 0 means "hammer".
MIN_RETRY_S = 1
MAX_RETRY_S = 60


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


class _Waiter:
    __slots__ = ("ticket", "fut", "timer", "queued")

    def __init__(self, ticket: Ticket, fut: asyncio.Future[None]):
        self.ticket = ticket
        self.fut = fut
        self.timer: asyncio.TimerHandle | None = None
        self.queued = True


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
    """Concurrency limit + fair bounded queue. Use from one event loop."""

    def __init__(self, max_concurrent: int, max_queue: int, max_queue_per_user: int):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_queue_per_user = max_queue_per_user
        self._ids = itertools.count(1)
        self._running: dict[str, Ticket] = {}
        # Per-user FIFOs of waiters, and the round-robin ring of users that have waiters:
        # ring[0] is served next, then moves to the back if it still has waiters.
        self._queues: dict[str, deque[_Waiter]] = {}
        self._ring: deque[str] = deque()
        self._waiters: dict[str, _Waiter] = {}
        self._hold_ewma: float | None = None

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

    # -- the one entry point ---------------------------------------------------------------
    def slot(self, user: str, model: str, deadline: float, stream: bool = False) -> _Slot:
        """Async context manager yielding a :class:`Ticket` once admitted; holds the slot inside.

        Raises :class:`QueueFull` at once when the request would have to wait beyond the limits,
        :class:`AdmissionTimeout` when ``deadline`` (``time.monotonic()``) passes while waiting.
        """
        return _Slot(self, user, model, deadline, stream)

    async def _acquire(self, user: str, model: str, deadline: float, stream: bool) -> Ticket:
        now = time.monotonic()
        ticket = Ticket(str(next(self._ids)), user, model, stream, now)
        if not self._waiters and len(self._running) < self._max_concurrent:
            ticket.started_at = now
            self._running[ticket.id] = ticket
            return ticket

        q = self._queues.get(user)
        mine = len(q) if q is not None else 0
        if mine >= self.max_queue_per_user:
            # Retry when this user's first waiting request should have been admitted.
            retry = self.estimate_retry_after(self._position(q[0], 0) if q else None)
            raise QueueFull(
                f"You already have {mine} requests waiting (limit {self.max_queue_per_user}); "
                f"retry in {retry} s",
                429,
                retry,
            )
        if len(self._waiters) >= self.max_queue:
            retry = self.estimate_retry_after()
            raise QueueFull(
                f"The shared queue is full ({len(self._waiters)} requests waiting from "
                f"{len(self._ring)} users, {len(self._running)} running); retry in {retry} s",
                503,
                retry,
            )

        loop = asyncio.get_running_loop()
        w = _Waiter(ticket, loop.create_future())
        self._waiters[ticket.id] = w
        if q is None:
            # A new user is served after one turn of each user already waiting: O(1).
            self._queues[user] = deque((w,))
            self._ring.append(user)
            ticket.position_at_start = len(self._ring)
        else:
            q.append(w)
            ticket.position_at_start = self._position(w, len(q) - 1)
        # A timer (not wait_for) bounds the wait: no extra task per waiter.
        w.timer = loop.call_later(max(0.0, deadline - now), self._expire, w)
        self._dispatch()  # defensive: a slot may be free if only cancelled waiters were ahead

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

    # -- scheduler -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Grant free slots to waiters in round-robin order."""
        while self._ring and len(self._running) < self._max_concurrent:
            user = self._ring.popleft()
            q = self._queues[user]
            w = q.popleft()
            if q:
                self._ring.append(user)
            else:
                del self._queues[user]
            w.queued = False
            del self._waiters[w.ticket.id]
            if w.timer is not None:
                w.timer.cancel()
            if w.fut.done():
                # Its task was cancelled and has not run its cleanup yet: skip it.
                continue
            w.ticket.started_at = time.monotonic()
            self._running[w.ticket.id] = w.ticket
            w.fut.set_result(None)

    def _remove(self, w: _Waiter) -> None:
        if not w.queued:
            return
        w.queued = False
        user = w.ticket.user
        q = self._queues[user]
        q.remove(w)  # O(requests of this user), bounded by max_queue_per_user
        if not q:
            del self._queues[user]
            self._ring.remove(user)  # O(users)
        del self._waiters[w.ticket.id]
        if w.timer is not None:
            w.timer.cancel()

    def _expire(self, w: _Waiter) -> None:
        if w.fut.done() or not w.queued:
            return
        position = self._position(w)
        total = len(self._waiters)
        self._remove(w)
        waited = time.monotonic() - w.ticket.enqueued_at
        retry = self.estimate_retry_after(position)
        w.fut.set_exception(
            AdmissionTimeout(
                f"Waited {waited:.0f} s in the queue for model '{w.ticket.model}' and was still at "
                f"position {position} of {total} ({self._max_concurrent} requests run at once); "
                f"retry in {retry} s",
                retry,
                position,
            )
        )

    def _release(self, ticket: Ticket, finished: bool = True) -> None:
        if self._running.pop(ticket.id, None) is None:
            return
        if finished and ticket.started_at is not None:
            held = time.monotonic() - ticket.started_at
            prev = self._hold_ewma
            self._hold_ewma = held if prev is None else prev + EWMA_ALPHA * (held - prev)
        self._dispatch()

    # -- positions -------------------------------------------------------------------------
    def _position(self, w: _Waiter, index: int | None = None) -> int:
        """1-based place in the order the scheduler will admit: O(users).

        Round k of the round robin admits the k-th waiter of every user (in ring order) that has
        more than k; so the i-th waiter of the user at ring index r comes after
        sum(min(len(v), i)) earlier-round admissions and the users before r that have > i.
        ``index`` (i), when the caller knows it, saves a scan of the user's queue.
        """
        user = w.ticket.user
        queues = self._queues
        i = queues[user].index(w) if index is None else index
        before = 0
        ahead = 1  # users before ``user`` in the ring still get their round-i turn first
        for v in self._ring:
            if v == user:
                before += i
                ahead = 0
                continue
            n = len(queues[v])
            before += n if n <= i else i + ahead
        return before + 1

    def position(self, ticket_id: str) -> int | None:
        """Current 1-based place of a waiting request; None when it is not waiting."""
        w = self._waiters.get(ticket_id)
        return self._position(w) if w is not None else None

    def _admission_order(self) -> list[_Waiter]:
        """All waiters in the order they will be admitted: O(waiters)."""
        lists = [list(self._queues[u]) for u in self._ring]
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

    def estimate_retry_after(self, ahead: int | None = None) -> int:
        """Seconds until ``ahead`` waiting requests (default: all) have been admitted, in 1..60."""
        if ahead is None:
            ahead = len(self._waiters) + 1
        secs = self.hold_time_s * max(ahead, 1) / self._max_concurrent
        return max(MIN_RETRY_S, min(MAX_RETRY_S, math.ceil(secs)))

    def waiting_for(self, user: str) -> int:
        q = self._queues.get(user)
        return len(q) if q is not None else 0

    def running_for(self, user: str) -> int:
        return sum(1 for t in self._running.values() if t.user == user)

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
        e["stream"] = t.stream
        if with_user:
            e["user"] = t.user
        return e

    def snapshot(self, user: str, admin: bool = False) -> dict[str, Any]:
        """The caller's own requests, totals, and (admins only) everyone's requests with names."""
        now = time.monotonic()
        mine = [self._entry(t, now, None, False) for t in self._running.values() if t.user == user]
        q = self._queues.get(user)
        if q is not None:
            mine.extend(self._entry(w.ticket, now, self._position(w), False) for w in q)
        out: dict[str, Any] = {"mine": mine, "totals": self.totals()}
        if admin:
            everyone = [self._entry(t, now, None, True) for t in self._running.values()]
            everyone.extend(
                self._entry(w.ticket, now, pos, True)
                for pos, w in enumerate(self._admission_order(), start=1)
            )
            out["all"] = everyone
        return out
