"""The one small interface every launcher implements (upstream URL, local process, Slurm job).

Imports nothing from Jupyter. A request handler does::

    async with backend.lease(deadline) as endpoint:
        ...forward to endpoint.url...

``lease`` waits (until ``deadline``, a ``time.monotonic()`` value) for a ready backend, starting
one on demand, and counts the request as in flight on that endpoint so that a launcher can drain
an old endpoint (Slurm handover) before stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import Conflict
from ..state import LauncherState


class ControlNotSupported(Conflict):
    """The launcher has no such control action (e.g. stop on a plain upstream URL)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a ready backend listens. ``key`` names it (e.g. the Slurm job id) for draining.

    ``headers`` go with every request to it (a Slurm job's gateway secret): not compared, never shown.
    """

    url: str
    key: str = "default"
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # secrets: no repr


@dataclass
class _InFlight:
    count: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class Backend:
    """Base class: in-flight bookkeeping and activity tracking; launchers override the hooks."""

    kind = "base"

    def __init__(self) -> None:
        self._inflight: dict[str, _InFlight] = {}
        self.last_activity = time.monotonic()

    # -- hooks for launchers -------------------------------------------------------------
    async def start(self) -> None:
        """Called once when the service starts (start a process, adopt a Slurm job, ...)."""

    async def shutdown(self) -> None:
        """Called once when the service stops: release everything this backend started."""

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        """Return a ready endpoint, starting the backend on demand; wait until ``deadline``.

        Raises :class:`BackendUnavailable` when it cannot (timeout, failure).
        """
        raise NotImplementedError

    async def endpoint_for(self, deadline: float, worker: str = "") -> Endpoint:
        """The endpoint of ``worker`` (the job admission placed a request on; "" : any).

        Launchers with one endpoint ignore ``worker``; several Slurm jobs override this.
        """
        return await self.ready_endpoint(deadline)

    def describe(self, admin: bool = False) -> LauncherState:
        """JSON-able state for ``GET /backend/state`` (the ``backend_url`` only for admins)."""
        return {"kind": self.kind, "state": "ready"}

    def wait_message(self) -> str:
        """A sentence saying what a waiting request is waiting for (used in timeouts)."""
        return "the backend is not ready"

    async def control(self, action: str) -> LauncherState:
        """Admin actions ``start``/``stop``. Default: not supported."""
        raise ControlNotSupported(f"the {self.kind} backend has no '{action}' action")

    # -- used by the service -------------------------------------------------------------
    def note_activity(self) -> None:
        self.last_activity = time.monotonic()

    def inflight(self, key: str | None = None) -> int:
        if key is None:
            return sum(f.count for f in self._inflight.values())
        f = self._inflight.get(key)
        return f.count if f else 0

    async def wait_drained(self, key: str, timeout: float | None = None) -> bool:
        """Wait until no request is in flight on endpoint ``key``; True if drained."""
        f = self._inflight.get(key)
        if f is None or f.count == 0:
            return True
        try:
            await asyncio.wait_for(f.idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def running_models(self) -> list[dict[str, Any]] | None:
        """``/api/ps`` entries gathered by the launcher itself (several jobs); None: ask the endpoint."""
        return None

    def serving_url(self) -> str | None:
        """URL of a backend that serves right now, without starting anything (None: not ready)."""
        return None

    @contextlib.asynccontextmanager
    async def lease(
        self, deadline: float, activity: bool = True, worker: str = ""
    ) -> AsyncIterator[Endpoint]:
        """``activity=False`` for read-only probes (model lists): they keep no idle job alive.
        ``worker``: the job admission placed the request on (``Ticket.worker``)."""
        if activity:
            self.note_activity()
        endpoint = await self.endpoint_for(deadline, worker)
        f = self._inflight.setdefault(endpoint.key, _InFlight())
        f.count += 1
        f.idle.clear()
        try:
            yield endpoint
        finally:
            f.count -= 1
            if f.count == 0:
                f.idle.set()
            if activity:
                self.note_activity()
