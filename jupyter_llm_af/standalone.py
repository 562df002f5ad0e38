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
from traitlets import Bool, Int, List, Unicode
from traitlets.config import Application

from . import __version__
from .config import LLMService
from .handlers import build_handlers
from .service import LLMCore


class TokenAuthHandler(web.RequestHandler):
    """Standalone auth: ``Authorization: Bearer|token <api token>``; the token names the user."""

    def get_current_user(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not value.strip():
            return None
        value = value.strip()
        user = None
        for token, owner in self.settings["llm_tokens"].items():
            if hmac.compare_digest(token.encode(), value.encode()):  # constant time
                user = owner
        return user

    def prepare(self) -> None:
        if not self.current_user:
            raise web.HTTPError(401)

    def get_login_url(self) -> str:
        raise web.HTTPError(401)

    def llm_identity(self) -> tuple[str, bool]:
        name = str(self.current_user)
        return name, self.settings["llm_core"].is_admin(name)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, web.HTTPError):
            return  # expected outcomes (401, 404) are in the access log already
        super().log_exception(typ, value, tb)


def hub_auth_base() -> type:
    """Base handler for a JupyterHub managed service (imported lazily: jupyterhub is optional)."""
    from jupyterhub.services.auth import HubOAuthenticated

    class HubAuthHandler(HubOAuthenticated, web.RequestHandler):
        async def prepare(self) -> Any:
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

        def get_login_url(self) -> str:
            raise web.HTTPError(401)  # API clients: a clear 401 in the API's format, never a redirect

        def llm_identity(self) -> tuple[str, bool]:
            user = self.current_user or {}
            name = user.get("name", "")
            core = self.settings["llm_core"]
            return name, bool(user.get("admin")) or core.is_admin(name, user.get("groups") or [])

    return HubAuthHandler


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
            handlers: list[Any] = [(url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler)]
            handlers += build_handlers(prefix, hub_auth_base(), "Hub")
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
            base = TokenAuthHandler if not self.allow_no_auth else _NoAuthHandler
            handlers = build_handlers("/", base, "Standalone")
        return web.Application(handlers, **settings), core

    def start(self) -> None:
        logging.getLogger("tornado.access").setLevel(logging.INFO)
        app, core = self.make_app()
        asyncio.run(self._serve(app, core))

    async def _serve(self, app: web.Application, core: LLMCore) -> None:
        server = HTTPServer(app, xheaders=False, max_body_size=core.cfg.max_body_size * 2)
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


class _NoAuthHandler(TokenAuthHandler):
    def get_current_user(self) -> str | None:
        return "anonymous"


def main(argv: list[str] | None = None) -> int:
    app = ServeApp()
    app.initialize(argv if argv is not None else sys.argv[1:])
    app.start()
    return 0
