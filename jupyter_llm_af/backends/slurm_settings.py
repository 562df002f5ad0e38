"""The Slurm launcher's settings: one plain dataclass, built once from the ``LLMService`` traits.

Imports nothing from Jupyter or traitlets (``from_config`` reads the Configurable's attributes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .slurm_cli import SlurmCommands
from .slurm_script import DEFAULT_BATCH_SCRIPT

MAX_PENDING_POLL_S = 5.0  # longest squeue interval while a job pends
STEADY_POLL_S = 5.0  # squeue + health probe while ready

# Readiness paths by what the job runs: Ollama answers "GET /"; llama-server, vLLM and SGLang answer
# it with 404 and have /health (llama-server: 503 while the model loads); llama-cpp-python has neither.
_READY_PATH_BY_COMMAND = (
    ("llama_cpp.server", "/v1/models"),
    ("llama-server", "/health"),
    ("vllm", "/health"),
    ("sglang", "/health"),
    ("ollama", "/"),
)


def ready_path_for(setting: str, protocol: str, command: str) -> str:
    """The path probed until a job's backend is ready: ``setting`` unless it is ``auto``/empty."""
    if setting and setting != "auto":
        return setting if setting.startswith("/") else "/" + setting
    lowered = command.lower()
    for marker, path in _READY_PATH_BY_COMMAND:
        if marker in lowered:
            return path
    return "/health" if protocol == "openai" else "/"


@dataclass
class SlurmSettings:
    """Everything :class:`~jupyter_llm_af.backends.slurm.SlurmBackend` needs to know about the site."""

    state_dir: Path
    job_name: str = "jupyter-llm-af"
    backend_command: str = "ollama serve"
    backend_env: dict[str, str] = field(default_factory=dict)
    partition: str = ""
    account: str = ""
    qos: str = ""
    gres: str = "gpu:1"
    time_limit: str = "04:00:00"
    extra_directives: list[str] = field(default_factory=list)
    batch_script: str = DEFAULT_BATCH_SCRIPT
    submit_command: str = SlurmCommands.submit
    query_command: str = SlurmCommands.query
    start_command: str = SlurmCommands.start_estimate
    cancel_command: str = SlurmCommands.cancel
    ping_command: str = SlurmCommands.ping
    command_timeout: float = SlurmCommands.timeout
    slurm_env: dict[str, str] | None = None
    user: str | None = None
    renew_before: float = 600.0
    idle_timeout: float = 1800.0
    backend_ready_timeout: float = 600.0
    cancel_on_shutdown: bool = True
    submit_backoff: float = 30.0
    probe_timeout: float = 3.0
    warm_timeout: float = 300.0
    warm_keep_alive: str = ""  # empty: OLLAMA_KEEP_ALIVE from backend_env, else 30m
    max_pending_poll: float = MAX_PENDING_POLL_S
    steady_poll: float = STEADY_POLL_S
    ready_path: str = "auto"  # resolved by ready_path_for (auto: from the command)
    protocol: str = "auto"  # what the backend speaks (backend_protocol), for ready_path "auto"
    gateway: bool = True  # the per-job gateway guards the job's port (off: a site firewall does)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.backend_env = {str(k): str(v) for k, v in self.backend_env.items()}
        self.extra_directives = list(self.extra_directives)
        for key in self.backend_env:
            if not key.isidentifier():
                raise ValueError(f"slurm_backend_env: {key!r} is not a valid environment variable name")
        if not self.warm_keep_alive:
            self.warm_keep_alive = self.backend_env.get("OLLAMA_KEEP_ALIVE") or "30m"
        self.ready_path = ready_path_for(self.ready_path, self.protocol, self.backend_command)

    def commands(self) -> SlurmCommands:
        return SlurmCommands(
            submit=self.submit_command,
            query=self.query_command,
            start_estimate=self.start_command,
            cancel=self.cancel_command,
            ping=self.ping_command,
            timeout=self.command_timeout,
        )

    @classmethod
    def from_config(cls, cfg: Any, runtime_dir: str | None = None, **overrides: Any) -> SlurmSettings:
        """Read the ``LLMService`` Configurable ``cfg``.

        ``runtime_dir`` (the Jupyter runtime dir) holds the state dir when ``slurm_state_dir`` is empty.
        """
        state_dir = getattr(cfg, "slurm_state_dir", "") or ""
        if not state_dir:
            if runtime_dir is None:
                try:
                    from jupyter_core.paths import jupyter_runtime_dir

                    runtime_dir = jupyter_runtime_dir()
                except ImportError:
                    home = os.path.expanduser("~")
                    runtime_dir = os.path.join(home, ".local", "share", "jupyter", "runtime")
            state_dir = os.path.join(runtime_dir, "llm-af-slurm")
        values: dict[str, Any] = dict(
            state_dir=state_dir,
            job_name=cfg.slurm_job_name,
            backend_command=cfg.slurm_backend_command,
            backend_env=dict(cfg.slurm_backend_env),
            partition=cfg.slurm_partition,
            account=cfg.slurm_account,
            qos=cfg.slurm_qos,
            gres=cfg.slurm_gres,
            time_limit=cfg.slurm_time_limit,
            extra_directives=list(cfg.slurm_extra_directives),
            batch_script=cfg.slurm_batch_script,
            submit_command=cfg.slurm_submit_command,
            query_command=cfg.slurm_query_command,
            start_command=cfg.slurm_start_command,
            cancel_command=cfg.slurm_cancel_command,
            ping_command=cfg.slurm_ping_command,
            command_timeout=cfg.slurm_command_timeout,
            renew_before=cfg.renew_before,
            idle_timeout=cfg.idle_timeout,
            backend_ready_timeout=cfg.backend_ready_timeout,
            cancel_on_shutdown=cfg.cancel_on_shutdown,
            submit_backoff=cfg.submit_backoff,
            probe_timeout=float(cfg.connect_timeout),
            ready_path=cfg.slurm_ready_path,
            protocol=cfg.backend_protocol,
            gateway=cfg.slurm_gateway,
        )
        values.update(overrides)
        return cls(**values)


