"""Per-request telemetry: one :class:`RequestRecord` per answered request, fanned out to the
Prometheus metrics (:mod:`.metrics`), the per-user usage book (:mod:`.usage`) and the structured
access log (logger ``jupyter_llm_af.access``); hooks for the admission queue, Slurm jobs and backend
reachability; and the token-count extractors for what the backends send back.

Imports nothing from Jupyter or Tornado. The request pipeline does, per request::

    trace = telemetry.begin(route, api, user, groups, method)   # in-flight +1
    trace.model, trace.stream = model, stream
    trace.admitted(job_id=...)            # got its backend slot: queue wait ends, backend time starts
    reply.stream = traced_stream(trace, reply.stream, status)   # streamed: times the first byte,
                                          # sniffs usage, records when it ends or the client goes
    trace.body(reply.body); trace.finish(status)                # a document
    trace.finish(err.status, type(err).__name__)                # an error

or builds a :class:`RequestRecord` itself and calls :meth:`Telemetry.record`. Nothing here ever
sees a prompt, an answer's text or a credential, and nothing here may break a request: failures in
telemetry are logged and swallowed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .metrics import Metrics
from .usage import UsageBook

ACCESS_LOGGER = "jupyter_llm_af.access"
log = logging.getLogger("jupyter_llm_af")

# The API surfaces of a route; "service" = /backend/*, /queue, /usage, /metrics.
APIS = ("ollama", "openai", "anthropic", "service")


# -- token counts ------------------------------------------------------------------------------
@dataclass(slots=True)
class TokenUsage:
    """Token counts as the backend reported them (None: not reported)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def merge(self, other: TokenUsage | None) -> None:
        """Take ``other``'s reported counts (later events carry the final figures)."""
        if other is None:
            return
        if other.prompt_tokens is not None:
            self.prompt_tokens = other.prompt_tokens
        if other.completion_tokens is not None:
            self.completion_tokens = other.completion_tokens


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _pair(prompt: Any, completion: Any) -> TokenUsage | None:
    p, c = _count(prompt), _count(completion)
    return None if p is None and c is None else TokenUsage(p, c)


def usage_from_ollama(obj: Mapping[str, Any]) -> TokenUsage | None:
    """Ollama's final line (``done: true``) or whole answer: ``prompt_eval_count``/``eval_count``
    (``/api/embed`` has only the former)."""
    return _pair(obj.get("prompt_eval_count"), obj.get("eval_count"))


