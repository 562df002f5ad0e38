"""What the service knows about models: names, sizes, notes, and the last listings a backend gave.

Imports nothing from Jupyter.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
