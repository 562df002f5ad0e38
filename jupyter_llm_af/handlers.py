"""The thin handler layer: one route table, one error-translating base, three ways to authenticate.

The same handler classes serve the Jupyter Server extension (``JupyterHandler`` auth: token,
cookie + XSRF), the standalone service (API tokens) and the JupyterHub service (HubOAuth): a
handler class is built by mixing :class:`LLMHandlerMixin` into the entry point's base class.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
from tornado import web
from tornado.iostream import StreamClosedError

from .backends.base import ControlNotSupported
from .errors import BackendUnavailable, UpstreamError
from .forwarding import (
    OLLAMA_MANAGE_PATHS,
    response_headers,
    upstream_path,
)
from .service import LLMCore
from .translate import OLLAMA_API_VERSION, OllamaError

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    501: ("invalid_request_error", "not_implemented"),
}


def api_of(path: str) -> str:
    """Which API's error format a service-relative path uses."""
    if path.startswith("/v1/") or path == "/v1":
        return "openai"
    if path.startswith("/api/") or path == "/api":
        return "ollama"
    return "service"


def error_body(
    api: str, status: int, message: str, param: str | None = None, code: str | None = None
) -> dict:
    if api == "openai":
        err_type, default_code = _OPENAI_ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {"error": {"message": message, "type": err_type, "param": param, "code": code or default_code}}
    if api == "ollama":
        return {"error": message}
    return {"error": message, "message": message, "status": status}