# Per-job settings a pool may override (slurm_pools entries), by their SlurmSettings field name;
# the slurm_* trait names are accepted too (``slurm_gres`` = ``gres``).
POOL_JOB_FIELDS = frozenset(
    {
        "backend_command",
        "backend_env",
        "partition",
        "account",
        "qos",
        "gres",
        "time_limit",
        "extra_directives",
        "batch_script",
        "renew_before",
        "idle_timeout",
        "backend_ready_timeout",
        "ready_path",
        "gateway",
        "warm_timeout",
        "warm_keep_alive",
    }
)
POOL_OWN_FIELDS = frozenset({"models", "max_jobs", "min_jobs", "gpu_memory_gb"})
DEFAULT_POOL = "default"


@dataclass
class PoolSpec:
    """One pool of jobs: the default one (the ``slurm_*`` settings) or a ``slurm_pools`` entry."""

    name: str
    settings: SlurmSettings  # per job; the lanes' job names are derived from settings.job_name
    max_jobs: int = 1
    min_jobs: int = 0
    gpu_memory_gb: float = 0.0  # per job; 0: no fit checks
    models: frozenset[str] = frozenset()  # listed models go here; empty: whatever fits (default)

    def lane_name(self, index: int, base: str) -> str:
        """Job name of lane ``index`` (1-based): the default pool's first lane keeps ``base``, so
        a running site's job is adopted after an upgrade; others are ``base-2``, ``base-large-1``."""
        if self.name == DEFAULT_POOL:
            return base if index == 1 else f"{base}-{index}"
        return f"{base}-{self.name}-{index}"


