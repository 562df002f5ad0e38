"""Prometheus metrics of the service, in their own ``CollectorRegistry`` (never the process-wide
one, which Jupyter Server fills with its own series), rendered by :meth:`Metrics.render` for
``GET …/metrics``.

Imports nothing from Jupyter. Label values are bounded: a model name comes from a request body
and a route may be ``/{}``, so each label keeps at most a fixed number of distinct values and
folds the rest into ``other``. Per-user series exist only when a site opts in (``per_user``).

Series (all prefixed ``jupyter_llm_af_``):

=========================================  =========  ==========================================
``requests_total``                          counter    route, model, status_class, group[, user]
``request_errors_total``                    counter    route, kind
``request_duration_seconds``                histogram  route
``requests_in_flight``                      gauge      api
``queue_waiting`` / ``queue_running``       gauge      model
``queue_wait_seconds``                      histogram  model
``time_to_first_token_seconds``             histogram  model
``prompt_tokens_total``                     counter    model, group[, user]
``completion_tokens_total``                 counter    model, group[, user]
``backend_seconds_total``                   counter    model, group[, user]
``slurm_jobs``                              gauge      state (pending, running, ...)
``slurm_submissions_total``                 counter
``slurm_ready_total``                       counter
``slurm_handovers_total``                   counter
``slurm_releases_total``                    counter    reason
``slurm_failures_total``                    counter    kind
``slurm_pending_seconds``                   histogram
``slurm_startup_seconds``                   histogram
``backend_reachable``                       gauge
``info``                                    gauge      version
=========================================  =========  ==========================================
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from .telemetry import RequestRecord

PREFIX = "jupyter_llm_af_"
OTHER = "other"
NONE = "none"

WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
PENDING_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
STARTUP_BUCKETS = (1, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class BoundedLabel:
    """At most ``limit`` distinct values of one label; the rest read ``other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int):
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        text = (value or "")[:120] or NONE
        if text in self.seen:
            return text
        if len(self.seen) < self.limit:
            self.seen.add(text)
            return text
        return OTHER


