"""The request pipeline: from (route, caller, body) to a reply, with no web framework in sight.

Imports nothing from Jupyter or Tornado. The handler layer authenticates, reads the body, calls
:meth:`Pipeline.handle` and writes the :class:`Reply` (a document, or a stream of bytes); every
failure is a :class:`~jupyter_llm_af.errors.ServiceError` that the handler renders in the route's
API format. An inference request goes through these steps::

    parse + validate body → model fit → admission slot → backend lease → native or translated
    (a failure before the first byte: retried on a fresh connection / the next endpoint)

A streamed reply owns its admission slot, its backend lease and its backend response until the
stream is closed (fully read, or closed by the handler when the client goes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .apis import anthropic, responses
from .backends.base import Endpoint
from .errors import (
    BackendRejected,
    BadRequest,
    Forbidden,
    NotFound,
    NotSupported,
    ServiceError,
    UpstreamError,
    backend_error_text,
    backend_failure_status,
    error_body,
    stream_error_chunk,
)
from .forwarding import BackendBroke, BackendResponse, response_headers
from .metrics import metrics_allowed
from .routes import Api, Kind, Route, backend_target
from .translate import BackendModel
from .usage import usage_answer

if TYPE_CHECKING:
    from .service import LLMCore
    from .telemetry import RequestTrace

# What /api/version says when the backend is not Ollama: the Ollama API level the service offers
# (Responses since 0.13.3, Messages since 0.14; Codex --oss wants at least 0.13.4).
REPORTED_OLLAMA_VERSION = "0.14.0"
# Routes a backend may lack that can be translated onto /v1/chat/completions.
_CHAT_SHAPED = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/responses"})
# Deepest JSON nesting accepted in a request body (tool schemas nest; attacks nest far more).
MAX_JSON_DEPTH = 64
# Attempts to reach a backend before the first byte of an answer (then a clear error).
MAX_ATTEMPTS = 6


@dataclass(frozen=True)
class Identity:
    user: str
    admin: bool = False
    groups: tuple[str, ...] = ()


@dataclass
class Request:
    route: Route
    method: str
    identity: Identity
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    arg: str | None = None  # the route's one parameter (model id, blob digest, action)
    query: Mapping[str, str] = field(default_factory=dict)  # /usage only (since, until, days, user)
    trace: RequestTrace | None = None  # telemetry of this request (timings, model, job)
    worker: str = ""  # the backend job admission placed it on ("" : the launcher chooses)

    @property
    def service_path(self) -> str:
        return self.route.service_path(self.arg)


@dataclass
class Reply:
    """A JSON/text document (``body``) or a stream (``stream``: close it when done)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    queue_position: int = 0  # where the request was when it had to wait (0: no wait)


def json_reply(doc: Any, status: int = 200) -> Reply:
    return Reply(status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(doc).encode())


def parse_body(raw: bytes) -> dict[str, Any]:
    """A JSON object, or BadRequest with a sentence (never RecursionError/UnicodeError)."""
    if not raw:
        raise BadRequest("request body is required (JSON)")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"invalid JSON in request body: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    if _depth(doc) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth without recursion (a hostile body must not blow the stack)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest = d
            if d > MAX_JSON_DEPTH:
                return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node if isinstance(v, (dict, list)))
    return deepest


_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "model": (str, "a string"),
    "stream": (bool, "true or false"),
    "options": (dict, "an object"),
    "messages": (list, "an array"),
    "tools": (list, "an array"),
    "keep_alive": ((str, int, float), "a duration string or a number of seconds"),
}