@dataclass
class FleetSettings:
    """How many jobs, when to grow and shrink, and the pools (``slurm_max_jobs``, ``slurm_pools``…)."""

    pools: list[PoolSpec]  # the default pool first
    scale_out_wait: float = 30.0  # the oldest waiting request has waited this long…
    scale_out_depth: int = 0  # …or this many wait per job of the pool (0: off)…
    scale_out_after: float = 60.0  # …for this long without a break: start one more job
    base_name: str = "jupyter-llm-af"

    @property
    def single(self) -> bool:
        """Today's one job (with renewal): no fleet needed."""
        default = self.pools[0]
        return len(self.pools) == 1 and default.max_jobs <= 1 and default.min_jobs <= 0

    def pool(self, name: str) -> PoolSpec:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    @classmethod
    def from_config(cls, cfg: Any, default: SlurmSettings) -> FleetSettings:
        """Read ``slurm_max_jobs``, ``slurm_min_jobs``, ``slurm_scale_out_*`` and ``slurm_pools``."""
        max_jobs, min_jobs = int(cfg.slurm_max_jobs), int(cfg.slurm_min_jobs)
        if max_jobs < 1:
            raise ValueError("slurm_max_jobs must be at least 1")
        if not 0 <= min_jobs <= max_jobs:
            raise ValueError(f"slurm_min_jobs must be between 0 and slurm_max_jobs ({max_jobs})")
        pools = [
            PoolSpec(
                DEFAULT_POOL,
                default,
                max_jobs=max_jobs,
                min_jobs=min_jobs,
                gpu_memory_gb=float(cfg.gpu_memory_gb or 0.0),
            )
        ]
        for name, entry in dict(cfg.slurm_pools or {}).items():
            pools.append(pool_from_entry(str(name), entry, default))
        return cls(
            pools=pools,
            scale_out_wait=float(cfg.slurm_scale_out_wait),
            scale_out_depth=int(cfg.slurm_scale_out_depth),
            scale_out_after=float(cfg.slurm_scale_out_after),
            base_name=default.job_name,
        )


def pool_from_entry(name: str, entry: Any, default: SlurmSettings) -> PoolSpec:
    """One ``slurm_pools`` entry → a :class:`PoolSpec`; unknown keys are an error (typos cost GPUs)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or name == DEFAULT_POOL:
        raise ValueError(f"slurm_pools: {name!r} is not a valid pool name (letters, digits, - and _)")
    if not isinstance(entry, dict):
        raise ValueError(f"slurm_pools[{name!r}] must be a dict of settings")
    job: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for raw_key, value in entry.items():
        key = str(raw_key)
        key = key[len("slurm_") :] if key.startswith("slurm_") else key
        if key in POOL_JOB_FIELDS:
            job[key] = value
        elif key in POOL_OWN_FIELDS:
            own[key] = value
        else:
            known = ", ".join(sorted(POOL_JOB_FIELDS | POOL_OWN_FIELDS))
            raise ValueError(f"slurm_pools[{name!r}]: unknown setting {raw_key!r} (known: {known})")
    if "backend_env" in job:
        job["backend_env"] = {**default.backend_env, **dict(job["backend_env"])}
    if "warm_keep_alive" not in job and "backend_env" in job:
        job["warm_keep_alive"] = ""  # from this pool's OLLAMA_KEEP_ALIVE
    if "ready_path" not in job and "backend_command" in job:
        job["ready_path"] = "auto"  # picked again for this pool's command
    settings = SlurmSettings(**{**_fields(default), **job})
    max_jobs = int(own.get("max_jobs", 1))
    min_jobs = int(own.get("min_jobs", 0))
    if max_jobs < 1 or not 0 <= min_jobs <= max_jobs:
        raise ValueError(f"slurm_pools[{name!r}]: need 0 <= min_jobs <= max_jobs and max_jobs >= 1")
    models = own.get("models", [])
    if isinstance(models, str) or not all(isinstance(m, str) for m in models):
        raise ValueError(f"slurm_pools[{name!r}]['models'] must be a list of model names")
    return PoolSpec(
        name,
        settings,
        max_jobs=max_jobs,
        min_jobs=min_jobs,
        gpu_memory_gb=float(own.get("gpu_memory_gb", 0.0) or 0.0),
        models=frozenset(models),
    )


def _fields(settings: SlurmSettings) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}
