"""The Jupyter Server extension: mounts the service at ``{base_url}llm/``.

Auth is Jupyter Server's own (token in ``Authorization: token|Bearer``, or cookie + XSRF);
unauthenticated requests get 403 in the API's format. Kernels started by this server get the
service's URL and a token in their environment (without overwriting what the user set).
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from tornado.ioloop import IOLoop, PeriodicCallback

from .config import LLMService
from .handlers import LLMHandler, handler_specs
from .pipeline import Identity
from .service import LLMCore

JUPYTERNAUT_RECHECK_S = 20  # how often a model list learnt after start reaches Jupyternaut
MOUNT = "llm/"


class JupyterLLMHandler(LLMHandler, APIHandler):  # type: ignore[misc]  # prepare/options: ours win
    """Every route under ``{base_url}llm/``, with Jupyter Server's auth (token or cookie + XSRF)."""

    auth_failure_status = 403  # as Jupyter Server's own API answers

    def initialize(self, route: Any = None, prefix: str = "/", **kwargs: Any) -> None:
        super().initialize(route, url_path_join(self.base_url, MOUNT))

    def llm_identity(self) -> Identity:
        user = self.current_user
        name = getattr(user, "username", None) or getattr(user, "name", None) or str(user)
        hub_owner = os.environ.get("JUPYTERHUB_USER")
        if hub_owner:  # spawned by JupyterHub: the hub names the user (shared servers: other users)
            return Identity(name, self.core.is_admin(name, owner=name == hub_owner))
        # Plain Jupyter Server: whoever holds its token or cookie is its owner. (Its identity
        # provider gives each token-only request a new anonymous name, which would defeat the
        # per-user queue limits; the OS user is the one stable name.)
        owner = _os_user()
        return Identity(owner, self.core.is_admin(owner, owner=True))


@functools.cache  # asked per request; the process's user does not change
def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return f"uid-{os.getuid()}"


class LLMExtensionApp(ExtensionApp):
    name = "jupyter_llm_af"
    load_other_extensions = True
    _jupyternaut_follower: PeriodicCallback | None = None
    _jupyternaut_models: tuple[str | None, tuple[str, ...]] = (None, ())

    @property
    def app(self) -> Any:
        """The Jupyter server (always set once the extension is loaded)."""
        assert self.serverapp is not None
        return self.serverapp

    def initialize_settings(self) -> None:
        app = self.app
        # the launchers' events and the access log go where the server's own lines go
        for name in ("jupyter_llm_af",):
            logger = logging.getLogger(name)
            logger.handlers = list(app.log.handlers)
            logger.setLevel(app.log.level)
            logger.propagate = False
        service = LLMService(parent=app, config=app.config)
        self.core = LLMCore(service, runtime_dir=app.runtime_dir, logger=self.log)
        self.settings["llm_core"] = self.core
        app.web_app.settings["llm_core"] = self.core
        IOLoop.current().add_callback(self.core.start)
        self._export_kernel_env()
        # once every extension is loaded (Jupyternaut's config manager is made in its own load step)
        IOLoop.current().add_callback(self._preset_jupyternaut)
        self.log.info(
            "jupyter_llm_af: %s backend (%s API) at %s%s",
            service.backend,
            self.core.protocol,
            app.base_url,
            MOUNT,
        )

    def initialize_handlers(self) -> None:
        self.handlers.extend(handler_specs("/" + MOUNT, JupyterLLMHandler))

    def _export_kernel_env(self) -> None:
        """Zero-config clients: kernels and terminals inherit the server's environment."""
        try:
            from .kernel_env import server_environment
        except ImportError:
            return
        app = self.app
        url = app.connection_url.rstrip("/") + "/" + MOUNT if hasattr(app, "connection_url") else ""
        if "://" not in url:
            url = f"http://{app.ip or '127.0.0.1'}:{app.port}{app.base_url}{MOUNT}"
        self.service_url = url
        token = getattr(app.identity_provider, "token", "") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        model = self.core.default_model()  # Claude Code's and Codex's default; None if not known yet
        os.environ.update(server_environment(url, token, os.environ, app.runtime_dir, model))

    def _preset_jupyternaut(self) -> None:
        """jupyter-ai 3.x: Jupyternaut's "Default" model and its model picker offer this service's
        models, reached through the environment set above (see :mod:`jupyter_llm_af.jupyter_ai3`)."""
        manager = self.app.web_app.settings.get("jupyternaut.config_manager")
        if manager is None:  # no jupyter-ai 3 (or no Jupyternaut) in this environment
            return
        from .jupyter_ai3 import apply_preset, litellm_provider

        provider = litellm_provider(os.environ, getattr(self, "service_url", ""))
        if provider is None:
            self.log.info("jupyter_llm_af: Jupyternaut not preset (OPENAI_BASE_URL points elsewhere)")
            return
        default = self.core.default_model()
        models = list(dict.fromkeys(m for m in [default, *self.core.catalogue.names] if m))
        if self._jupyternaut_follower is None:
            # A Slurm service knows its models only once a job has listed them: look again (an
            # in-memory read) and preset when they change; a user's choices are still never touched.
            self._jupyternaut_follower = PeriodicCallback(self._follow_models, JUPYTERNAUT_RECHECK_S * 1000)
            self._jupyternaut_follower.start()
        self._jupyternaut_models = (default, tuple(models))
        if not models:
            return
        admin_model = "initial_language_model" in self.app.config.get("JupyternautExtension", {})
        try:
            preset = apply_preset(manager, provider, models, default, admin_model=admin_model)
        except Exception:  # another jupyter-ai version's config: Jupyternaut still works, unpreset
            self.log.warning("jupyter_llm_af: could not preset Jupyternaut", exc_info=True)
            return
        self.log.info(
            "jupyter_llm_af: Jupyternaut's default model %s, models offered: %s",
            preset.marker.get("model_provider_id", "(left as configured)"),
            ", ".join(preset.marker.get("custom_models", [])) or "none",
        )

    def _follow_models(self) -> None:
        default = self.core.default_model()
        models = tuple(dict.fromkeys(m for m in [default, *self.core.catalogue.names] if m))
        if (default, models) != self._jupyternaut_models:
            self._preset_jupyternaut()

    async def stop_extension(self) -> None:
        if self._jupyternaut_follower is not None:
            self._jupyternaut_follower.stop()
        core = getattr(self, "core", None)
        if core is not None:
            await core.stop()


def load_extension(server_app: Any) -> None:  # legacy module-style loading
    LLMExtensionApp.load_classic_server_extension(server_app)
