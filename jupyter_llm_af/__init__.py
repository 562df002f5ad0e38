"""jupyter_llm_af: a shared, on-demand LLM service for Jupyter at HPC analysis facilities.

Ollama's API and the OpenAI API at ``{base_url}llm/`` of every Jupyter server, backed by a
local process, a site URL, or a Slurm GPU job started on demand.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-llm-af"}]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .extension import LLMExtensionApp

    return [{"module": "jupyter_llm_af", "app": LLMExtensionApp}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_llm_af``: the %llm / %%llm magics."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def openai_client(**kwargs: Any) -> Any:
    """An ``openai.OpenAI`` client preconfigured for this service (long timeouts for queued use)."""
    from .clients import openai_client as _make

    return _make(**kwargs)


_CLIENTS = {
    "async_openai_client",
    "async_ollama_client",
    "state",
    "queue",
    "models",
    "service_url",
    "service_token",
}


def __getattr__(name: str) -> Any:
    """Lazy access to the client helpers (``jupyter_llm_af.state()``, ``.models()``, ...)."""
    if name in _CLIENTS or name == "clients":
        # import_module, not `from . import`: that would ask this __getattr__ again
        clients = importlib.import_module(".clients", __name__)
        return clients if name == "clients" else getattr(clients, name)
    raise AttributeError(name)


def ollama_client(**kwargs: Any) -> Any:
    """An ``ollama.Client`` preconfigured for this service (long timeouts for queued use)."""
    from .clients import ollama_client as _make

    return _make(**kwargs)
