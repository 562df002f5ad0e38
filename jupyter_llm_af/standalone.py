"""``jupyter-llm-af serve``: the same service on its own port (a site's shared frontend, or a
JupyterHub managed service at ``/services/llm/``).

Auth: API tokens (``--token``, ``$JUPYTER_LLM_AF_TOKEN``, ``--token-file``, or
``c.LLMService.api_tokens``), answered with 401 in the API's format when missing; under JupyterHub
(``$JUPYTERHUB_SERVICE_PREFIX`` set) the hub's OAuth cookies and API tokens instead.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import sys
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Int, List, Unicode, default
from traitlets.config import Application

from . import __version__
from .config import LLMService
from .handlers import LLMHandler, handler_specs
from .pipeline import Identity
from .service import LLMCore


class TokenLLMHandler(LLMHandler):
    """Standalone auth: ``Authorization: Bearer|token <api token>`` (or ``x-api-key``); the token
    names the user."""

    def get_current_user(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not value.strip():
            return None
        given = value.strip().encode(errors="replace")
        user = None
        metrics_token = self.core.cfg.metrics_token
        if self.route is not None and self.route.kind.value == "metrics" and metrics_token:
            if hmac.compare_digest(metrics_token.encode(), given):
                return "metrics"  # a scraper: /metrics only, and no admin
        for token, owner in self.settings["llm_tokens"].items():
            if hmac.compare_digest(token.encode(), given):  # constant time
                user = owner
        return user

    def get_login_url(self) -> str:
        raise web.HTTPError(401)

    def llm_identity(self) -> Identity:
        name = str(self.current_user)
        return Identity(name, self.core.is_admin(name))


class NoAuthLLMHandler(TokenLLMHandler):
    """``--allow-no-auth`` on loopback only (a backend inside a batch job, never a frontend)."""

    def get_current_user(self) -> str | None:
        return "anonymous"


def hub_handler_class() -> type[LLMHandler]:
    """The handler for a JupyterHub managed service (imported lazily: jupyterhub is optional)."""
    from jupyterhub.services.auth import HubOAuthenticated

    # HubOAuthenticated first: its get_current_user, check_xsrf_cookie and xsrf_token must win over
    # tornado.web.RequestHandler's (with LLMHandler first, every hub user was refused with 403)
    class HubLLMHandler(HubOAuthenticated, LLMHandler):
        """Hub users by OAuth cookie (browsers) or hub API token (``Authorization``/``x-api-key``)."""

        async def prepare(self) -> None:
            if self._is_metrics_scraper():  # Prometheus with the metrics token: /metrics only
                scraper: dict[str, Any] | None = {"name": "metrics", "admin": False, "groups": []}
                self._hub_auth_user_cache = scraper
                await LLMHandler.prepare(self)
                return
            # Ask the hub without blocking the IOLoop (get_current_user would do it synchronously).
            user_model = await self.hub_auth.get_user(self, sync=False)
            try:
                self._hub_auth_user_cache = self.check_hub_user(user_model) if user_model else None
            except Exception:  # UserNotAllowed: a hub user without access to this service
                self._hub_auth_user_cache = None
            if not self.current_user:
                headers = self.request.headers
                if (
                    self.request.method == "GET"
                    and "text/html" in headers.get("Accept", "")
                    and "Authorization" not in headers
                ):
                    # a person in a browser: log in through the hub (OAuth), then come back
                    self.redirect(HubOAuthenticated.get_login_url(self))
                    return
                raise web.HTTPError(401 if headers.get("Authorization") is None else 403)
            await super().prepare()

        def _is_metrics_scraper(self) -> bool:
            token = self.core.cfg.metrics_token
            if not token or self.route is None or self.route.kind.value != "metrics":
                return False
            scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
            given = value.strip().encode(errors="replace")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), given)

        def get_login_url(self) -> str:
            raise web.HTTPError(401)  # API clients: a clear 401 in the API's format, never a redirect

        def llm_identity(self) -> Identity:
            user = self.current_user or {}
            name = user.get("name", "")
            groups = tuple(user.get("groups") or ())
            return Identity(name, bool(user.get("admin")) or self.core.is_admin(name, groups), groups)

    return HubLLMHandler


def log_request(handler: web.RequestHandler) -> None:
    """Tornado's access log line without the query string (it may carry a token)."""
    status = handler.get_status()
    log = logging.getLogger("tornado.access")
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    req = handler.request
    log.log(
        level, "%d %s %s (%s) %.2fms", status, req.method, req.path, req.remote_ip, 1000 * req.request_time()
    )


