"""The handler layer: authentication, body limits, writing replies, and the one place errors
become HTTP answers. Everything else happens in :mod:`jupyter_llm_af.pipeline`.

One handler class serves every route of :mod:`jupyter_llm_af.routes`; an entry point combines it
with its own authentication base (Jupyter Server, API tokens, JupyterHub) in a named class:
``JupyterLLMHandler`` (extension.py), ``TokenLLMHandler`` and ``HubLLMHandler`` (standalone.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from tornado import httputil, web
from tornado.iostream import StreamClosedError

from .errors import (
    DEFAULT_MESSAGES,
    PayloadTooLarge,
    ServiceError,
    render_error,
)
from .pipeline import Identity, Pipeline, Reply, Request
from .routes import ROUTES, Route, api_of, match
from .service import LLMCore
from .telemetry import RequestTrace, traced_stream


@web.stream_request_body  # so a body over the limit gets 413 in the API's format, not a bare 400
class LLMHandler(web.RequestHandler):
    """Base of the three entry points' handlers (auth comes from the class it is combined with)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS", "CONNECT", "TRACE")
    # what an unauthenticated request gets (Jupyter Server answers 403 for its API)
    auth_failure_status = 401

    route: Route | None
    route_arg: str | None
    llm_prefix = "/"  # where the service is mounted (set by the entry point)

    def initialize(self, route: Route | None = None, prefix: str = "/", **kwargs: Any) -> None:
        self.route = route
        self.llm_prefix = prefix
        self.route_arg = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._request_task: asyncio.Future[Any] | None = None
        # Anthropic clients send their key as x-api-key: read it as a token before any auth runs
        # (Jupyter Server's XSRF check, which token-authenticated requests skip, runs first).
        headers = self.request.headers
        key = headers.get("x-api-key")
        if key and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {key}"

    # -- what the entry point provides ---------------------------------------------------------
    def llm_identity(self) -> Identity:
        raise NotImplementedError

    @property
    def core(self) -> LLMCore:
        core: LLMCore = self.settings["llm_core"]
        return core

    @property
    def pipeline(self) -> Pipeline:
        return self.core.pipeline

    @property
    def service_path(self) -> str:
        if self.route is not None:
            return self.route.service_path(self.route_arg)
        prefix = self.llm_prefix
        path = self.request.path
        return "/" + path[len(prefix) :] if path.startswith(prefix) else path

    @property
    def api(self) -> str:
        return self.route.api.value if self.route else api_of(self.service_path).value

    # -- the request --------------------------------------------------------------------------
    async def prepare(self) -> None:
        maybe = super().prepare()
        if isinstance(maybe, Awaitable):
            await maybe
        if self._finished:
            return
        if not self.current_user:
            # every method of every route, whatever the base class's defaults (HEAD, OPTIONS, ...)
            raise web.HTTPError(self.auth_failure_status)
        self._request_task = asyncio.current_task()
        length = self.request.headers.get("Content-Length", "")
        limit = self.core.cfg.max_body_size
        if length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")

    def data_received(self, chunk: bytes) -> None:
        # Tornado logs whatever this raises as an uncaught exception and drops the connection:
        # answer 413 here instead; the rest of the body is then discarded (never buffered).
        if self._finished:
            return
        self._size += len(chunk)
        limit = self.core.cfg.max_body_size
        if self._size > limit:
            self._chunks.clear()
            self._send_error(PayloadTooLarge(f"request body exceeds the limit of {limit} bytes"))
            return
        self._chunks.append(chunk)

    def on_connection_close(self) -> None:
        # The client went away: cancel its work (queue place, backend request) at once.
        task = self._request_task
        if task is not None and not task.done():
            task.cancel()
        with contextlib.suppress(Exception):
            super().on_connection_close()

    async def get(self, *args: str) -> None:
        await self._dispatch(args)

    async def head(self, *args: str) -> None:
        await self._dispatch(args)

    async def post(self, *args: str) -> None:
        await self._dispatch(args)

    async def delete(self, *args: str) -> None:
        await self._dispatch(args)

    async def put(self, *args: str) -> None:
        await self._dispatch(args)

    async def patch(self, *args: str) -> None:
        await self._dispatch(args)

    async def options(self, *args: str) -> None:
        await self._dispatch(args)

    async def connect(self, *args: str) -> None:
        await self._dispatch(args)

    async def trace(self, *args: str) -> None:
        await self._dispatch(args)

    async def _dispatch(self, args: tuple[str, ...]) -> None:
        if self._finished:  # answered while the body arrived (413)
            return
        route = self.route
        method = self.request.method or "GET"
        trace: RequestTrace | None = None
        try:
            if route is None:
                raise ServiceError(f"unknown path {self.service_path}", 404)
            self.route_arg = args[0] if args else None
            if method not in route.methods:
                self.set_header("Allow", ", ".join(sorted(route.methods)))
                raise ServiceError(f"{method} is not allowed on {route.path}", 405)
            identity = self.llm_identity()
            trace = self.core.telemetry.begin(route.path, route.api, identity.user, identity.groups, method)
            req = Request(
                route=route,
                method="GET" if method == "HEAD" else method,
                identity=identity,
                body=b"".join(self._chunks),
                headers=self.request.headers,
                arg=self.route_arg,
                query={k: self.get_argument(k) for k in self.request.query_arguments},
                trace=trace,
            )
            reply = await self.pipeline.handle(req)
            if reply.stream is not None:
                reply.stream = traced_stream(trace, reply.stream, reply.status)
            else:
                trace.body(reply.body)
                trace.finish(reply.status)
            await self._write_reply(reply)
        except ServiceError as e:
            if trace is not None:
                trace.finish(e.status, type(e).__name__)
            self._send_error(e)
        except asyncio.CancelledError:
            if trace is not None:
                trace.finish(499, "client_gone")
            # the client disconnected: what it held was released by the pipeline's contexts
            if not self._finished:
                with contextlib.suppress(Exception):
                    self.finish()
        except StreamClosedError:
            pass
        except Exception as e:  # a bug: still counted (and in-flight released), then Tornado's 500
            if trace is not None:
                trace.finish(500, type(e).__name__)
            raise

    async def _write_reply(self, reply: Reply) -> None:
        self.set_status(reply.status)
        for k, v in reply.headers.items():
            self.set_header(k, v)
        if reply.queue_position:
            self.set_header("X-Queue-Position", str(reply.queue_position))
        head = self.request.method == "HEAD"
        if reply.stream is None:
            self.finish(b"" if head else reply.body)
            return
        stream = reply.stream
        try:
            if not head:
                with contextlib.suppress(Exception):
                    self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
                # one write + flush per chunk: tokens go out as they arrive, never buffered
                async for chunk in stream:
                    self.write(chunk)
                    await self.flush()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        self.finish()

    # -- errors: the one place they become HTTP answers ----------------------------------------
    def _send_error(self, err: ServiceError) -> None:
        if self._finished:
            return
        if self._headers_written:
            # mid-stream: the stream itself already carries the error line; just end it
            with contextlib.suppress(Exception):
                self.finish()
            return
        allow = self._headers.get("Allow")
        self.clear()
        if allow:
            self.set_header("Allow", allow)
        status, headers, body = render_error(self.api, err)
        self.set_status(status)
        for k, v in headers.items():
            self.set_header(k, v)
        self.finish(b"" if self.request.method == "HEAD" else body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Never a Tornado HTML page: every error in the API's own format."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ServiceError):
            return self._send_error(exc)
        message = ""
        if isinstance(exc, web.HTTPError):
            message = exc.log_message or exc.reason or ""
            if "%" in message and exc.args[2:]:
                with contextlib.suppress(TypeError, ValueError):
                    message = message % exc.args[2:]
        if not message or status_code >= 500:
            message = DEFAULT_MESSAGES.get(status_code) or httputil.responses.get(status_code, "error")
        if status_code == 401 and self.request.headers.get("Authorization"):
            # a token was sent (x-api-key is read as one too): it is the token that is wrong
            message = "invalid token: the token sent in 'Authorization' (or 'x-api-key') is not accepted here"
        if status_code == 403 and "xsrf" in message.lower():
            message = "forbidden: missing XSRF token (send the _xsrf cookie value as X-XSRFToken)"
        if status_code >= 500:
            message = "internal error in the LLM service (see its log)"
        self._send_error(ServiceError(message, status_code))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (web.HTTPError, ServiceError)):
            return  # expected outcomes (401, 404, 413) are in the access log already
        super().log_exception(typ, value, tb)


def handler_specs(prefix: str, handler: type[LLMHandler]) -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado handler specs for every route under ``prefix`` (ends with '/'), plus a catch-all
    that answers 404 (after authentication) in the API's format."""
    specs: list[tuple[str, type, dict[str, Any]]] = []
    for route in ROUTES:
        pattern = prefix + route.pattern + "/?$" if route.pattern else prefix + "?$"
        specs.append((pattern, handler, {"route": route, "prefix": prefix}))
    specs.append((prefix + r".*", handler, {"route": None, "prefix": prefix}))
    return specs


__all__ = ["LLMHandler", "handler_specs", "match"]