def validate_common(body: dict[str, Any]) -> None:
    """Types every API agrees on, checked before anything reaches a backend."""
    for key, (typ, words) in _TYPES.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, typ) or isinstance(value, bool) and typ is not bool):
            raise BadRequest(f"'{key}' must be {words}", param=key)
    for key in ("messages",):
        for i, msg in enumerate(body.get(key) or []):
            if not isinstance(msg, dict):
                raise BadRequest(f"'{key}[{i}]' must be an object", param=key)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("-")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def apply_model_defaults(route: Route, body: dict[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Fill in a model's generation defaults (``max_tokens``, ``stop``) where the request has none,
    in the API's own field names. True if the body changed."""
    wanted = defaults.get(body.get("model") or "")
    if not isinstance(wanted, Mapping) or route.path in ("/api/embed", "/api/embeddings", "/v1/embeddings"):
        return False
    changed = False
    if route.api is Api.OLLAMA:
        options = body.setdefault("options", {})
        for ours, theirs in (("max_tokens", "num_predict"), ("stop", "stop")):
            if ours in wanted and options.get(theirs) is None:
                options[theirs] = wanted[ours]
                changed = True
        return _cap_output(route, body, wanted.get("max_tokens_cap")) or changed
    names = {
        Api.OPENAI: {"max_tokens": "max_tokens", "stop": "stop"},
        Api.ANTHROPIC: {"stop": "stop_sequences"},
    }.get(route.api, {})
    if route.path == "/v1/responses":
        names = {"max_tokens": "max_output_tokens"}
    for ours, theirs in names.items():
        if (
            ours in wanted
            and body.get(theirs) is None
            and not (theirs == "max_tokens" and body.get("max_completion_tokens") is not None)
        ):
            body[theirs] = wanted[ours]
            changed = True
    return _cap_output(route, body, wanted.get("max_tokens_cap")) or changed


def _cap_output(route: Route, body: dict[str, Any], cap: Any) -> bool:
    """Clamp the requested output length to ``cap`` (agents ask for 32000 tokens; a small model
    that never stops would hold its slot for minutes). True if the body changed."""
    if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
        return False
    if route.api is Api.OLLAMA:
        options = body.setdefault("options", {})
        current = options.get("num_predict")
        if not isinstance(current, int) or current < 0 or current > cap:
            options["num_predict"] = cap
            return True
        return False
    fields = (
        ["max_output_tokens"] if route.path == "/v1/responses" else ["max_tokens", "max_completion_tokens"]
    )
    changed = False
    for name in fields:
        current = body.get(name)
        if isinstance(current, int) and current > cap:
            body[name] = cap
            changed = True
    if not any(isinstance(body.get(n), int) for n in fields):
        body[fields[0]] = cap
        changed = True
    return changed


class Pipeline:
    """One per service; stateless apart from what the core holds."""

    def __init__(self, core: LLMCore):
        self.core = core
        self._queue_reported = 0.0
        self._steps: dict[Kind, Callable[[Request], Awaitable[Reply]]] = {
            Kind.ROOT: self._root,
            Kind.VERSION: self._version,
            Kind.READ: self._read,
            Kind.SHOW: self._show,
            Kind.INFERENCE: self._inference,
            Kind.MANAGE: self._manage,
            Kind.STATE: self._state,
            Kind.CONTROL: self._control,
            Kind.QUEUE: self._queue,
            Kind.USAGE: self._usage,
            Kind.METRICS: self._metrics,
        }

    def _queue_changed(self, force: bool = False) -> None:
        """Tell telemetry the queue's per-model figures, at most twice a second: they are read
        again at every scrape and /usage, and the hot path should not pay for each request."""
        now = time.monotonic()
        if force or now - self._queue_reported >= 0.5:
            self._queue_reported = now
            self.core.telemetry.queue_snapshot(self.core.admission.models())

    async def handle(self, req: Request) -> Reply:
        if req.route.admin_only and not req.identity.admin and req.route.kind is not Kind.MANAGE:
            raise Forbidden(f"{req.service_path} is restricted to admins of this service")
        return await self._steps[req.route.kind](req)

    # -- simple steps ------------------------------------------------------------------------
    async def _root(self, req: Request) -> Reply:
        return Reply(200, {"Content-Type": "text/plain; charset=utf-8"}, b"Ollama is running")

    async def _version(self, req: Request) -> Reply:
        """The backend's own version when it is an Ollama at least as new as the API level this
        service offers (it translates what an older one lacks), else that level."""
        core = self.core
        version = REPORTED_OLLAMA_VERSION
        url = core.backend.serving_url()
        if core.protocol == "ollama" and url is not None:
            with contextlib.suppress(ServiceError, ValueError, TypeError):
                doc = await core.upstream.get_json(url, "/api/version", timeout=10)
                theirs = str(doc.get("version", "")) if isinstance(doc, dict) else ""
                if _version_tuple(theirs) > _version_tuple(version):
                    version = theirs
        return json_reply({"version": version})

    async def _state(self, req: Request) -> Reply:
        core = self.core
        if core.relay:
            return await self._relay(req)
        return json_reply(await core.state(req.identity.user, req.identity.admin))

    async def _queue(self, req: Request) -> Reply:
        if self.core.relay:
            return await self._relay(req)
        return json_reply(self.core.admission.snapshot(req.identity.user, req.identity.admin))

    async def _control(self, req: Request) -> Reply:
        core, action = self.core, req.arg or ""
        if core.relay:  # the shared service decides who is an admin
            return await self._relay(req)
        if not req.identity.admin:
            raise Forbidden(
                f"only admins of this service may {action} the backend ({req.identity.user} is not)"
            )
        result = await core.backend.control(action)
        return json_reply({"action": action, "state": result})

    async def _usage(self, req: Request) -> Reply:
        if self.core.relay:
            return await self._relay(req)
        ident = req.identity
        self._queue_changed(force=True)
        return json_reply(usage_answer(self.core.telemetry.usage, ident.user, ident.admin, req.query))

    async def _metrics(self, req: Request) -> Reply:
        core = self.core
        authorization = req.headers.get("Authorization", "")
        if not metrics_allowed(authorization, core.cfg.metrics_token, req.identity.admin):
            raise Forbidden("/metrics is for admins of this service and the metrics token")
        # gauges read at scrape time (launchers and the queue also report as things change)
        self._queue_changed(force=True)
        core.telemetry.backend_reachable(core.backend.serving_url() is not None)
        body, ctype = core.telemetry.render_metrics()
        return Reply(200, {"Content-Type": ctype}, body)

    async def _relay(self, req: Request) -> Reply:
        status, doc = await self.core.relay_json(req.method, req.service_path)
        if isinstance(doc, dict) and req.route.kind is Kind.STATE:
            doc["relay"] = True  # this server relays to one shared service
        return json_reply(doc, status)

    # -- listings ----------------------------------------------------------------------------
    async def _read(self, req: Request) -> Reply:
        """Model lists never start a GPU job nor keep one alive: with no backend serving they are
        answered from what the last backend said (``/api/ps``: nothing is loaded)."""
        core = self.core
        if backend_target(req.route, req.arg) is None:
            raise NotFound(f"The model '{req.arg}' does not exist", code="model_not_found", param="model")
        if core.backend.serving_url() is None:
            cached = core.catalogue.listing(req.service_path)
            if req.service_path == "/api/ps":
                return json_reply({"models": []})
            if cached is not None:
                return json_reply(cached)
            # never seen a backend: the first listing starts one, like any request
        elif req.service_path == "/api/ps":
            models = await core.backend.running_models()  # several jobs: what each one holds
            if models is not None:
                return json_reply({"models": models})
        return await self._leased(req, activity=False)

    async def _show(self, req: Request) -> Reply:
        body = parse_body(req.body)
        validate_common(body)
        return await self._leased(req, body, activity=False)

    # -- inference ---------------------------------------------------------------------------
    async def _inference(self, req: Request) -> Reply:
        core = self.core
        body = parse_body(req.body)
        validate_common(body)
        model = body.get("model") or ""
        if model:
            fit_error = core.model_fit_error(model)
            if fit_error:
                raise BadRequest(fit_error, param="model", code="model_too_large")
        if apply_model_defaults(req.route, body, core.cfg.model_defaults):
            req.body = json.dumps(body).encode()
        stream = req.route.is_stream(body)
        if req.trace is not None:
            req.trace.model, req.trace.stream = str(model), stream
        deadline = time.monotonic() + core.cfg.max_wait
        stack = contextlib.AsyncExitStack()
        try:
            ticket = await stack.enter_async_context(
                core.admission.slot(req.identity.user, str(model), deadline, stream)
            )
            req.worker = ticket.worker
            self._queue_changed()
            stack.callback(self._queue_changed)
            reply = await self._to_backend(req, body, deadline, stack, activity=True)
        except BaseException:
            await stack.aclose()
            raise
        reply.queue_position = ticket.position_at_start
        return await _owning(reply, stack)

    async def _manage(self, req: Request) -> Reply:
        core = self.core
        if not core.cfg.allow_model_management:
            raise Forbidden(
                f"{req.route.path} is disabled on this service: models are managed by the site. An admin "
                "can enable it with c.LLMService.allow_model_management = True."
            )
        if not req.identity.admin:
            raise Forbidden(f"{req.route.path} is restricted to admins of this service")
        if backend_target(req.route, req.arg) is None:
            raise BadRequest("invalid blob digest")
        if core.protocol == "openai":
            raise NotSupported(
                f"{req.route.path} is not supported by this backend (an OpenAI-compatible server)"
            )
        return await self._leased(req, activity=True)

    async def _leased(self, req: Request, body: dict[str, Any] | None = None, activity: bool = True) -> Reply:
        """A request without an admission slot (listings, show, management)."""
        deadline = time.monotonic() + self.core.cfg.max_wait
        stack = contextlib.AsyncExitStack()
        try:
            reply = await self._to_backend(req, body, deadline, stack, activity=activity)
        except BaseException:
            await stack.aclose()
            raise
        return await _owning(reply, stack)

    async def _to_backend(
        self,
        req: Request,
        body: dict[str, Any] | None,
        deadline: float,
        stack: contextlib.AsyncExitStack,
        activity: bool,
    ) -> Reply:
        """Lease an endpoint and send; a failure before the first byte is retried (a fresh
        connection, or the next endpoint once the launcher has noticed a dead one)."""
        core = self.core
        delay = 0.05
        for attempt in range(1, MAX_ATTEMPTS + 1):
            attempt_stack = contextlib.AsyncExitStack()
            try:
                endpoint = await attempt_stack.enter_async_context(
                    core.backend.lease(deadline, activity, worker=req.worker)
                )
                core.upstream.remember_endpoint(endpoint.url, endpoint_headers(endpoint))
                if req.trace is not None:
                    req.trace.admitted(endpoint.key if core.backend.kind == "slurm" else None)
                reply = await self._send(req, body, endpoint, attempt_stack)
            except UpstreamError as e:
                await attempt_stack.aclose()
                failed = getattr(core.backend, "endpoint_failed", None)
                if failed is not None and e.retryable:
                    failed(endpoint)  # let the launcher re-check its job now, not at its next poll
                if not e.retryable or attempt == MAX_ATTEMPTS or time.monotonic() + delay > deadline:
                    raise
                core.log.info("backend request failed before the first byte (%s); retrying", e.message)
                await asyncio.sleep(delay)
                delay = min(delay * 3, 2.0)
                continue
            except BaseException:
                await attempt_stack.aclose()
                raise
            stack.push_async_callback(attempt_stack.aclose)
            return reply
        raise AssertionError("unreachable")

    async def _send(
        self, req: Request, body: dict[str, Any] | None, endpoint: Endpoint, stack: contextlib.AsyncExitStack
    ) -> Reply:
        core = self.core
        api = req.route.api
        if core.protocol == "openai" and api is Api.OLLAMA:
            return await self._translated_ollama(req, body or {}, endpoint.url)
        if core.protocol == "openai" and req.route.kind is Kind.READ:
            return await self._openai_listing(req, endpoint.url)
        if req.route.path in _CHAT_SHAPED and (
            req.route.path in core.translate_routes or not await self._serves(endpoint, req.route.path)
        ):
            return await self._over_chat(req, body or {}, endpoint, stack)
        rename = None
        if core.protocol == "openai" and api is not Api.OLLAMA and body and body.get("model"):
            m = await self._check_openai_model(endpoint.url, body["model"])
            if m.backend_id != m.name:  # answers carry the name the user knows, not the router's id
                rename = Rename(m.backend_id, m.name)
        return await self._pass_through(req, endpoint, stack, rename)

    # -- native pass-through -----------------------------------------------------------------
    async def _pass_through(
        self,
        req: Request,
        endpoint: Endpoint,
        stack: contextlib.AsyncExitStack,
        rename: Rename | None = None,
    ) -> Reply:
        core = self.core
        target = backend_target(req.route, req.arg)
        if target is None:  # the route table only sends allowed paths; belt and braces
            raise NotFound(f"unknown path {req.service_path}")
        raw = req.body if req.method in ("POST", "PUT", "DELETE") else None
        resp = await stack.enter_async_context(
            core.upstream.stream(
                req.method, endpoint.url, target, raw, req.headers, endpoint_headers(endpoint)
            )
        )
        headers = response_headers(resp.headers)
        if resp.status >= 400:
            raise await _backend_error(resp, req.route.api)
        if req.route.cached and req.method == "GET":
            data = await _read_all(resp)
            with contextlib.suppress(ValueError, RecursionError):
                doc = json.loads(data)
                core.catalogue.remember(req.service_path, doc)
                if core.catalogue.notes and req.route.path == "/api/tags":
                    data = json.dumps(core.catalogue.annotate(doc)).encode()
            return Reply(resp.status, headers, data)
        if rename is not None:
            return Reply(resp.status, headers, stream=rename.lines(_relay_stream(resp, req.route.api)))
        return Reply(resp.status, headers, stream=_relay_stream(resp, req.route.api))

    async def _check_openai_model(self, base_url: str, model: Any) -> BackendModel:
        try:
            return await self.core.translator.resolve(base_url, model)
        except ServiceError as e:
            if e.status == 404:
                raise NotFound(
                    f"The model '{model}' does not exist", param="model", code="model_not_found"
                ) from None
            raise

    async def _openai_listing(self, req: Request, base_url: str) -> Reply:
        """/v1/models from an OpenAI-protocol backend, under the names /api/tags uses (a user
        copies a name from one listing into the other API)."""
        tr = self.core.translator
        models = await tr.models(base_url, fresh=True)
        entries = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "jupyter_llm_af"} for m in models
        ]
        if req.arg is None:
            doc: dict[str, Any] = {"object": "list", "data": entries}
            self.core.catalogue.remember(req.service_path, doc)
            return json_reply(doc)
        for m, entry in zip(models, entries, strict=True):
            if req.arg in (m.name, m.backend_id):
                return json_reply(entry)
        raise NotFound(f"The model '{req.arg}' does not exist", param="model", code="model_not_found")

    # -- Anthropic Messages and OpenAI Responses over chat completions --------------------------
    async def _serves(self, endpoint: Endpoint, path: str) -> bool:
        """Whether the backend at ``endpoint`` has ``path`` itself: asked once (an empty POST:
        a route it lacks answers 404/405, one it has rejects the body), then remembered."""
        known = self.core.capabilities.setdefault(endpoint.url, {})
        if path not in known:
            async with self.core.upstream.stream(
                "POST",
                endpoint.url,
                path,
                b"{}",
                {"content-type": "application/json"},
                endpoint_headers(endpoint),
            ) as resp:
                text = (await resp.read())[:2000].decode(errors="replace").lower()
                # "model '' not found" is a route that exists and wants a model
                known[path] = resp.status not in (404, 405, 501) or "model" in text
            self.core.log.info(
                "backend at %s %s %s natively", endpoint.url, "serves" if known[path] else "lacks", path
            )
        return known[path]

    async def _over_chat(
        self, req: Request, body: dict[str, Any], endpoint: Endpoint, stack: contextlib.AsyncExitStack
    ) -> Reply:
        """A backend without /v1/messages or /v1/responses: the request translated onto its
        /v1/chat/completions, the answer (or stream) translated back."""
        core, path = self.core, req.route.path
        if path == "/v1/messages/count_tokens":
            return json_reply({"input_tokens": anthropic.estimate_input_tokens(body)})
        if not await self._serves(endpoint, "/v1/chat/completions"):
            raise NotSupported(
                f"the backend serves neither {path} nor /v1/chat/completions to translate it onto"
            )
        chat: dict[str, Any] = dict(
            anthropic.messages_to_chat(body) if path == "/v1/messages" else responses.responses_to_chat(body)
        )
        name = str(body.get("model") or "")
        if core.protocol == "openai":
            chat["model"] = (await self._check_openai_model(endpoint.url, name)).backend_id
        resp = await stack.enter_async_context(
            core.upstream.stream(
                "POST",
                endpoint.url,
                "/v1/chat/completions",
                json.dumps(chat).encode(),
                {"content-type": "application/json"},
                endpoint_headers(endpoint),
            )
        )
        if resp.status >= 400:
            raise await _backend_error(resp, req.route.api)
        if not chat.get("stream"):
            try:
                doc = json.loads(await _read_all(resp))
            except ValueError:
                raise UpstreamError("the backend's answer was not JSON") from None
            if path == "/v1/messages":
                return json_reply(anthropic.chat_to_message(doc, name))
            return json_reply(responses.chat_to_response(doc, body))
        conv: anthropic.MessagesStream | responses.ResponsesStream
        if path == "/v1/messages":
            conv = anthropic.MessagesStream(name, anthropic.estimate_input_tokens(body))
        else:
            conv = responses.ResponsesStream(body)
        return Reply(200, {"Content-Type": "text/event-stream"}, stream=_converted_sse(resp, conv))

    # -- Ollama's API over an OpenAI backend ---------------------------------------------------
    async def _translated_ollama(self, req: Request, body: dict[str, Any], base_url: str) -> Reply:
        tr = self.core.translator
        path = req.route.path
        if path == "/api/tags":
            tags = await tr.tags(base_url)
            self.core.catalogue.remember(path, tags)
            return json_reply(self.core.catalogue.annotate(tags))
        if path == "/api/ps":
            return json_reply(await tr.ps(base_url))
        if path == "/api/version":
            return json_reply({"version": REPORTED_OLLAMA_VERSION})
        if path == "/api/show":
            shown = await tr.show(base_url, body)
            note = self.core.catalogue.notes.get(str(body.get("model") or body.get("name") or ""))
            if note:
                shown["note"] = note
            return json_reply(shown)
        if path in ("/api/embed", "/api/embeddings"):
            return json_reply(await tr.embed(base_url, body, legacy=path == "/api/embeddings"))
        if path in ("/api/chat", "/api/generate"):
            fn = tr.chat if path == "/api/chat" else tr.generate
            streaming, result = await fn(base_url, body)
            if not streaming or isinstance(result, dict):
                return json_reply(result)
            return Reply(200, {"Content-Type": "application/x-ndjson"}, stream=_ndjson(result))
        raise NotFound(f"unknown path {path}")


