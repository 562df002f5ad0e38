"""What the service knows about models: names, sizes, notes, and the last listings a backend gave.

Imports nothing from Jupyter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelMeta:
    """What a launcher knows about a model beyond the backend's list (embedded: the GGUF file)."""

    size: int = 0
    digest: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "gguf"
    modified_at: str = ""
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    note: str = ""  # shown where users pick models (e.g. "base model, not for chat")


class ModelCatalogue:
    """One place for what backends said about models: the names and sizes from the last listing,
    the listings themselves (served while no backend runs), and the site's notes.

    Filled by the pipeline and the service from live backend answers; read by ``/backend/state``,
    the GPU-fit checks and the listing routes. Freshness: ``age_s``.
    """

    def __init__(self, notes: dict[str, str] | None = None):
        self.notes: dict[str, str] = dict(notes or {})
        self.names: list[str] = []
        self.sizes_bytes: dict[str, int] = {}
        self._listings: dict[str, Any] = {}
        self._updated = 0.0
        # what OpenAI-protocol backends' /v1/models said, per base URL: (when, models)
        self._backend_models: dict[str, tuple[float, list[Any]]] = {}

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._updated if self._updated else math.inf

    def listing(self, service_path: str) -> Any | None:
        """The last answer a backend gave to a listing route (``/api/tags``, ``/v1/models``)."""
        return self._listings.get(service_path)

    def remember(self, service_path: str, doc: Any) -> None:
        self._listings[service_path] = doc
        if service_path == "/api/tags" and isinstance(doc, dict):
            self.update_from_tags(doc)

    def update_from_tags(self, tags: dict[str, Any]) -> None:
        models = [m for m in tags.get("models") or [] if isinstance(m, dict) and m.get("name")]
        self.names = [str(m["name"]) for m in models]
        self.sizes_bytes = {str(m["name"]): _int(m.get("size")) for m in models}
        self._updated = time.monotonic()

    def backend_models(self, base_url: str, max_age_s: float) -> list[Any] | None:
        """The models the backend at ``base_url`` last listed, if that is at most ``max_age_s`` old."""
        entry = self._backend_models.get(base_url)
        if entry is not None and time.monotonic() - entry[0] < max_age_s:
            return entry[1]
        return None

    def remember_backend_models(self, base_url: str, models: list[Any]) -> None:
        if base_url not in self._backend_models and len(self._backend_models) >= 64:
            self._backend_models.pop(next(iter(self._backend_models)))  # ended jobs: the oldest
        self._backend_models[base_url] = (time.monotonic(), models)

    def forget_backend_models(self) -> None:
        self._backend_models.clear()

    def annotate(self, tags: Any) -> Any:
        """Add the site's note to the entries of an /api/tags-shaped document (in place)."""
        if self.notes and isinstance(tags, dict):
            for m in tags.get("models") or []:
                if isinstance(m, dict) and m.get("name") in self.notes:
                    m["note"] = self.notes[m["name"]]
        return tags


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