class Metrics:
    def __init__(
        self,
        per_user: bool = False,
        groups: Sequence[str] = (),
        version: str = "",
        max_models: int = 64,
        max_users: int = 5000,
    ):
        self.per_user = per_user
        self.groups = list(groups)
        self.registry = CollectorRegistry(auto_describe=True)
        self._model = BoundedLabel(max_models)
        self._route = BoundedLabel(64)
        self._group = BoundedLabel(32)
        self._user = BoundedLabel(max_users)
        self._kind = BoundedLabel(32)
        self._reason = BoundedLabel(16)
        # label children by (series, values): ``labels()`` validates and locks on every call, and
        # each request touches up to eight series (the values are bounded, so is this)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._jobs: dict[str, str] = {}  # Slurm job id -> state (lower case)
        self._job_states: set[str] = set()
        who = ["group", "user"] if per_user else ["group"]
        r = self.registry

        self.requests = Counter(
            PREFIX + "requests",
            "Requests answered, by route, model, status class and user group.",
            ["route", "model", "status_class", *who],
            registry=r,
        )
        self.request_errors = Counter(
            PREFIX + "request_errors",
            "Requests that ended in an error, by route and kind.",
            ["route", "kind"],
            registry=r,
        )
        self.duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Whole request time, queue wait included.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            PREFIX + "requests_in_flight", "Requests being answered now.", ["api"], registry=r
        )
        for api in ("ollama", "openai", "anthropic", "service"):
            self.in_flight.labels(api).set(0)  # a dashboard shows 0, not "no data"
        self.queue_waiting = Gauge(
            PREFIX + "queue_waiting",
            "Requests waiting in the admission queue, by model.",
            ["model"],
            registry=r,
        )
        self.queue_running = Gauge(
            PREFIX + "queue_running", "Requests holding a backend slot, by model.", ["model"], registry=r
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "Time from arrival until the backend took the request (pending job and queue).",
            ["model"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time from admission to the backend until the first byte of the answer.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens, as the backend counted them.",
            ["model", *who],
            registry=r,
        )
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens",
            "Generated tokens, as the backend counted them.",
            ["model", *who],
            registry=r,
        )
        self.backend_seconds = Counter(
            PREFIX + "backend_seconds", "Time requests held a backend slot.", ["model", *who], registry=r
        )
        self.slurm_jobs = Gauge(
            PREFIX + "slurm_jobs", "The service's Slurm jobs by state.", ["state"], registry=r
        )
        self.slurm_submissions = Counter(
            PREFIX + "slurm_submissions", "Jobs submitted (sbatch accepted).", registry=r
        )
        self.slurm_ready = Counter(PREFIX + "slurm_ready", "Jobs whose backend became ready.", registry=r)
        self.slurm_handovers = Counter(
            PREFIX + "slurm_handovers",
            "Handovers from a job near its time limit to its successor.",
            registry=r,
        )
        self.slurm_releases = Counter(
            PREFIX + "slurm_releases",
            "Jobs the service let go (idle, stop, shutdown).",
            ["reason"],
            registry=r,
        )
        self.slurm_failures = Counter(
            PREFIX + "slurm_failures",
            "Slurm failures by kind (submit_rejected, job_failed, ...).",
            ["kind"],
            registry=r,
        )
        self.slurm_pending = Histogram(
            PREFIX + "slurm_pending_seconds",
            "Time jobs pended from submission until running.",
            buckets=PENDING_BUCKETS,
            registry=r,
        )
        self.slurm_startup = Histogram(
            PREFIX + "slurm_startup_seconds",
            "Time from a job running until its backend answered.",
            buckets=STARTUP_BUCKETS,
            registry=r,
        )
        self.reachable = Gauge(
            PREFIX + "backend_reachable", "1 when the backend answered its last probe, else 0.", registry=r
        )
        self.info = Gauge(PREFIX + "info", "Version of the service.", ["version"], registry=r)
        self.info.labels(version or "unknown").set(1)

    # -- labels --------------------------------------------------------------------------
    def group_label(self, groups: Sequence[str]) -> str:
        """The group a user's requests count under: the first of the site's ``metrics_groups`` the
        user is in (``other`` if none), or with no list the user's alphabetically first group."""
        if self.groups:
            mine = set(groups)
            return next((g for g in self.groups if g in mine), OTHER if groups else NONE)
        return self._group(min(groups)) if groups else NONE

    def _who(self, rec: RequestRecord) -> tuple[str, ...]:
        group = self.group_label(rec.groups)
        return (group, self._user(rec.user)) if self.per_user else (group,)

    def _child(self, series: Any, *values: str) -> Any:
        key = (id(series), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = series.labels(*values)
        return child

    # -- updates -------------------------------------------------------------------------
    def observe_request(self, rec: RequestRecord) -> None:
        route = self._route(rec.route.split("?", 1)[0])
        model = self._model(rec.model)
        who = self._who(rec)
        child = self._child
        child(self.requests, route, model, f"{rec.status // 100}xx", *who).inc()
        child(self.duration, route).observe(rec.duration_s)
        if rec.error or rec.status >= 400:
            child(self.request_errors, route, self._kind(rec.error or f"http_{rec.status}")).inc()
        if rec.api == "service":
            return
        if rec.backend_s or rec.queue_wait_s:
            child(self.queue_wait, model).observe(rec.queue_wait_s)
        if rec.backend_s:
            child(self.backend_seconds, model, *who).inc(rec.backend_s)
        if rec.ttft_s is not None:
            child(self.ttft, model).observe(rec.ttft_s)
        if rec.prompt_tokens:
            child(self.prompt_tokens, model, *who).inc(rec.prompt_tokens)
        if rec.completion_tokens:
            child(self.completion_tokens, model, *who).inc(rec.completion_tokens)

    def inflight(self, api: str, delta: int) -> None:
        self._child(self.in_flight, api).inc(delta)

    def set_queue(self, model: str, waiting: int, running: int) -> None:
        label = self._model(model or "all")
        self._child(self.queue_waiting, label).set(waiting)
        self._child(self.queue_running, label).set(running)

    def set_backend_reachable(self, reachable: bool) -> None:
        self.reachable.set(1 if reachable else 0)

    def slurm_event(self, event: str, **labels: Any) -> None:
        """Slurm job events, as the Slurm launcher sees them:

        * ``submitted`` (job_id): sbatch accepted a job (it pends)
        * ``state`` (job_id, state): squeue's state for a job (PENDING, RUNNING, COMPLETING, ...)
        * ``started`` (job_id, pending_s): the job runs, after pending that long
        * ``pending_s`` (seconds): a pending time on its own
        * ``ready`` (job_id, startup_s=None): its backend answers
        * ``handover`` (from_job, to_job): requests moved to the successor job
        * ``released`` (job_id, reason): the service let the job go (idle, stop, shutdown)
        * ``failed`` (kind, job_id=None): submit_rejected, job_failed, ready_timeout, ...
        * ``ended`` (job_id): the job is gone (finished, cancelled, time limit)
        """
        job = str(labels.get("job_id") or "")
        if event == "submitted":
            self.slurm_submissions.inc()
            if job:
                self._set_job(job, "pending")
        elif event == "state" and job:
            self._set_job(job, str(labels.get("state") or "unknown").lower())
        elif event == "started":
            if labels.get("pending_s") is not None:
                self.slurm_pending.observe(float(labels["pending_s"]))
            if job:
                self._set_job(job, "running")
        elif event == "pending_s":
            self.slurm_pending.observe(float(labels.get("seconds") or 0.0))
        elif event == "ready":
            self.slurm_ready.inc()
            if labels.get("startup_s") is not None:
                self.slurm_startup.observe(float(labels["startup_s"]))
        elif event == "handover":
            self.slurm_handovers.inc()
        elif event == "released":
            self.slurm_releases.labels(self._reason(str(labels.get("reason") or "unknown"))).inc()
            self._drop_job(job)
        elif event == "failed":
            self.slurm_failures.labels(self._kind(str(labels.get("kind") or "unknown"))).inc()
            self._drop_job(job)
        elif event == "ended":
            self._drop_job(job)
        else:
            raise ValueError(f"unknown Slurm event {event!r}")

    def _set_job(self, job: str, state: str) -> None:
        if len(self._jobs) >= 64 and job not in self._jobs:
            self._jobs.pop(next(iter(self._jobs)))  # the oldest: a job the service lost track of
        if state in (
            "completed",
            "cancelled",
            "failed",
            "timeout",
            "node_fail",
            "preempted",
            "out_of_memory",
        ):
            self._jobs.pop(job, None)
        else:
            self._jobs[job] = state
        self._publish_jobs()

    def _drop_job(self, job: str) -> None:
        if job and self._jobs.pop(job, None) is not None:
            self._publish_jobs()

    def _publish_jobs(self) -> None:
        counts: dict[str, int] = {}
        for state in self._jobs.values():
            counts[state] = counts.get(state, 0) + 1
        self._job_states |= set(counts)
        for state in self._job_states:
            self.slurm_jobs.labels(state).set(counts.get(state, 0))

    # -- reading -------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for ``GET …/metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_allowed(authorization: str, metrics_token: str, is_admin: bool) -> bool:
    """Who may read ``/metrics``: admins, or a request with ``Authorization: Bearer <metrics_token>``
    (when the site set one). Never anyone else."""
    if is_admin:
        return True
    if not metrics_token:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() in ("bearer", "token") and hmac.compare_digest(
        value.strip().encode(), metrics_token.encode()
    )