# -- helpers --------------------------------------------------------------------------------
def endpoint_headers(endpoint: Endpoint) -> Mapping[str, str]:
    """Headers a launcher attaches to its endpoint (e.g. a per-job gateway secret)."""
    return getattr(endpoint, "headers", None) or {}


async def _owning(reply: Reply, stack: contextlib.AsyncExitStack) -> Reply:
    """Tie what the request holds (slot, lease, backend response) to the reply's lifetime: a
    document is complete, so release now; a stream releases when it is closed."""
    if reply.stream is None:
        await stack.aclose()
        return reply
    inner = reply.stream

    async def owned() -> AsyncIterator[bytes]:
        try:
            async for chunk in inner:
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                await inner.aclose()  # type: ignore[attr-defined]
            await stack.aclose()

    reply.stream = owned()
    return reply


async def _read_all(resp: BackendResponse) -> bytes:
    try:
        return await resp.read()
    except BackendBroke as e:
        raise UpstreamError(f"backend connection lost: {e}") from e


async def _backend_error(resp: BackendResponse, api: Api) -> ServiceError:
    """A backend's error answer, re-said in the API's format; its 5xx for bad input is a 400."""
    data = await _read_all(resp)
    try:
        doc: Any = json.loads(data)
    except (ValueError, RecursionError):
        doc = {"error": data.decode(errors="replace")[:500]}
    said = not isinstance(doc, dict) or "error" in doc or "message" in doc
    message = (backend_error_text(doc) if said else "") or f"the backend answered {resp.status}"
    status = backend_failure_status(resp.status, message)
    if status == 502:
        message = f"the backend failed: {message}"
    err = BackendRejected(message, status)
    if status == 404 and "model" in message.lower():
        err.code, err.param = "model_not_found", "model"
    retry = resp.headers.get("Retry-After")
    if retry and retry.isdigit():
        err.retry_after = int(retry)
    return err