def usage_from_openai(obj: Mapping[str, Any]) -> TokenUsage | None:
    """An OpenAI answer or the last SSE chunk: ``usage.prompt_tokens``/``completion_tokens`` (the
    chunk that ``stream_options.include_usage`` adds; ``"usage": null`` elsewhere). Without usage,
    llama.cpp's own ``timings`` on the last chunk (prompt = cached + processed)."""
    usage = obj.get("usage")
    if isinstance(usage, Mapping):
        found = _pair(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if found is None:  # a Responses-shaped usage on an OpenAI route
            found = _pair(usage.get("input_tokens"), usage.get("output_tokens"))
        if found is not None:
            return found
    timings = obj.get("timings")
    if isinstance(timings, Mapping):
        processed, cached = _count(timings.get("prompt_n")), _count(timings.get("cache_n"))
        prompt = None if processed is None else processed + (cached or 0)
        return _pair(prompt, timings.get("predicted_n"))
    return None


def _anthropic_usage(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, Mapping):
        return None
    parts = [
        _count(usage.get(k))
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    prompt = None if parts[0] is None else sum(p or 0 for p in parts)
    return _pair(prompt, usage.get("output_tokens"))


def usage_from_anthropic(obj: Mapping[str, Any]) -> TokenUsage | None:
    """Anthropic Messages: ``message_start``'s ``message.usage.input_tokens``, ``message_delta``'s
    ``usage.output_tokens`` (cumulative), or a whole ``message``'s ``usage``. Cache reads and
    writes count as prompt tokens."""
    kind = obj.get("type")
    if kind == "message_start":
        message = obj.get("message")
        return _anthropic_usage(message.get("usage")) if isinstance(message, Mapping) else None
    if kind in ("message_delta", "message"):
        return _anthropic_usage(obj.get("usage"))
    return None


def usage_from_responses(obj: Mapping[str, Any]) -> TokenUsage | None:
    """OpenAI Responses: ``response.completed`` (or ``.incomplete``/``.failed``) carries
    ``response.usage`` {input_tokens, output_tokens}; a non-streamed answer is the response itself."""
    response = obj.get("response") if str(obj.get("type", "")).startswith("response.") else obj
    if not isinstance(response, Mapping):
        return None
    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        return None
    return _pair(usage.get("input_tokens"), usage.get("output_tokens"))


EXTRACTORS: dict[str, Callable[[Mapping[str, Any]], TokenUsage | None]] = {
    "ollama": usage_from_ollama,
    "openai": usage_from_openai,
    "anthropic": usage_from_anthropic,
    "responses": usage_from_responses,
}

# Byte strings that every line carrying usage contains (and few others do): only those lines are
# parsed, so a stream of token chunks costs one substring search per chunk.
_MARKERS: dict[str, tuple[bytes, ...]] = {
    "ollama": (b"eval_count",),
    "openai": (b"prompt_tokens", b"predicted_n"),
    "anthropic": (b'_tokens"',),
    "responses": (b"output_tokens",),
}
# A line longer than this (no newline yet) is not kept: usage lines are short, and a response
# event with the whole output in it stays far below.
MAX_LINE = 8 * 1024 * 1024
# A non-streamed answer is kept until its end to be parsed whole, up to this size (embeddings of
# a large batch are bigger, and are not worth parsing for a prompt count).
MAX_BODY = 32 * 1024 * 1024


def usage_api(api: str, route: str) -> str:
    """The extractor for a route: ``responses`` for ``/v1/responses``, else the route's API."""
    return "responses" if route.rstrip("/").endswith("/responses") else api


def usage_from_body(api: str, body: bytes) -> TokenUsage | None:
    """Counts in a non-streamed JSON answer (``api`` as for :func:`usage_api`)."""
    if not any(m in body for m in _MARKERS.get(api, ())):
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return EXTRACTORS[api](obj) if isinstance(obj, Mapping) else None


class StreamUsageSniffer:
    """Keeps the last token counts seen in a stream fed as raw byte chunks, split anywhere.

    ``api``: ``ollama``, ``openai``, ``anthropic``, ``responses``. ``framing``: ``ndjson``
    (Ollama's streams), ``sse`` (``data:`` lines; the others' streams), or ``json`` (a whole
    non-streamed answer, parsed once at :meth:`flush`). Default: the API's streaming framing.
    In the line framings only complete lines that contain a usage marker are parsed.
    """

    __slots__ = ("api", "framing", "usage", "_extract", "_markers", "_sse", "_tail")

    def __init__(self, api: str, framing: str | None = None):
        if api not in EXTRACTORS:
            raise ValueError(f"no usage extractor for api {api!r}")
        self.api = api
        self.framing = framing or ("ndjson" if api == "ollama" else "sse")
        if self.framing not in ("ndjson", "sse", "json"):
            raise ValueError(f"unknown framing {framing!r}")
        self.usage = TokenUsage()
        self._extract = EXTRACTORS[api]
        self._markers = _MARKERS[api]
        self._sse = self.framing == "sse"
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self.framing == "dropped":
            return
        if self.framing == "json":
            if len(self._tail) + len(chunk) <= MAX_BODY:
                self._tail += chunk
            else:
                self._tail.clear()
                self.framing = "dropped"  # too large to be worth parsing
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(self._tail) + len(chunk) <= MAX_LINE:
                self._tail += chunk
            else:
                self._tail.clear()
            return
        if self._tail:
            self._tail += chunk[:end]
            self._scan(self._tail, len(self._tail))
            self._tail = bytearray(chunk[end + 1 :])
        else:
            self._scan(chunk, end)
            if end + 1 < len(chunk):
                self._tail += chunk[end + 1 :]

    def flush(self) -> TokenUsage:
        """End of stream: a last line without a newline counts too. Returns the counts."""
        if self.framing == "json":
            self.usage.merge(usage_from_body(self.api, bytes(self._tail)))
            self._tail.clear()
        elif self._tail:
            self._scan(self._tail, len(self._tail))
            self._tail.clear()
        return self.usage

    def _scan(self, buf: bytes | bytearray, end: int) -> None:
        # only the lines around a marker are cut out and parsed (a read of a fast stream holds
        # ~100 lines, and the one with the counts is the last)
        starts: set[int] = set()
        for m in self._markers:
            at = buf.find(m, 0, end)
            while at >= 0:
                start = buf.rfind(b"\n", 0, at) + 1
                starts.add(start)
                stop = buf.find(b"\n", at, end)
                if stop < 0:
                    break
                at = buf.find(m, stop, end)
        for start in sorted(starts):
            stop = buf.find(b"\n", start, end)
            self._parse(bytes(buf[start : end if stop < 0 else stop]).strip())

    def _parse(self, line: bytes) -> None:
        if self._sse:
            if not line.startswith(b"data:"):
                return
            line = line[5:].strip()
        try:
            obj = json.loads(line)
        except ValueError:
            return
        if isinstance(obj, Mapping):
            self.usage.merge(self._extract(obj))


# -- the per-request record ----------------------------------------------------------------------
@dataclass(slots=True)
class RequestRecord:
    """One answered request. ``route`` is the route table's service path (``/api/chat``,
    ``/api/blobs/{}``), never the URL with its query. Times in seconds."""

    user: str
    route: str
    api: str  # ollama | openai | anthropic | service
    status: int
    groups: tuple[str, ...] = ()
    method: str = ""
    model: str = ""
    stream: bool = False
    queue_wait_s: float = 0.0  # from arrival until the backend took it (pending job + queue)
    backend_s: float = 0.0  # from admission until the answer ended
    duration_s: float = 0.0  # the whole request
    ttft_s: float | None = None  # from admission until the first byte of the answer
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    job_id: str | None = None  # Slurm job that served it
    error: str | None = None  # kind: the ServiceError class name, "client_gone", "upstream_broke"...
    ended_at: float = field(default_factory=time.time)  # wall clock


def _logfmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if type(value) is int:  # most fields: counts and statuses
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if not text or any(c in text for c in ' ="\\') or not text.isprintable():
        return json.dumps(text)
    return text


def access_fields(rec: RequestRecord) -> dict[str, Any]:
    """What the access log says about a request: no credentials, no prompts, no query strings."""
    return {
        "user": rec.user or None,
        "method": rec.method or None,
        "route": rec.route.split("?", 1)[0],
        "api": rec.api,
        "model": rec.model or None,
        "status": rec.status,
        "stream": rec.stream,
        "queue_wait": round(rec.queue_wait_s, 3),
        "backend": round(rec.backend_s, 3),
        "duration": round(rec.duration_s, 3),
        "ttft": None if rec.ttft_s is None else round(rec.ttft_s, 3),
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "job": rec.job_id,
        "error": rec.error,
    }


def format_access(rec: RequestRecord, style: str = "kv") -> str:
    """One access-log line: ``key=value`` pairs (logfmt), or one JSON object (``style="json"``)."""
    fields = access_fields(rec)
    if style == "json":
        return json.dumps(fields, separators=(",", ":"))
    return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class AccessLogFormatter(logging.Formatter):
    """``[A 2025-01-31 12:00:00.123 llm] user=alice route=/api/chat ...`` (Jupyter's log style)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        return f"[A {stamp}.{int(record.msecs):03d} llm] {record.getMessage()}"


# -- the fan-out ---------------------------------------------------------------------------------
class RequestTrace:
    """Clock of one request, from :meth:`Telemetry.begin` to :meth:`finish` (monotonic times)."""

    __slots__ = (
        "telemetry",
        "route",
        "api",
        "user",
        "groups",
        "method",
        "model",
        "stream",
        "job_id",
        "sniffer",
        "usage",
        "started",
        "admitted_at",
        "first_byte_at",
        "record",
    )

    def __init__(
        self, telemetry: Telemetry, route: str, api: str, user: str, groups: Sequence[str], method: str
    ):
        self.telemetry = telemetry
        self.route, self.api, self.user, self.groups, self.method = route, api, user, tuple(groups), method
        self.model = ""
        self.stream = False
        self.job_id: str | None = None
        self.usage = TokenUsage()
        self.sniffer: StreamUsageSniffer | None = None
        if api in EXTRACTORS:
            self.sniffer = StreamUsageSniffer(usage_api(api, route))
        self.started = time.monotonic()
        self.admitted_at: float | None = None
        self.first_byte_at: float | None = None
        self.record: RequestRecord | None = None

    def admitted(self, job_id: str | None = None) -> None:
        """The backend takes the request now (slot granted, endpoint known)."""
        self.admitted_at = time.monotonic()
        if job_id:
            self.job_id = job_id

    def first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()

    def body(self, body: bytes) -> None:
        """A non-streamed answer: take its counts."""
        if self.sniffer is not None:
            self.usage.merge(usage_from_body(self.sniffer.api, body))

    def finish(self, status: int, error: str | None = None) -> RequestRecord:
        """Record the request (once; later calls return the same record)."""
        if self.record is not None:
            return self.record
        now = time.monotonic()
        admitted = self.admitted_at
        if self.sniffer is not None:
            self.usage.merge(self.sniffer.flush())
        rec = RequestRecord(
            user=self.user,
            route=self.route,
            api=self.api,
            status=status,
            groups=self.groups,
            method=self.method,
            model=self.model,
            stream=self.stream,
            queue_wait_s=(admitted if admitted is not None else now) - self.started,
            backend_s=0.0 if admitted is None else now - admitted,
            duration_s=now - self.started,
            ttft_s=None if admitted is None or self.first_byte_at is None else self.first_byte_at - admitted,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            job_id=self.job_id,
            error=error,
        )
        self.record = rec
        self.telemetry._inflight(self.api, -1)
        self.telemetry.record(rec)
        return rec


async def traced_stream(
    trace: RequestTrace, stream: AsyncIterator[bytes], status: int = 200
) -> AsyncIterator[bytes]:
    """``stream`` as sent to the client, with its first byte timed and its usage sniffed; the
    request is recorded when the stream ends, fails, or is closed (client gone)."""
    sniffer = trace.sniffer
    if sniffer is not None and not trace.stream:
        # a whole JSON answer (pass-through replies are streamed even when the request was not):
        # parse it once at the end, for inference requests only (listings carry no counts)
        sniffer = trace.sniffer = StreamUsageSniffer(sniffer.api, "json") if trace.model else None
    error: str | None = None
    try:
        async for chunk in stream:
            if trace.first_byte_at is None:
                trace.first_byte()
            if sniffer is not None:
                sniffer.feed(chunk)
            yield chunk
    except GeneratorExit:
        error = "client_gone"
        raise
    except BaseException as e:
        error = "client_gone" if isinstance(e, asyncio.CancelledError) else type(e).__name__
        raise
    finally:
        trace.finish(status, error)


class Telemetry:
    """Metrics + usage + access log behind one call per request; built once per service."""

    def __init__(
        self,
        *,
        per_user: bool = False,
        groups: Sequence[str] = (),
        usage_log_file: str = "",
        access_log: bool = True,
        version: str = "",
        clock: Callable[[], float] = time.time,
    ):
        self.metrics = Metrics(per_user=per_user, groups=groups, version=version)
        self.usage = UsageBook(log_file=usage_log_file, clock=clock)
        self.access_log = access_log
        # where its lines go is the host's business: the standalone app and the Jupyter server
        # route the "jupyter_llm_af" loggers to their own handlers (or a site's logging_config)
        self.access_logger = logging.getLogger(ACCESS_LOGGER)
        self._clock = clock
        self._queues: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_config(cls, cfg: Any, version: str = "") -> Telemetry:
        """From the ``LLMService`` settings (``metrics_per_user``, ``metrics_groups``,
        ``usage_log_file``, ``access_log``)."""
        return cls(
            per_user=bool(getattr(cfg, "metrics_per_user", False)),
            groups=list(getattr(cfg, "metrics_groups", []) or []),
            usage_log_file=str(getattr(cfg, "usage_log_file", "") or ""),
            access_log=bool(getattr(cfg, "access_log", True)),
            version=version,
        )

    # -- per request ---------------------------------------------------------------------
    def begin(
        self, route: str, api: str, user: str, groups: Sequence[str] = (), method: str = ""
    ) -> RequestTrace:
        """Start timing a request (counts as in flight until its ``finish``)."""
        api = getattr(api, "value", api)  # routes.Api is a str Enum
        self._inflight(api, +1)
        return RequestTrace(self, route, api, user, groups, method)

    def record(self, rec: RequestRecord) -> None:
        """Metrics, usage (requests for a model by a known user) and one access-log line."""
        try:
            if type(rec.api) is not str:  # routes.Api is a str Enum: label with its value
                rec.api = str(getattr(rec.api, "value", rec.api))
            self.metrics.observe_request(rec)
            if rec.api != "service" and rec.user and rec.model:  # model requests, not listings
                self.usage.add(rec)
            if self.access_log:
                # the panel polls /backend/state and /queue: those GETs only at debug level
                quiet = rec.api == "service" and rec.method in ("GET", "HEAD") and rec.status < 400
                level = logging.DEBUG if quiet else logging.INFO
                if self.access_logger.isEnabledFor(level):  # a line nobody reads is not formatted
                    self.access_logger.log(level, "%s", format_access(rec))
        except Exception:  # telemetry never breaks a request
            log.exception("jupyter_llm_af: recording request telemetry failed")

    def _inflight(self, api: str, delta: int) -> None:
        try:
            self.metrics.inflight(api, delta)
        except Exception:
            log.exception("jupyter_llm_af: in-flight gauge failed")

    # -- hooks ---------------------------------------------------------------------------
    def queue_changed(self, model: str, waiting: int, running: int) -> None:
        """The admission queue now holds ``waiting`` requests for ``model`` and runs ``running``
        (absolute counts; ``model=""`` when the caller only knows totals)."""
        try:
            if waiting or running:
                self._queues[model] = (waiting, running)
            else:
                self._queues.pop(model, None)
            self.metrics.set_queue(model, waiting, running)
            total_w = sum(w for w, _ in self._queues.values())
            total_r = sum(r for _, r in self._queues.values())
            self.usage.queue_sample(total_w, total_r)
        except Exception:
            log.exception("jupyter_llm_af: queue telemetry failed")

    def queue_snapshot(self, models: Iterable[Mapping[str, Any]]) -> None:
        """All models at once, as ``Admission.models()`` lists them (``name``, ``waiting``,
        ``running``); models no longer listed drop to zero."""
        try:
            now = {
                str(m.get("name") or ""): (int(m.get("waiting") or 0), int(m.get("running") or 0))
                for m in models
            }
            for gone in set(self._queues) - set(now):
                self.metrics.set_queue(gone, 0, 0)
            self._queues = {k: v for k, v in now.items() if v != (0, 0)}
            for model, (waiting, running) in now.items():
                self.metrics.set_queue(model, waiting, running)
            self.usage.queue_sample(sum(w for w, _ in now.values()), sum(r for _, r in now.values()))
        except Exception:
            log.exception("jupyter_llm_af: queue telemetry failed")

    def slurm_event(self, event: str, **labels: Any) -> None:
        """A Slurm job event (see :meth:`.metrics.Metrics.slurm_event` for the events and labels)."""
        try:
            self.metrics.slurm_event(event, **labels)
        except Exception:
            log.exception("jupyter_llm_af: Slurm telemetry failed (%s)", event)

    def backend_reachable(self, reachable: bool) -> None:
        self.metrics.set_backend_reachable(reachable)

    # -- reading ------------------------------------------------------------------------
    def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    def close(self) -> None:
        self.usage.close()