# Listings: answered without starting a backend when one is not serving (see _read_only).
READ_ONLY_PATHS = {"/api/tags", "/api/ps", "/api/version", "/v1/models"}
CACHED_PATHS = {"/api/tags", "/v1/models"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.extra = extra


class LLMHandlerMixin:
    """Shared behaviour: auth hook, body limits, errors in the API's own format, cancellation."""

    # set by the route table
    service_path: str = "/"

    # The entry point's base class provides ``llm_identity() -> (user name, is admin)``.
    llm_identity: Any

    @property
    def core(self) -> LLMCore:
        return self.settings["llm_core"]  # type: ignore[attr-defined]

    def initialize(self, service_path: str = "/", **kwargs: Any) -> None:
        self.service_path = service_path
        self._request_task: asyncio.Task | None = None
        self._json: Any = None

    async def prepare(self) -> None:
        maybe = super().prepare()  # type: ignore[misc]
        if asyncio.iscoroutine(maybe) or isinstance(maybe, asyncio.Future):
            await maybe
        if self._finished:  # type: ignore[attr-defined]
            return
        if not self.current_user:  # type: ignore[attr-defined]
            # every method of every route, whatever the base class's defaults (HEAD, OPTIONS, ...)
            raise web.HTTPError(403)
        self._request_task = asyncio.current_task()
        body = self.request.body  # type: ignore[attr-defined]
        if body and len(body) > self.core.cfg.max_body_size:
            raise web.HTTPError(
                413,
                reason=f"request body of {len(body)} bytes exceeds the limit of {self.core.cfg.max_body_size}",  # noqa: E501
            )

    def on_connection_close(self) -> None:
        # The client went away: cancel its work (queue place, backend request) at once.
        task = getattr(self, "_request_task", None)
        if task is not None and not task.done():
            task.cancel()
        with contextlib.suppress(Exception):
            super().on_connection_close()  # type: ignore[misc]

    # -- errors -------------------------------------------------------------------------
    @property
    def api(self) -> str:
        return api_of(self.service_path)

    def send_error_body(
        self, status: int, message: str, retry_after: int | None = None, **extra: Any
    ) -> None:
        if self._finished:  # type: ignore[attr-defined]
            return
        self.clear()  # type: ignore[attr-defined]
        self.set_status(status)  # type: ignore[attr-defined]
        if retry_after is not None:
            self.set_header("Retry-After", str(int(retry_after)))  # type: ignore[attr-defined]
        if status == 401 and self.api != "ollama":
            self.set_header("WWW-Authenticate", 'Bearer realm="jupyter_llm_af"')  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        body = error_body(self.api, status, message, extra.pop("param", None), extra.pop("code", None))
        if self.api == "service":
            body.update(extra)
        self.finish(json.dumps(body))  # type: ignore[attr-defined]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Never a Tornado HTML page: every error in the API's own format."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = ""
        if isinstance(exc, web.HTTPError):
            message = exc.log_message or exc.reason or ""
            if exc.reason and not exc.log_message:
                message = exc.reason
        if not message:
            message = {
                401: "authentication required: send 'Authorization: Bearer <token>'",
                403: "forbidden: authentication required (token or login) or not allowed",
                404: "not found",
                405: "method not allowed",
            }.get(status_code, self._reason)  # type: ignore[attr-defined]
        if status_code == 403 and "xsrf" in message.lower():
            message = "forbidden: missing XSRF token (send the _xsrf cookie value as X-XSRFToken)"
        self.send_error_body(status_code, message)

    async def run_guarded(self, coro: Any) -> None:
        """Run a verb's body translating domain errors into the API's format."""
        try:
            await coro
        except asyncio.CancelledError:
            # client disconnected: everything it held was released by the context managers
            if not self._finished:  # type: ignore[attr-defined]
                with contextlib.suppress(Exception):
                    self.finish()  # type: ignore[attr-defined]
        except ApiError as e:
            self.send_error_body(e.status, e.message, e.retry_after, **e.extra)
        except OllamaError as e:  # every ServiceError
            self.send_error_body(e.status, e.message, e.retry_after)
        except StreamClosedError:
            pass

    def json_body(self) -> dict[str, Any]:
        raw = self.request.body  # type: ignore[attr-defined]
        if not raw:
            raise ApiError(400, "request body is required (JSON)")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"invalid JSON in request body: {e}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "request body must be a JSON object")
        return doc

    # -- writing ------------------------------------------------------------------------
    def write_json(self, doc: Any, status: int = 200) -> None:
        self.set_status(status)  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json; charset=utf-8")  # type: ignore[attr-defined]
        self.finish(json.dumps(doc))  # type: ignore[attr-defined]

    def _nodelay(self) -> None:
        with contextlib.suppress(Exception):
            self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]

    async def relay(self, method: str, path: str) -> None:
        status, doc = await self.core.relay_json(method, path)
        if isinstance(doc, dict) and path == "/backend/state":
            doc["relay"] = True  # this server relays to one shared service
        self.write_json(doc, status)

    # -- the forwarding paths ---------------------------------------------------------------
    async def forward(self, path: str, method: str, body: dict[str, Any] | None) -> None:
        """An inference or read request: admission, backend lease, pass-through or translation."""
        core = self.core
        user, _admin = self.llm_identity()
        model = (body or {}).get("model") or (body or {}).get("name") or ""
        fit_error = core.model_fit_error(model) if model else None
        if fit_error:
            raise ApiError(400, fit_error, param="model", code="model_too_large")
        stream = self._is_stream(path, body)
        deadline = time.monotonic() + core.cfg.max_wait
        inference = method == "POST" and path not in ("/api/show",)
        if inference:
            async with core.admission.slot(user, str(model), deadline, stream) as ticket:
                if ticket.position_at_start:
                    self.set_header("X-Queue-Position", str(ticket.position_at_start))  # type: ignore[attr-defined]
                await self._to_backend(path, method, body, stream, deadline)
        else:
            await self._to_backend(path, method, body, stream, deadline)

    def _is_stream(self, path: str, body: dict[str, Any] | None) -> bool:
        if body is None:
            return False
        if path.startswith("/api/"):
            return path in ("/api/chat", "/api/generate") and body.get("stream", True) is not False
        return bool(body.get("stream"))

    async def _read_only(self, path: str) -> bool:
        """Model lists never start a GPU job nor keep one alive: with no backend serving, answer
        from what the last backend said (``/api/ps``: nothing is loaded). True if answered."""
        if self.core.backend.serving_url() is not None:
            return False
        if path == "/api/ps":
            self.write_json({"models": []})
            return True
        if path == "/api/version":
            self.write_json({"version": OLLAMA_API_VERSION})
            return True
        cached = self.core.read_cache.get(path)
        if cached is not None:
            self.write_json(cached)
            return True
        return False  # never seen a backend: the first listing starts one, like any request

    async def _to_backend(
        self, path: str, method: str, body: dict[str, Any] | None, stream: bool, deadline: float
    ) -> None:
        core = self.core
        read_only = path in READ_ONLY_PATHS
        if read_only and await self._read_only(path):
            return
        try:
            async with core.backend.lease(deadline, activity=not read_only) as endpoint:
                try:
                    if core.protocol == "openai" and path.startswith("/api/"):
                        await self._translated(endpoint.url, path, body or {})
                    else:
                        if (
                            core.protocol == "openai"
                            and path.startswith("/v1/")
                            and body
                            and body.get("model")
                        ):
                            await self._check_openai_model(endpoint.url, body["model"])
                        await self._pass_through(endpoint.url, path, method)
                except UpstreamError:
                    # let the launcher re-check its job now rather than at its next poll
                    failed = getattr(core.backend, "endpoint_failed", None)
                    if failed is not None:
                        failed(endpoint)
                    raise
        except BackendUnavailable as e:
            raise ApiError(e.status, e.message, e.retry_after) from None

    async def _check_openai_model(self, base_url: str, model: Any) -> None:
        try:
            await self.core.translator.resolve(base_url, model)
        except OllamaError as e:
            if e.status == 404:
                raise ApiError(
                    404, f"The model '{model}' does not exist", param="model", code="model_not_found"
                ) from None
            raise

    async def _pass_through(self, base_url: str, path: str, method: str) -> None:
        core = self.core
        target = upstream_path(path)
        if target is None:  # the route table only sends allowed paths; belt and braces
            raise ApiError(404, f"unknown path {path}")
        raw = self.request.body if method in ("POST", "PUT", "DELETE") else None  # type: ignore[attr-defined]
        if path in CACHED_PATHS and method == "GET":
            return await self._get_and_cache(base_url, path)
        async with core.upstream.stream(method, base_url, target, raw, self.request.headers) as resp:  # type: ignore[attr-defined]
            self.set_status(resp.status)  # type: ignore[attr-defined]
            for k, v in response_headers(resp.headers).items():
                self.set_header(k, v)  # type: ignore[attr-defined]
            self._nodelay()
            try:
                # one write + flush per socket read: chunks go out as they arrive, never buffered
                async for data in resp.content.iter_any():
                    self.write(data)  # type: ignore[attr-defined]
                    await self.flush()  # type: ignore[attr-defined]
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                # the backend broke off mid-stream: say so in the API's format
                self._write_stream_error(f"backend connection lost: {type(e).__name__}")
        self.finish()  # type: ignore[attr-defined]

    async def _get_and_cache(self, base_url: str, path: str) -> None:
        """A model list: fetched whole, remembered for when no backend is serving."""
        core = self.core
        req = core.upstream.build_request("GET", base_url, path, None, self.request.headers)  # type: ignore[attr-defined]
        resp = await core.upstream.send(req, stream=False)
        if resp.status_code == 200:
            try:
                core.read_cache[path] = resp.json()
            except ValueError:
                pass
        self.set_status(resp.status_code)  # type: ignore[attr-defined]
        for k, v in response_headers(resp.headers).items():
            self.set_header(k, v)  # type: ignore[attr-defined]
        self.finish(resp.content)  # type: ignore[attr-defined]

    def _write_stream_error(self, message: str) -> None:
        if self.api == "openai":
            self.write("data: " + json.dumps(error_body("openai", 502, message)) + "\n\n")  # type: ignore[attr-defined]
        else:
            self.write(json.dumps({"error": message}) + "\n")  # type: ignore[attr-defined]

    async def _translated(self, base_url: str, path: str, body: dict[str, Any]) -> None:
        tr = self.core.translator
        if path == "/api/tags":
            tags = await tr.tags(base_url)
            self.core.read_cache[path] = tags
            return self.write_json(tags)
        if path == "/api/ps":
            return self.write_json(await tr.ps(base_url))
        if path == "/api/version":
            return self.write_json({"version": OLLAMA_API_VERSION})
        if path == "/api/show":
            return self.write_json(await tr.show(base_url, body))
        if path in ("/api/embed", "/api/embeddings"):
            return self.write_json(await tr.embed(base_url, body, legacy=path == "/api/embeddings"))
        if path in ("/api/chat", "/api/generate"):
            fn = tr.chat if path == "/api/chat" else tr.generate
            streaming, result = await fn(base_url, body)
            if not streaming:
                return self.write_json(result)
            self.set_header("Content-Type", "application/x-ndjson")  # type: ignore[attr-defined]
            self._nodelay()
            try:
                async for obj in result:  # type: ignore[union-attr]
                    self.write(json.dumps(obj) + "\n")  # type: ignore[attr-defined]
                    await self.flush()  # type: ignore[attr-defined]
            except (OllamaError, UpstreamError) as e:  # after the first byte: an error line, like Ollama
                self.write(json.dumps({"error": e.message}) + "\n")  # type: ignore[attr-defined]
            self.finish()  # type: ignore[attr-defined]
            return None
        if path in OLLAMA_MANAGE_PATHS or path.startswith("/api/blobs/"):
            raise ApiError(501, f"{path} is not supported by this backend (an OpenAI-compatible server)")
        raise ApiError(404, f"unknown path {path}")