class Rename:
    """Rewrites the ``model`` field of a backend's JSON answers (llama.cpp's router echoes its own
    id, e.g. ``smollm2``, for ``smollm2:135m``). Works on whole lines, so an SSE event split
    across socket reads is still rewritten; a chunk without a newline waits for the rest."""

    def __init__(self, backend_id: str, name: str):
        self.pairs = [
            (f'"model":{json.dumps(backend_id)}'.encode(), f'"model":{json.dumps(name)}'.encode()),
            (f'"model": {json.dumps(backend_id)}'.encode(), f'"model": {json.dumps(name)}'.encode()),
        ]

    def apply(self, data: bytes) -> bytes:
        for old, new in self.pairs:
            data = data.replace(old, new)
        return data

    async def lines(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        tail = b""
        try:
            async for chunk in chunks:
                data = tail + chunk
                cut = data.rfind(b"\n") + 1
                tail = data[cut:]
                if cut:
                    yield self.apply(data[:cut])
            if tail:
                yield self.apply(tail)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]


async def _relay_stream(resp: BackendResponse, api: Api) -> AsyncIterator[bytes]:
    """The backend's bytes as they arrive, one chunk per socket read, never buffered; a
    backend that breaks off ends the stream with an error in the API's own framing."""
    try:
        async for data in resp.iter_any():
            yield data
    except BackendBroke as e:
        yield stream_error_chunk(api.value, f"backend connection lost: {e}")


