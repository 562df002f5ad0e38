"""Jupyternaut (jupyter-ai 3.x) answers from this service with no set-up.

How Jupyternaut picks its model (``jupyter-ai-jupyternaut`` 0.1, with jupyter-ai 3.2): the chat's
model picker offers the user's *custom models* (Jupyternaut's settings) at the top, then LiteLLM's
catalogue, and a built-in "Default" row, selected until the user picks another. "Default" resolves,
for every message, to ``model_provider_id`` of Jupyternaut's config file
(``{jupyter_data_dir}/jupyter_ai/config.json``, which the ``JupyternautExtension.
initial_language_model`` trait seeds); a model's keyword arguments come from ``fields[<id>]`` of
the same file (the ``model_parameters`` trait) or from the custom model's ``params``, and go to
LiteLLM. LiteLLM's ``openai/<model>`` reads ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` from the
server's environment at call time, and the extension has put those there
(:mod:`jupyter_llm_af.kernel_env`); see :func:`litellm_provider` for why not ``ollama_chat/``.

So the preset is: "Default" = the service's default model, and one custom model per model of the
service, each a LiteLLM id (``openai/<model>``) through the environment's route to this service. The
endpoint and token come from the environment, never from the config file: the file outlives the
server (the token would stay on disk, and the port changes at each start).

A user's own choice is never overwritten: a ``model_provider_id`` set by someone else (an admin's
``initial_language_model``, an older settings page) is kept, and so is every custom model the user
made, edited or deleted. What was preset is remembered in a small file next to Jupyternaut's, so a
later start can tell "ours, refresh it" from "the user's, leave it".

Imports nothing from Jupyter or Tornado; :func:`apply_preset` takes Jupyternaut's ``ConfigManager``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

CUSTOM_ID_PREFIX = "custom-jupyter-llm-af/"  # Jupyternaut treats ids starting with "custom-" as custom models
MARKER_NAME = "jupyter_llm_af-preset.json"
DESCRIPTION = "From this Jupyter server's LLM service (jupyter_llm_af)"

log = logging.getLogger("jupyter_llm_af")


class CustomModelDoc(TypedDict):
    """One entry of Jupyternaut's ``custom_models`` (its ``CustomModel``, as a dict)."""

    id: str
    name: str
    description: str | None
    model_id: str
    params: dict[str, Any]


class MarkerDoc(TypedDict, total=False):
    """What the extension preset last time (``jupyter_llm_af-preset.json``)."""

    model_provider_id: str
    custom_models: list[str]  # ids of the custom models it added that are (still) offered


@dataclass
class Preset:
    """What to write into Jupyternaut's config; ``None``: leave that part as it is."""

    model_provider_id: str | None = None
    custom_models: list[CustomModelDoc] | None = None
    marker: MarkerDoc = field(default_factory=lambda: MarkerDoc())

    @property
    def changes(self) -> bool:
        return self.model_provider_id is not None or self.custom_models is not None


def litellm_provider(environ: Mapping[str, str], service_url: str) -> str | None:
    """The LiteLLM provider that reaches this service through ``environ``, the server's environment:
    ``openai`` when ``OPENAI_BASE_URL`` points here, else ``None`` (the user pointed it at a server
    of their own: their key must not be sent here, nor ours there).

    Not ``ollama_chat``, although ``OLLAMA_API_BASE`` points here too: for Ollama models LiteLLM
    asks ``/api/show`` with a *synchronous* HTTP call from the server's event loop, the loop that
    serves ``/llm/`` itself, so the server stood still until that call timed out (a streamed answer
    paused for 100 s, Lab's pages did not load). Every backend serves the OpenAI chat API (Ollama
    natively, llama.cpp and vLLM passed through).
    """
    base = service_url if service_url.endswith("/") else service_url + "/"
    return "openai" if environ.get("OPENAI_BASE_URL", "").rstrip("/") == base + "v1" else None


def litellm_model_id(provider: str, model: str) -> str:
    return f"{provider}/{model}"


def custom_model(provider: str, model: str) -> CustomModelDoc:
    model_id = litellm_model_id(provider, model)
    return CustomModelDoc(
        id=CUSTOM_ID_PREFIX + model_id, name=model, description=DESCRIPTION, model_id=model_id, params={}
    )


