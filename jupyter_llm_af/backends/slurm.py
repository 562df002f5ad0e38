"""Slurm launcher: the inference backend runs in a batch job submitted on demand.

Lifecycle (``describe()["state"]``, a :class:`~jupyter_llm_af.state.BackendState`)::

    idle → submitting → pending → starting → ready → renewing → (handover) → draining → ready …
                                                       ready → (idle_timeout) → idle
    failed   sbatch rejected, or the job ended before its backend answered (retry after submit_backoff)
    unknown  Slurm cannot be asked (controller down): keep serving while the backend answers

One asyncio task (the *poll loop*) owns every state change, so concurrent callers of
:meth:`SlurmBackend.ready_endpoint` can only express demand: exactly one job is submitted.
A job publishes ``{"host", "port"}`` in ``<state_dir>/endpoint-<jobid>.json``; the loop then
probes ``GET <ready_path>`` (``/`` for Ollama, ``/health`` for llama-server/vLLM) until it answers
200, before any request is sent to it. Before the job's time runs out (and while
users are active) a successor job is submitted; once it answers, the models loaded on the old
job are warmed on the new one, new leases go to the new job, and the old job is cancelled when
its in-flight requests are done.

The pure parts live beside this loop: sentences in ``slurm_messages``, the per-job record and
its JSON in ``slurm_jobs``, the state dir's files in ``slurm_files``, the batch script in
``slurm_script``, the settings in ``slurm_settings`` and the Slurm commands in ``slurm_cli``
(injectable: ``tests/resources/fake_slurm.py`` drives the decisions in milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ..errors import BackendUnavailable
from ..state import BackendState, JobDoc, LauncherState
from . import slurm_messages as msg
from .base import Backend, ControlNotSupported, Endpoint
from .slurm_cli import JobInfo, JobPhase, SlurmCLI, SlurmError, SlurmOps, SlurmSubmitError
from .slurm_files import StateDir
from .slurm_jobs import SlurmJob, job_doc
from .slurm_messages import human_duration
from .slurm_script import render_script
from .slurm_settings import MAX_PENDING_POLL_S, SlurmSettings

__all__ = ["SlurmBackend", "SlurmSettings", "human_duration"]

log = logging.getLogger(__name__)

FAST_POLL_S = 0.2  # right after submit and while the backend starts
UNKNOWN_POLL_S = 2.0  # scontrol ping while the controller is down
ESTIMATE_EVERY_S = 10.0  # squeue --start while pending without an estimate
PROBE_FAILURES_TO_UNREADY = 3


class SlurmBackend(Backend):
    """Runs the inference backend (``ollama serve`` by default) in a Slurm batch job.

    ``SlurmBackend(settings)`` or ``SlurmBackend(state_dir=..., job_name=..., ...)`` (the fields of
    :class:`SlurmSettings`); ``cli`` replaces the Slurm command line (a fake in unit tests).
    """

    kind = "slurm"

    def __init__(self, settings: SlurmSettings | None = None, *, cli: SlurmOps | None = None, **fields: Any):
        super().__init__()
        if settings is None:
            settings = SlurmSettings(**fields)
        elif fields:
            settings = dataclasses.replace(settings, **fields)
        self.settings = settings
        self.files = StateDir(settings.state_dir, settings.job_name)
        self.cli: SlurmOps = cli or SlurmCLI(settings.commands(), user=settings.user, env=settings.slurm_env)

        self._current: SlurmJob | None = None
        self._successor: SlurmJob | None = None
        self._draining: dict[str, SlurmJob] = {}
        self._submitting = False
        self._releasing = False
        self._waiters = 0
        self._start_requested = False
        self._adopted = False  # a listing succeeded once (adoption done): only then may we submit
        self._slurm_ok: bool | None = None
        self._slurm_error = ""
        self._last_error: str | None = None
        self._failed = False
        self._retry_not_before = 0.0  # monotonic: submit_backoff after a failure
        self._renew_not_before = 0.0
        self._failure_seq = 0  # bumped when waiting requests must give up (rejected sbatch, ...)
        self._failure_message = ""
        self._stop_seq = 0
        self._closed = False
        self._lock = asyncio.Lock()  # the poll loop, handover switch and admin stop
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._handover_task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self.submitted_job_ids: list[str] = []  # jobs this instance submitted (tests, benchmarks)
        # the service's telemetry (Telemetry.slurm_event): submitted, ready, handover, released, ...
        self.on_event: Callable[..., None] | None = None
        self.jobs_seen: dict[str, SlurmJob] = {}  # every job tracked, by id (events for benchmarks)
        # kept running whatever the demand (a fleet's slurm_min_jobs): never idle-released
        self.pinned = False

    # -- construction from the service's settings ----------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, runtime_dir: str | None = None, **overrides: Any) -> SlurmBackend:
        """Build from the ``LLMService`` settings (``cfg`` is the Configurable instance).

        ``runtime_dir`` (the Jupyter runtime dir) holds the state dir when ``slurm_state_dir`` is empty.
        """
        return cls(SlurmSettings.from_config(cfg, runtime_dir, **overrides))

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def job_name(self) -> str:
        return self.settings.job_name

    # -- Backend hooks -----------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            self.files.create()
        except OSError as e:  # say so on the first request; adoption still works
            self._last_error = msg.state_dir_unwritable(str(self.state_dir), e)
            log.error("Slurm: %s", self._last_error)
        self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        # adopt a job left by an earlier run before any request can ask for a new one
        async with self._lock:
            await self._tick()
        self._loop_task = asyncio.create_task(self._poll_loop(), name=f"slurm-poll-{self.job_name}")

    async def shutdown(self) -> None:
        self._closed = True
        self._notify()
        for task in (self._loop_task, self._handover_task):
            if task and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.settings.cancel_on_shutdown:
            jobs = self._tracked_jobs()
            if jobs:
                try:
                    await self.cli.cancel(*(j.id for j in jobs))
                    log.info("Slurm: cancelled job(s) %s on shutdown", ", ".join(j.id for j in jobs))
                except SlurmError as e:
                    log.warning("Slurm: could not cancel job(s) on shutdown: %s", e.stderr or e)
                for job in jobs:
                    await self._forget_files(job)
            self._current = self._successor = None
            self._draining.clear()
        if self._http:
            await self._http.aclose()
            self._http = None

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        """Endpoint of the ready job; submit one on demand and wait until ``deadline``.

        ``deadline`` is on the :func:`time.monotonic` clock.
        """
        endpoint = self._serving_endpoint()
        if endpoint:
            return endpoint
        if self._closed:
            raise BackendUnavailable(msg.SHUTTING_DOWN, retry_after=10)
        now = time.monotonic()
        if self._failed and self._current is None and now < self._retry_not_before:
            raise BackendUnavailable(
                msg.could_not_start(self._last_error),
                retry_after=max(1, min(60, math.ceil(self._retry_not_before - now))),
            )
        failure_seq, stop_seq = self._failure_seq, self._stop_seq
        self._waiters += 1
        try:
            while True:
                endpoint = self._serving_endpoint()
                if endpoint:
                    return endpoint
                if self._closed:
                    raise BackendUnavailable(msg.SHUTTING_DOWN, retry_after=10)
                if self._failure_seq != failure_seq:
                    raise BackendUnavailable(self._failure_message, retry_after=self._retry_after())
                if self._stop_seq != stop_seq:
                    raise BackendUnavailable(msg.STOPPED_BY_ADMIN, retry_after=30)
                if self._current is None:
                    self._wake.set()  # the loop may be sleeping long while idle
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BackendUnavailable(
                        msg.wait_limit_passed(self.wait_message()), retry_after=self._retry_after()
                    )
                changed = self._changed
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiters -= 1

    # base.Backend.describe still says dict[str, Any]; LauncherState is the contract (state.py)
    def describe(self, admin: bool = False) -> LauncherState:
        current = self._current
        reachable = self._slurm_ok is not False
        result: LauncherState = {
            "kind": self.kind,
            "state": self.state.value,
            "message": self.wait_message(),
            "job": job_doc(current, reachable) if current else None,
            "successor": job_doc(self._successor, reachable) if self._successor else None,
            "draining": sorted(self._draining),
            "idle_s": round(time.monotonic() - self.last_activity, 1),
            "inflight": self.inflight(),
            "last_error": self._last_error,
        }
        if admin:
            result["backend_url"] = current.url if current and current.ready else None
            result["job_name"] = self.job_name
            result["state_dir"] = str(self.state_dir)
        return result

    def wait_message(self) -> str:
        return msg.state_message(
            self.state,
            current=self._current,
            successor=self._successor,
            draining=list(self._draining),
            draining_busy=sum(self.inflight(k) for k in self._draining),
            releasing=self._releasing,
            last_error=self._last_error,
            slurm_error=self._slurm_error,
        )

    async def control(self, action: str) -> LauncherState:
        if action == "start":
            self.note_activity()  # the idle clock starts now
            if self._failed:
                self._retry_not_before = 0.0  # an admin asks explicitly: no backoff
            self._start_requested = True
            self._wake.set()
            return self.describe(admin=True)
        if action == "stop":
            async with self._lock:
                await self._release("stopped by an administrator")
                self._start_requested = False
                self._stop_seq += 1
                self._notify()
            return self.describe(admin=True)
        raise ControlNotSupported(f"the slurm backend has no '{action}' action")

    def _event(self, event: str, **labels: Any) -> None:
        """Tell ``on_event`` (the service's telemetry) what happened; never fails the loop."""
        if self.on_event is not None:
            try:
                self.on_event(event, **labels)
            except Exception:
                log.exception("Slurm: event hook failed (%s)", event)

    def endpoint_failed(self, endpoint: Endpoint) -> None:
        """The proxy could not reach ``endpoint``: check the job and its backend now, not at the next poll."""
        job = self.jobs_seen.get(endpoint.key)
        if job is not None:
            job.last_probe_mono = 0.0
        self._wake.set()

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> BackendState:
        cur = self._current
        if self._submitting and cur is None:
            return BackendState.SUBMITTING
        if self._slurm_ok is False and (cur is not None or self._wanted() or not self._adopted):
            return BackendState.UNKNOWN
        if cur is None:
            return BackendState.FAILED if self._failed else BackendState.IDLE
        if self._releasing:
            return BackendState.DRAINING
        if cur.ready:
            if self._successor is not None:
                return BackendState.RENEWING
            if any(self.inflight(k) for k in self._draining):
                return BackendState.DRAINING
            return BackendState.READY
        if cur.phase is JobPhase.PENDING:
            return BackendState.PENDING
        return BackendState.STARTING

    def serving_url(self) -> str | None:
        """URL of the job serving now (for model lists in /backend/state); never starts a job."""
        ep = self._serving_endpoint()
        return ep.url if ep else None

    def serving_endpoint(self) -> Endpoint | None:
        """The endpoint serving now (URL and the headers it needs); never starts a job."""
        return self._serving_endpoint()

    def _serving_endpoint(self) -> Endpoint | None:
        cur = self._current
        if cur and cur.ready and cur.phase is JobPhase.RUNNING and not self._releasing:
            return cur.endpoint()
        return None

    def _retry_after(self) -> int:
        cur = self._current
        if self._failed:
            return max(1, min(60, math.ceil(self._retry_not_before - time.monotonic())))
        if cur and cur.phase is JobPhase.PENDING:
            start = cur.expected_start()
            if start:
                wait = (start - datetime.now().astimezone()).total_seconds()
                return int(max(5, min(60, wait)))
            return 30
        return 10

    def job_docs(self) -> list[JobDoc]:
        """Every job this launcher tracks, with its role and the requests running on it."""
        reachable = self._slurm_ok is not False
        roles = [(self._current, "current"), (self._successor, "successor")]
        roles += [(j, "draining") for j in self._draining.values()]
        docs: list[JobDoc] = []
        for job, role in roles:
            if job is not None:
                doc = job_doc(job, reachable)
                doc["role"] = role
                doc["inflight"] = self.inflight(job.id)
                docs.append(doc)
        return docs

    @property
    def has_job(self) -> bool:
        """A job is submitted, pending, starting or serving (or sbatch runs)."""
        return self._submitting or bool(self._tracked_jobs())

    def request_start(self) -> None:
        """Submit a job now if there is none (a fleet scaling out); the idle clock starts now."""
        self.note_activity()
        self._start_requested = True
        self._wake.set()

    def _tracked_jobs(self) -> list[SlurmJob]:
        jobs = [j for j in (self._current, self._successor) if j is not None]
        return jobs + [j for j in self._draining.values() if j not in jobs]

    def _notify(self) -> None:
        """Wake everything waiting for a state change (waiters re-check their condition)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _fail_waiters(self, message: str) -> None:
        self._failure_message = message
        self._failure_seq += 1
        self._notify()

    # -- the poll loop -------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while not self._closed:
            try:
                async with self._lock:
                    interval = await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not stop the launcher; report it (once, not every poll)
                error = f"internal error: {e!r}"
                if error != self._last_error:
                    log.exception("Slurm launcher poll failed")
                self._last_error = error
                interval = MAX_PENDING_POLL_S
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, interval))

    def _wanted(self) -> bool:
        return self._waiters > 0 or self._start_requested or self.pinned

    async def _tick(self) -> float:
        """Ask Slurm, update every tracked job, decide; return seconds until the next tick."""
        if not (self._tracked_jobs() or self._wanted() or not self._adopted or self._slurm_ok is False):
            return 60.0  # nothing to watch: sleep until a request wakes us
        listing = await self._list_jobs()
        if listing is None:
            await self._tick_without_slurm()
            return UNKNOWN_POLL_S
        self._reconcile(listing)
        for job in self._tracked_jobs():
            await self._advance(job)
        self._promote_successor_if_current_lost()
        await self._decide()
        return self._next_interval()

    async def _list_jobs(self) -> dict[str, JobInfo] | None:
        if self._slurm_ok is False and not await self.cli.ping():
            return None  # squeue would block for MessageTimeout: ping is instant
        try:
            jobs = await self.cli.list_jobs(self.job_name)
        except SlurmError as e:
            if self._slurm_ok is not False:
                log.warning("Slurm: cannot list jobs: %s", e.stderr or e)
            self._slurm_ok = False
            self._slurm_error = e.stderr or e.message
            self._notify()
            return None
        if self._slurm_ok is False:
            log.info("Slurm: controller answers again")
        self._slurm_ok = True
        self._slurm_error = ""
        return {j.id: j for j in jobs}

    async def _tick_without_slurm(self) -> None:
        """Controller down: keep serving while the backend answers; never submit (duplicates)."""
        for job in self._tracked_jobs():
            if job.url and (job.ready or job.phase is JobPhase.RUNNING):
                await self._probe_and_update(job)
        self._notify()

    def _reconcile(self, listing: dict[str, JobInfo]) -> None:
        """Match Slurm's listing with the tracked jobs; adopt untracked ones into free slots."""
        for job in self._tracked_jobs():
            info = listing.pop(job.id, None)
            if info is None:
                job.phase = JobPhase.ENDED  # the listing succeeded and lacks it: it has ended
            else:
                job.info, job.phase = info, info.phase
        # left: jobs with our name we do not track (earlier run, sbatch timed out after submitting)
        candidates = sorted(
            (i for i in listing.values() if i.phase not in (JobPhase.ENDED, JobPhase.ENDING)),
            key=lambda i: (i.phase is not JobPhase.RUNNING, int(i.id.split("_")[0])),
        )
        for info in candidates:
            if self._current is None:
                self._current = self._adopt(info)
            elif self._successor is None:
                self._successor = self._adopt(info)
            else:
                log.warning("Slurm: job %s (%s) is not used by this service", info.id, info.state)
        self._adopted = True

    def _adopt(self, info: JobInfo) -> SlurmJob:
        log.info("Slurm: adopting job %s (%s)", info.id, info.state)
        job = SlurmJob(id=info.id, info=info, phase=info.phase, submitted_at=info.submit_time)
        job.mark("adopted")
        self.jobs_seen[job.id] = job
        return job

    async def _advance(self, job: SlurmJob) -> None:
        """Move one job along: endpoint file → probe → ready; handle its end and timeouts."""
        now = time.monotonic()
        if job.phase is JobPhase.ENDED:
            await self._job_ended(job)
            return
        if job.phase is not JobPhase.RUNNING and job.ready:
            job.ready = False  # ending, suspended, or requeued: no traffic
            self._notify()
        if job.phase is JobPhase.ENDING:
            return
        if job.phase is JobPhase.PENDING:
            if job.running_since is not None:  # requeued (node failure): it will publish a new endpoint
                log.warning("Slurm: job %s was requeued", job.id)
                job.running_since = job.url = None
                await self._remove_endpoint_file(job)
            if job.info and job.info.start_time:
                job.estimated_start = job.info.start_time
            elif now >= job.next_estimate_mono:
                job.next_estimate_mono = now + ESTIMATE_EVERY_S
                with contextlib.suppress(SlurmError):
                    job.estimated_start = await self.cli.estimated_start(job.id)
            return
        if job.phase is not JobPhase.RUNNING:
            return  # CONFIGURING, SUSPENDED: wait
        if job.running_since is None:
            job.running_since = now
            job.mark("running")
            self._notify()
        if not job.ready:
            await self._read_endpoint_file(job)  # re-read until ready: a requeued job rewrites it
        if job.url is not None:
            due = not job.ready or now - job.last_probe_mono >= self.settings.steady_poll
            if due:
                await self._probe_and_update(job)
        if not job.ready:
            since = job.unready_since or job.running_since
            if now - since > self.settings.backend_ready_timeout:
                await self._give_up_on(job, msg.not_answering(self.settings.backend_ready_timeout))

    async def _probe_and_update(self, job: SlurmJob) -> None:
        job.last_probe_mono = time.monotonic()
        ok = await self._probe(job)
        if ok:
            job.probe_failures = 0
            job.unready_since = None
            if not job.ready:
                job.ready = True
                job.mark("ready")
                log.info("Slurm: job %s ready at %s", job.id, job.url)
                startup = job.events["ready"] - job.events.get("submitted", job.events["ready"])
                self._event("ready", job_id=job.id, startup_s=startup)
                self._notify()
            return
        job.probe_failures += 1
        if job.ready and job.probe_failures >= PROBE_FAILURES_TO_UNREADY:
            log.warning("Slurm: job %s stopped answering at %s", job.id, job.url)
            self._event("failed", kind="backend_unreachable", job_id=job.id)
            job.ready = False
            job.unready_since = time.monotonic()
            self._notify()

    async def _probe(self, job: SlurmJob) -> bool:
        if self._http is None or not job.url:
            return False
        try:
            ready = job.url + self.settings.ready_path
            response = await self._http.get(ready, headers=job.headers(), timeout=self.settings.probe_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _read_endpoint_file(self, job: SlurmJob) -> None:
        record = await asyncio.to_thread(self.files.read_endpoint, job.id)  # a shared FS can stall
        if record is None:
            return  # not written yet (it is renamed into place, so never half-written)
        if record.gateway and job.secret is None:  # adopted: the job renamed the file to its id
            job.secret = await asyncio.to_thread(self.files.read_secret, job.id)
            if job.secret is None:
                if "no-secret" not in job.events:
                    log.warning("Slurm: job %s has a gateway but its secret file is gone", job.id)
                job.mark("no-secret")
                return  # its gateway would answer 401 to everything: never ready
        elif not record.gateway and self.settings.gateway and "no-gateway" not in job.events:
            log.warning(
                "Slurm: job %s runs without a gateway (a site batch script?): its port is open", job.id
            )
        if not record.gateway:
            job.mark("no-gateway")
        job.gateway = record.gateway
        job.host = record.host
        job.url = record.url
        job.mark("endpoint")

    async def _remove_endpoint_file(self, job: SlurmJob) -> None:
        """The endpoint only (a requeued job publishes a new one and keeps its secret)."""
        try:
            await asyncio.to_thread(self.files.remove_endpoint, job.id)
        except OSError as e:  # an unwritable state dir must not stop the loop
            log.warning("Slurm: cannot remove the endpoint file of job %s: %s", job.id, e)

    async def _forget_files(self, job: SlurmJob) -> None:
        """A job that ended or was cancelled: its endpoint and its secret go."""
        names = [job.id] + ([job.secret_nonce] if job.secret_nonce else [])
        try:
            await asyncio.to_thread(self.files.remove_endpoint, job.id)
            await asyncio.to_thread(self.files.remove_secret, *names)
        except OSError as e:
            log.warning("Slurm: cannot remove the files of job %s: %s", job.id, e)

    async def _job_ended(self, job: SlurmJob) -> None:
        was_ready = job.ready or "ready" in job.events
        job.ready = False
        job.mark("ended")
        self._event("ended", job_id=job.id)
        if not was_ready:
            self._event("failed", kind="job_failed", job_id=job.id)
        await self._forget_files(job)
        if job is self._current or job is self._successor:
            if was_ready:
                log.info("Slurm: job %s ended (%s)", job.id, await self._final_state(job))
            else:
                why = await self._ended_early_message(job)
                if job is self._current:
                    self._set_failed(why, fail_waiters=self._successor is None)
                else:
                    self._renew_not_before = time.monotonic() + self.settings.submit_backoff
                    self._last_error = f"Successor: {why}"
                    log.warning("Slurm: %s", self._last_error)
            if job is self._current:
                self._current = None
            else:
                self._successor = None
        self._draining.pop(job.id, None)
        self._notify()

    async def _final_state(self, job: SlurmJob) -> str:
        """TIMEOUT, CANCELLED, FAILED…: Slurm still lists ended jobs with ``-t all`` for a while."""
        with contextlib.suppress(SlurmError):
            for info in await self.cli.list_jobs(self.job_name, all_states=True):
                if info.id == job.id:
                    return info.state
        return "ended"

    async def _ended_early_message(self, job: SlurmJob) -> str:
        state = await self._final_state(job)
        tail = await asyncio.to_thread(self.files.output_tail, job.id)
        return msg.ended_early(job.id, state, tail)

    async def _give_up_on(self, job: SlurmJob, why: str) -> None:
        log.warning("Slurm: cancelling job %s: %s", job.id, why)
        with contextlib.suppress(SlurmError):
            await self.cli.cancel(job.id)
        tail = await asyncio.to_thread(self.files.output_tail, job.id)
        message = msg.with_output(f"Job {job.id}: {why}", tail)
        await self._forget_files(job)
        if job is self._current:
            self._current = None
            self._set_failed(message, fail_waiters=self._successor is None)
        elif job is self._successor:
            self._successor = None
            self._renew_not_before = time.monotonic() + self.settings.submit_backoff
            self._last_error = message
        self._notify()

    def _set_failed(self, message: str, fail_waiters: bool) -> None:
        log.warning("Slurm: %s", message)
        self._last_error = message
        if fail_waiters:
            self._failed = True
            self._retry_not_before = time.monotonic() + self.settings.submit_backoff
            self._start_requested = False
            self._fail_waiters(msg.could_not_start(message))

    def _promote_successor_if_current_lost(self) -> None:
        """The serving job ended before its successor was ready: requests wait for the successor."""
        if self._current is None and self._successor is not None:
            log.info("Slurm: job %s takes over (its predecessor ended)", self._successor.id)
            self._current, self._successor = self._successor, None
            self._notify()
        cur, nxt = self._current, self._successor
        if cur and nxt and nxt.ready and not cur.ready and cur.phase is JobPhase.ENDING:
            self._draining[cur.id] = cur
            self._current, self._successor = nxt, None
            self._notify()

    # -- decisions -------------------------------------------------------------------------------
    async def _decide(self) -> None:
        now = time.monotonic()
        cur = self._current
        if cur is None:
            if self._wanted() and now >= self._retry_not_before:
                await self._submit(successor=False)
            return
        self._start_requested = False  # an admin's "start" is satisfied by the job we have
        if self._successor is None and self._should_release(now):
            await self._release(f"no request for {self.settings.idle_timeout:g} s")
            return
        if self._successor is None and self._should_renew(cur, now):
            await self._submit(successor=True)
        nxt = self._successor
        if nxt and nxt.ready and (self._handover_task is None or self._handover_task.done()):
            self._handover_task = asyncio.create_task(self._handover(cur, nxt), name="slurm-handover")

    def _should_release(self, now: float) -> bool:
        idle_for = now - self.last_activity
        return not self._wanted() and self.inflight() == 0 and idle_for > self.settings.idle_timeout

    def _renew_window(self, job: SlurmJob) -> float:
        # at most half the time limit, so a fresh successor does not need a successor at once
        limit = job.info.time_limit_s if job.info else None
        if limit is None or math.isinf(limit):
            return self.settings.renew_before
        return min(self.settings.renew_before, limit / 2)

    def _should_renew(self, cur: SlurmJob, now: float) -> bool:
        if not cur.ready or cur.info is None or now < self._renew_not_before:
            return False
        left = cur.info.time_left_now()
        if left is None or math.isinf(left) or left >= self._renew_window(cur):
            return False
        active = self.pinned or self.inflight() > 0 or now - self.last_activity < self.settings.idle_timeout
        return active

    async def _submit(self, *, successor: bool) -> None:
        nonce = secret = None
        try:  # the job writes its endpoint and output there: no point submitting otherwise
            await asyncio.to_thread(self.files.check_writable)
            if self.settings.gateway:
                nonce, secret = await asyncio.to_thread(self.files.new_secret)
        except OSError as e:
            why = msg.state_dir_unwritable(str(self.state_dir), e)
            if successor:
                self._last_error = f"Successor: {why}"
                self._renew_not_before = time.monotonic() + self.settings.submit_backoff
                log.warning("Slurm: %s", self._last_error)
            else:
                self._set_failed(why, fail_waiters=True)
            return
        script = render_script(self.settings, str(self.files.secret_path(nonce)) if nonce else "")
        self._submitting = True
        self._notify()
        t_start = time.time()
        try:
            job_id = await self.cli.submit(script)
        except SlurmSubmitError as e:
            if nonce and not e.timed_out:  # a killed sbatch may have queued the job: it needs the file
                await asyncio.to_thread(self.files.remove_secret, nonce)
            detail = e.stderr or e.message
            if e.controller_unreachable:
                # not a rejection; a listing must succeed before we try again (no duplicates)
                self._slurm_ok = False
                self._slurm_error = detail
                self._last_error = msg.sbatch_unreachable(detail)
                self._retry_not_before = time.monotonic() + min(self.settings.submit_backoff, 5.0)
                log.warning("Slurm: %s", self._last_error)
            elif successor:
                self._last_error = msg.successor_rejected(detail)
                self._renew_not_before = time.monotonic() + self.settings.submit_backoff
                log.warning("Slurm: %s", self._last_error)
            else:
                self._set_failed(msg.sbatch_rejected(detail), fail_waiters=True)
            self._event("failed", kind="unreachable" if e.controller_unreachable else "submit_rejected")
            return
        except SlurmError as e:  # sbatch said something unparsable: it may have submitted
            self._last_error = f"sbatch: {e.message}"
            self._retry_not_before = time.monotonic() + self.settings.submit_backoff
            log.warning("Slurm: %s", self._last_error)
            return
        finally:
            self._submitting = False
            self._notify()
        job = SlurmJob(id=job_id, submitted_at=datetime.now().astimezone(), secret=secret, secret_nonce=nonce)
        job.events["submit_start"] = t_start
        job.mark("submitted")
        self._event("submitted", job_id=job_id)
        self.jobs_seen[job_id] = job
        self.submitted_job_ids.append(job_id)
        self._failed = False
        self._start_requested = False
        if successor:
            self._successor = job
            ending = self._current.id if self._current else "?"
            log.info("Slurm: submitted successor job %s (job %s ends soon)", job_id, ending)
        else:
            self._current = job
            log.info("Slurm: submitted job %s", job_id)
        self._notify()

    async def _release(self, why: str) -> None:
        """Cancel every job of this service → idle."""
        jobs = self._tracked_jobs()
        if not jobs:
            return
        self._releasing = True
        self._notify()
        try:
            log.info("Slurm: cancelling job(s) %s: %s", ", ".join(j.id for j in jobs), why)
            for j in jobs:
                self._event("released", job_id=j.id, reason=why.split(":")[0][:40])
            try:
                await self.cli.cancel(*(j.id for j in jobs))
            except SlurmError as e:
                self._last_error = f"scancel failed: {e.stderr or e.message}"
                log.warning("Slurm: %s", self._last_error)
                return  # keep tracking them; the next tick retries
            for job in jobs:
                job.ready = False
                job.mark("cancelled")
                await self._forget_files(job)
            self._current = self._successor = None
            self._draining.clear()
        finally:
            self._releasing = False
            self._notify()

    # -- successor handover ---------------------------------------------------------------------
    async def _handover(self, old: SlurmJob, new: SlurmJob) -> None:
        """Warm the new job with the old one's models, switch new leases, drain, cancel the old."""
        try:
            if old.ready and old.url and new.url:
                left = old.time_left()
                budget = self.settings.warm_timeout
                if left is not None and not math.isinf(left):
                    budget = min(budget, left - 5)  # the old job must still serve /api/ps
                if budget > 0:
                    await self._warm(old, new, budget)
            async with self._lock:
                if self._successor is new and self._current is old:
                    self._current, self._successor = new, None
                    self._draining[old.id] = old
                    new.mark("switched")
                    log.info("Slurm: job %s now serves; job %s drains", new.id, old.id)
                    self._event("handover", from_job=old.id, to_job=new.id)
                    self._notify()
                elif self._current is not new or old not in self._tracked_jobs():
                    return  # things moved on (old ended, stop, release): nothing to drain
            left = old.time_left()
            drain_timeout = None if left is None or math.isinf(left) else max(1.0, left + 30)
            await self.wait_drained(old.id, drain_timeout)
            async with self._lock:
                if old.id in self._draining:
                    with contextlib.suppress(SlurmError):
                        await self.cli.cancel(old.id)
                    old.mark("cancelled")
                    await self._forget_files(old)
                    self._draining.pop(old.id, None)
                    self._notify()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Slurm: handover from job %s to %s failed", old.id, new.id)

    async def _warm(self, old: SlurmJob, new: SlurmJob, budget: float) -> None:
        http = self._http
        assert http is not None and old.url and new.url
        try:
            response = await http.get(
                old.url + "/api/ps", headers=old.headers(), timeout=self.settings.probe_timeout
            )
            models = [m.get("model") or m.get("name") for m in response.json().get("models", [])]
        except (httpx.HTTPError, ValueError, AttributeError):
            return  # not an Ollama backend, or the old one is gone: nothing to warm
        models = [m for m in models if m]
        if not models:
            return
        new_url = new.url

        async def load(model: str) -> None:
            keep_alive = self.settings.warm_keep_alive
            body = {"model": model, "prompt": "", "keep_alive": keep_alive, "stream": False}
            with contextlib.suppress(httpx.HTTPError):
                await http.post(new_url + "/api/generate", json=body, headers=new.headers(), timeout=budget)

        log.info("Slurm: warming %s on the successor", ", ".join(models))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(load(m) for m in models)), budget)

    # -- batch script -------------------------------------------------------------------------------
    def render_script(self) -> str:
        return render_script(self.settings)

    # -- poll cadence -------------------------------------------------------------------------------
    def _next_interval(self) -> float:
        now = time.monotonic()
        cur = self._current
        if cur is None and not self._tracked_jobs():
            if self._wanted():
                return max(FAST_POLL_S, self._retry_not_before - now)
            return 60.0  # nothing to watch: a request wakes the loop
        intervals = [self.settings.steady_poll]
        for job in self._tracked_jobs():
            if job.phase is JobPhase.PENDING:
                # fast right after submit, then slower the longer it pends
                pending_for = now - job.submitted_mono
                intervals.append(min(self.settings.max_pending_poll, max(FAST_POLL_S, pending_for / 5)))
            elif not job.ready and job.phase in (JobPhase.RUNNING, JobPhase.STARTING):
                # fast while a quick backend comes up; a model loading for minutes needs no 5 Hz squeue
                since = now - (job.running_since or now)
                intervals.append(min(2.0, max(FAST_POLL_S, since / 10)))
            elif job.phase is JobPhase.ENDING:
                intervals.append(1.0)
        if cur is not None:
            # wake up in time for the idle release and for the renewal
            intervals.append(max(FAST_POLL_S, self.last_activity + self.settings.idle_timeout - now + 0.05))
            if cur.ready and cur.info and self._successor is None:
                left = cur.info.time_left_now()
                if left is not None and not math.isinf(left):
                    intervals.append(max(FAST_POLL_S, left - self._renew_window(cur) + 0.05))
        return min(intervals)