async def _sse_objects(resp: BackendResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a backend's SSE stream, until ``[DONE]``."""
    tail = b""
    async for chunk in resp.iter_any():
        data = tail + chunk
        *lines, tail = data.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


async def _converted_sse(
    resp: BackendResponse, conv: anthropic.MessagesStream | responses.ResponsesStream
) -> AsyncIterator[bytes]:
    # The opening event goes out with the first translated one, not before the backend has said
    # anything: the time to the first byte (telemetry's TTFT) then includes reading the prompt,
    # as it does on the pass-through path (a coding agent's 4.6k-token prompt: 90 s, not 0.05 s).
    opening = conv.start()
    try:
        async for obj in _sse_objects(resp):
            out = conv.feed(obj)
            if out:
                yield opening + out
                opening = b""
    except ServiceError as e:
        yield opening + conv.error(e.message)
        return
    except BackendBroke as e:
        yield opening + conv.error(f"backend connection lost: {e}")
        return
    yield opening + conv.finish()


async def _ndjson(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    try:
        async for obj in objects:
            yield json.dumps(obj).encode() + b"\n"
    except ServiceError as e:  # after the first byte: an error line, like Ollama
        yield json.dumps({"error": e.message}).encode() + b"\n"
    except (BackendBroke, asyncio.TimeoutError, OSError) as e:
        yield json.dumps({"error": f"backend connection lost: {type(e).__name__}"}).encode() + b"\n"
    finally:
        with contextlib.suppress(Exception):
            await objects.aclose()  # type: ignore[attr-defined]


__all__ = ["Identity", "Pipeline", "Reply", "Request", "error_body", "json_reply", "parse_body"]