def plan_preset(
    current_model: str | None,
    current_custom: Sequence[Mapping[str, Any]],
    marker: Mapping[str, Any],
    provider: str,
    models: Sequence[str],
    default_model: str | None,
    admin_model: bool = False,
) -> Preset:
    """What to change in Jupyternaut's config so that its chat answers from this service.

    ``current_model`` / ``current_custom``: ``model_provider_id`` and ``custom_models`` as they are
    now; ``marker``: what was preset last time (:class:`MarkerDoc`, ``{}`` at first); ``models``:
    the service's models, ``default_model`` its default; ``admin_model``: an
    ``initial_language_model`` is configured (that is the admin's choice, whatever its value).
    """
    preset = Preset()
    # "Default": ours to set if unset, or still what we set last time (the service's default may
    # have changed since); anyone else's value stays
    ours = marker.get("model_provider_id")
    wanted = litellm_model_id(provider, default_model) if default_model else None
    if not admin_model and (not current_model or current_model == ours):
        if wanted:
            if wanted != current_model:
                preset.model_provider_id = wanted
            preset.marker["model_provider_id"] = wanted
        elif current_model:  # ours, and the service's default is not known at this start: keep it
            preset.marker["model_provider_id"] = current_model

    # custom models: one per model of the service; the user's own entries untouched, ours kept only
    # while the service has the model, never re-added once the user deleted it
    offered = {litellm_model_id(provider, m): m for m in models}
    wanted_ids = {CUSTOM_ID_PREFIX + mid for mid in offered}
    previously = set(marker.get("custom_models", []))
    present = {str(entry.get("id")) for entry in current_custom}
    kept: list[CustomModelDoc] = []
    changed = False
    for entry in current_custom:
        entry_id = str(entry.get("id"))
        if entry_id.startswith(CUSTOM_ID_PREFIX) and entry_id not in wanted_ids:
            changed = True  # the service no longer has it (or another provider reaches it now)
            continue
        kept.append(_as_doc(entry))
    for model_id, model in offered.items():
        entry_id = CUSTOM_ID_PREFIX + model_id
        if entry_id in present or entry_id in previously:
            continue  # there already, or the user deleted it
        kept.append(custom_model(provider, model))
        changed = True
    if changed:
        preset.custom_models = kept
    # remembered: what is offered now, and what the user deleted while the service still has it
    preset.marker["custom_models"] = sorted(
        {e["id"] for e in kept if e["id"] in wanted_ids} | (previously & wanted_ids)
    )
    return preset


def _as_doc(entry: Mapping[str, Any]) -> CustomModelDoc:
    return CustomModelDoc(
        id=str(entry.get("id")),
        name=str(entry.get("name", "")),
        description=entry.get("description"),
        model_id=str(entry.get("model_id", "")),
        params=dict(entry.get("params") or {}),
    )


def read_marker(path: Path) -> MarkerDoc:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return MarkerDoc()
    marker = MarkerDoc()
    if isinstance(doc, dict) and isinstance(doc.get("model_provider_id"), str):
        marker["model_provider_id"] = doc["model_provider_id"]
    if isinstance(doc, dict) and isinstance(doc.get("custom_models"), list):
        marker["custom_models"] = [str(i) for i in doc["custom_models"]]
    return marker


def write_marker(path: Path, marker: MarkerDoc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, path)


def apply_preset(
    config_manager: Any,
    provider: str,
    models: Sequence[str],
    default_model: str | None,
    admin_model: bool = False,
) -> Preset:
    """Preset Jupyternaut's ``ConfigManager`` (``jupyter_ai_jupyternaut.config.ConfigManager``,
    created by its server extension) for this service; returns what was planned."""
    # jupyter-ai 3 is installed: its server extension made config_manager
    from jupyter_ai_jupyternaut.config import UpdateConfigRequest

    described = config_manager.get_config()
    current_custom = [m.model_dump() for m in getattr(described, "custom_models", [])]
    marker_path = Path(config_manager.config_path).parent / MARKER_NAME
    preset = plan_preset(
        described.model_provider_id,
        current_custom,
        read_marker(marker_path),
        provider,
        models,
        default_model,
        admin_model=admin_model,
    )
    if preset.changes:
        update: dict[str, Any] = {}
        if preset.model_provider_id is not None:
            update["model_provider_id"] = preset.model_provider_id
        if preset.custom_models is not None:
            update["custom_models"] = preset.custom_models
        config_manager.update_config(UpdateConfigRequest(**update))
    write_marker(marker_path, preset.marker)
    return preset