class ServeApp(Application):
    name = "jupyter-llm-af-serve"
    description = "Run the shared LLM service on its own port (Ollama + OpenAI APIs)."
    version = __version__
    classes = [LLMService]

    port = Int(11434, config=True, help="Port to listen on (Ollama's default port).")
    ip = Unicode("127.0.0.1", config=True, help="Address to listen on.")
    tokens = List(Unicode(), [], config=True, help="API tokens accepted (repeatable); user name 'user'.")
    token_file = Unicode("", config=True, help="File with API tokens, one per line, 'token' or 'token user'.")
    config_file = Unicode("", config=True, help="Python config file (c.LLMService.... = ...).")
    hub = Bool(
        False,
        config=True,
        help="Authenticate through JupyterHub (set automatically when $JUPYTERHUB_SERVICE_PREFIX is set).",
    )
    allow_no_auth = Bool(
        False,
        config=True,
        help="""Serve without any token. Only for a backend bound to loopback inside a batch job;
        never a frontend.""",
    )

    aliases = {
        "port": "ServeApp.port",
        "ip": "ServeApp.ip",
        "backend": "LLMService.backend",
        "upstream-url": "LLMService.upstream_url",
        "protocol": "LLMService.backend_protocol",
        "token": "ServeApp.tokens",
        "token-file": "ServeApp.token_file",
        "config": "ServeApp.config_file",
        "log-level": "Application.log_level",
    }
    flags = {
        "hub": ({"ServeApp": {"hub": True}}, "Authenticate through JupyterHub."),
        "allow-no-auth": (
            {"ServeApp": {"allow_no_auth": True}},
            "Serve without tokens (loopback backends only).",
        ),
    }

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            # command-line values win over the file
            self.update_config(self.cli_config)

    def _collect_tokens(self, service: LLMService) -> dict[str, str]:
        tokens: dict[str, str] = dict(service.api_tokens)
        for token in self.tokens:
            tokens[token] = "user"
        env = os.environ.get("JUPYTER_LLM_AF_TOKEN", "")
        for token in env.split(","):
            if token.strip():
                tokens[token.strip()] = "user"
        if self.token_file:
            with open(self.token_file) as f:
                for line in f:
                    parts = line.split()
                    if parts and not parts[0].startswith("#"):
                        tokens[parts[0]] = parts[1] if len(parts) > 1 else "user"
        return tokens

    def make_app(self) -> tuple[web.Application, LLMCore]:
        service = LLMService(parent=self)
        core = LLMCore(service, logger=self.log)
        hub_prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
        settings: dict[str, Any] = {"llm_core": core, "cookie_secret": os.urandom(32)}
        if self.hub or hub_prefix:
            from jupyterhub.services.auth import HubOAuthCallbackHandler
            from jupyterhub.utils import url_path_join

            prefix = hub_prefix or "/services/llm/"
            base: type[LLMHandler] = hub_handler_class()
            handlers: list[Any] = [(url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler)]
            handlers += handler_specs(prefix, base)
        else:
            tokens = self._collect_tokens(service)
            if not tokens and not self.allow_no_auth:
                self.log.critical(
                    "No API token configured: pass --token, set $JUPYTER_LLM_AF_TOKEN, --token-file, or "
                    "c.LLMService.api_tokens. (An open LLM proxy is never started.)"
                )
                raise SystemExit(2)
            if self.allow_no_auth:
                if self.ip not in ("127.0.0.1", "::1", "localhost"):
                    self.log.critical("--allow-no-auth is only allowed on a loopback address")
                    raise SystemExit(2)
                tokens = {}
            settings["llm_tokens"] = tokens
            base = TokenLLMHandler if not self.allow_no_auth else NoAuthLLMHandler
            prefix = "/"
            handlers = handler_specs(prefix, base)
        # absolute-form targets ("GET http://elsewhere/") match no pattern: still our JSON 404
        settings["default_handler_class"] = base
        settings["default_handler_args"] = {"route": None, "prefix": prefix}
        settings["log_function"] = log_request
        return web.Application(handlers, **settings), core

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO  # a service says that it started, and logs its requests

    def start(self) -> None:
        # the launchers' events (submitted, ready, adopted, handover) and the access log go
        # where the application's own lines go, at its level
        for name in ("jupyter_llm_af", "tornado.access", "tornado.application"):
            logger = logging.getLogger(name)
            logger.handlers = list(self.log.handlers)
            logger.setLevel(self.log.level)
            logger.propagate = False
        app, core = self.make_app()
        asyncio.run(self._serve(app, core))

    async def _serve(self, app: web.Application, core: LLMCore) -> None:
        # the handlers answer an oversized body with 413; Tornado's own limit only guards memory
        server = HTTPServer(app, xheaders=False, max_body_size=max(core.cfg.max_body_size * 16, 1 << 30))
        server.listen(self.port, self.ip)
        await core.start()
        self.log.info(
            "jupyter-llm-af %s: %s backend (%s API) on http://%s:%d/",
            __version__,
            core.cfg.backend,
            core.protocol,
            self.ip,
            self.port,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("stopping")
        server.stop()
        await core.stop()


def main(argv: list[str] | None = None) -> int:
    app = ServeApp()
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.start()
    return 0
