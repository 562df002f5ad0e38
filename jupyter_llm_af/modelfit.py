"""GPU-memory-aware model admission: does a model fit one backend job's GPU, and which fit together.

Imports nothing from Jupyter. Sizes come from the site's ``model_sizes_gb`` table (the memory a
model needs once loaded, authoritative) or else from the backend's ``/api/tags`` ``size`` (bytes of
the weights file), scaled by :data:`LOAD_OVERHEAD`. GB are decimal (1e9 bytes), as ``ollama list``
shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A loaded model needs more than its weights file: the KV cache for its context, the CUDA context
# and compute buffers. ~10% is typical for Ollama's default context on Q4 models; sites with long
# contexts should list real sizes in ``model_sizes_gb``.
LOAD_OVERHEAD = 1.1


def _fmt(gb: float) -> str:
    """42.5 -> '42.5', 40.0 -> '40'."""
    return f"{round(gb, 1):g}"


def _aliases(name: str) -> tuple[str, ...]:
    # Ollama treats "llama3" and "llama3:latest" as the same model.
    if name.endswith(":latest"):
        return (name, name[: -len(":latest")])
    if ":" not in name:
        return (name, name + ":latest")
    return (name,)


def model_size_gb(
    name: str, sizes_table: Mapping[str, float], reported_bytes: int | float | None = None
) -> float | None:
    """Memory ``name`` needs when loaded, in GB; None when unknown.

    The site's table wins (it is the loaded size already); else the backend's reported file size
    with :data:`LOAD_OVERHEAD`.
    """
    for alias in _aliases(name):
        if alias in sizes_table:
            return float(sizes_table[alias])
    if reported_bytes:
        return round(float(reported_bytes) / 1e9 * LOAD_OVERHEAD, 2)
    return None


def check_fits(model: str, size_gb: float | None, gpu_memory_gb: float) -> str | None:
    """An error sentence when ``model`` cannot fit the GPU; None when it fits or cannot be judged."""
    if size_gb is None or gpu_memory_gb <= 0 or size_gb <= gpu_memory_gb:
        return None
    return (
        f"model '{model}' needs {_fmt(size_gb)} GB but the GPU has {_fmt(gpu_memory_gb)} GB; "
        "ask for a smaller (or more quantized) variant"
    )


def fits_together(models: Mapping[str, float | None], gpu_memory_gb: float) -> dict[str, Any]:
    """Which models fit the GPU alone, and a largest set that can stay loaded at once.

    The set is packed greedily smallest first, which maximises how many models stay loaded
    (a larger one evicts others when requested).
    """
    entries: list[dict[str, Any]] = []
    for name, size in models.items():
        if size is None or gpu_memory_gb <= 0:
            fits: bool | None = None
        else:
            fits = size <= gpu_memory_gb
        entries.append({"name": name, "size_gb": size, "fits": fits})

    result: dict[str, Any] = {"gpu_memory_gb": gpu_memory_gb, "models": entries}
    if gpu_memory_gb <= 0:
        result.update(largest_set=[], largest_set_gb=0.0, note="GPU memory is not configured: no fit checks.")
        return result

    sized = sorted(((e["size_gb"], e["name"]) for e in entries if e["fits"]), key=lambda t: (t[0], t[1]))
    chosen: list[str] = []
    used = 0.0
    for size, name in sized:
        if used + size <= gpu_memory_gb:
            chosen.append(name)
            used += size
    unknown = [e["name"] for e in entries if e["fits"] is None]
    too_big = [e["name"] for e in entries if e["fits"] is False]

    if len(chosen) == len(sized):
        parts = [
            f"All {len(sized)} models that fit can stay loaded together "
            f"({_fmt(used)} of {_fmt(gpu_memory_gb)} GB)."
        ]
    else:
        parts = [
            f"{len(chosen)} of {len(sized)} models that fit can stay loaded together "
            f"({_fmt(used)} of {_fmt(gpu_memory_gb)} GB); loading another evicts one."
        ]
    if too_big:
        parts.append(f"Too large for the GPU: {', '.join(too_big)}.")
    if unknown:
        parts.append(f"Size unknown: {', '.join(unknown)}.")
    result.update(largest_set=chosen, largest_set_gb=round(used, 2), note=" ".join(parts))
    return result