# -- handlers ------------------------------------------------------------------------------
class RootMixin(LLMHandlerMixin):
    """GET|HEAD / → "Ollama is running" (clients probe it)."""

    @web.authenticated
    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")  # type: ignore[attr-defined]
        self.finish("Ollama is running")  # type: ignore[attr-defined]

    @web.authenticated
    async def head(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")  # type: ignore[attr-defined]
        self.finish()  # type: ignore[attr-defined]


class ReadMixin(LLMHandlerMixin):
    """GET /api/version, /api/tags, /api/ps, /v1/models, /v1/models/{id}."""

    @web.authenticated
    async def get(self) -> None:
        await self.run_guarded(self.forward(self.service_path, "GET", None))


class ModelByIdMixin(LLMHandlerMixin):
    @web.authenticated
    async def get(self, model_id: str) -> None:
        path = "/v1/models/" + model_id
        if upstream_path(path) is None:
            return self.send_error_body(404, f"The model '{model_id}' does not exist", code="model_not_found")
        self.service_path = path
        await self.run_guarded(self._get(path, model_id))

    async def _get(self, path: str, model_id: str) -> None:
        core = self.core
        if core.protocol == "openai":
            deadline = time.monotonic() + core.cfg.max_wait
            async with core.backend.lease(deadline) as ep:
                models = await core.translator.models(ep.url, fresh=True)
            for m in models:
                if model_id in (m.name, m.backend_id):
                    return self.write_json(
                        {"id": m.name, "object": "model", "created": 0, "owned_by": "jupyter_llm_af"}
                    )
            raise ApiError(
                404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        await self.forward(path, "GET", None)


class InferenceMixin(LLMHandlerMixin):
    """POST /api/chat|generate|embed|embeddings|show, /v1/chat/completions|completions|embeddings."""

    @web.authenticated
    async def post(self) -> None:
        async def go() -> None:
            body = self.json_body()
            await self.forward(self.service_path, "POST", body)

        await self.run_guarded(go())


class ManageMixin(LLMHandlerMixin):
    """Ollama's model-changing routes: admin-only, and off unless the site enables them."""

    async def _manage(self, method: str, *args: str) -> None:
        user, admin = self.llm_identity()
        if not self.core.cfg.allow_model_management:
            return self.send_error_body(
                403,
                f"{self.service_path} is disabled on this service: models are managed by the site. An admin "
                "can enable it with c.LLMService.allow_model_management = True.",
            )
        if not admin:
            return self.send_error_body(403, f"{self.service_path} is restricted to admins of this service")
        path = self.service_path if not args else "/api/blobs/" + args[0]
        if upstream_path(path) is None:
            return self.send_error_body(400, "invalid blob digest")
        self.service_path = path
        deadline = time.monotonic() + self.core.cfg.max_wait

        async def go() -> None:
            if self.core.protocol == "openai":
                raise ApiError(501, f"{path} is not supported by this backend (an OpenAI-compatible server)")
            async with self.core.backend.lease(deadline) as ep:
                await self._pass_through(ep.url, path, method)

        await self.run_guarded(go())

    @web.authenticated
    async def post(self, *args: str) -> None:
        await self._manage("POST", *args)

    @web.authenticated
    async def delete(self, *args: str) -> None:
        await self._manage("DELETE", *args)

    @web.authenticated
    async def head(self, *args: str) -> None:
        await self._manage("HEAD", *args)


class StateMixin(LLMHandlerMixin):
    """GET /backend/state: what is going on (job, node, time left, queue, models)."""

    @web.authenticated
    async def get(self) -> None:
        if self.core.relay:
            return await self.run_guarded(self.relay("GET", "/backend/state"))
        user, admin = self.llm_identity()
        self.write_json(await self.core.state(user, admin))


class ControlMixin(LLMHandlerMixin):
    """POST /backend/start|stop: admins only."""

    @web.authenticated
    async def post(self, action: str) -> None:
        if self.core.relay:  # the shared service decides who is an admin
            return await self.run_guarded(self.relay("POST", f"/backend/{action}"))
        user, admin = self.llm_identity()
        if not admin:
            return self.send_error_body(
                403, f"only admins of this service may {action} the backend ({user} is not)"
            )
        try:
            result = await self.core.backend.control(action)
        except ControlNotSupported as e:
            return self.send_error_body(409, str(e))
        except BackendUnavailable as e:
            return self.send_error_body(e.status, e.message, e.retry_after)
        self.write_json({"action": action, "state": result})


class QueueMixin(LLMHandlerMixin):
    """GET /queue: my requests and their positions, totals for everyone (names only for admins)."""

    @web.authenticated
    async def get(self) -> None:
        if self.core.relay:
            return await self.run_guarded(self.relay("GET", "/queue"))
        user, admin = self.llm_identity()
        self.write_json(self.core.admission.snapshot(user, admin))


class NotFoundMixin(LLMHandlerMixin):
    """Anything else under the prefix: authenticated first, then 404 in the API's format."""

    def _nf(self, path: str) -> None:
        self.service_path = "/" + path
        self.send_error_body(404, f"unknown path /{path}")

    @web.authenticated
    def get(self, path: str) -> None:
        self._nf(path)

    post = put = delete = patch = head = get


# (regex relative to the service root, mixin, service path) — the whole route table.
ROUTES: list[tuple[str, type, str]] = [
    (r"", RootMixin, "/"),
    (r"api/version", ReadMixin, "/api/version"),
    (r"api/tags", ReadMixin, "/api/tags"),
    (r"api/ps", ReadMixin, "/api/ps"),
    (r"api/show", InferenceMixin, "/api/show"),
    (r"api/chat", InferenceMixin, "/api/chat"),
    (r"api/generate", InferenceMixin, "/api/generate"),
    (r"api/embed", InferenceMixin, "/api/embed"),
    (r"api/embeddings", InferenceMixin, "/api/embeddings"),
    (r"api/pull", ManageMixin, "/api/pull"),
    (r"api/push", ManageMixin, "/api/push"),
    (r"api/create", ManageMixin, "/api/create"),
    (r"api/copy", ManageMixin, "/api/copy"),
    (r"api/delete", ManageMixin, "/api/delete"),
    (r"api/blobs/([^/]+)", ManageMixin, "/api/blobs/{}"),
    (r"v1/chat/completions", InferenceMixin, "/v1/chat/completions"),
    (r"v1/completions", InferenceMixin, "/v1/completions"),
    (r"v1/embeddings", InferenceMixin, "/v1/embeddings"),
    (r"v1/models", ReadMixin, "/v1/models"),
    (r"v1/models/(.+)", ModelByIdMixin, "/v1/models/{}"),
    (r"backend/state", StateMixin, "/backend/state"),
    (r"backend/(start|stop)", ControlMixin, "/backend/{}"),
    (r"queue", QueueMixin, "/queue"),
    (r"(.*)", NotFoundMixin, "/{}"),
]


def build_handlers(prefix: str, base: type, name_prefix: str = "") -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado handler specs for ``prefix`` (ends with '/'), each class = mixin + ``base``."""
    specs = []
    cache: dict[type, type] = {}
    for pattern, mixin, service_path in ROUTES:
        cls = cache.get(mixin)
        if cls is None:
            cls = type(f"{name_prefix}{mixin.__name__.replace('Mixin', 'Handler')}", (mixin, base), {})
            cache[mixin] = cls
        specs.append(
            (prefix + pattern + "/?$" if pattern else prefix + "?$", cls, {"service_path": service_path})
        )
    return specs
