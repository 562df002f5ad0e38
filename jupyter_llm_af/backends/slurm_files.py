"""The launcher's state dir on the shared filesystem: endpoint files, job output.

Blocking file I/O on purpose (small files); the launcher calls these through
``asyncio.to_thread`` because a shared filesystem can stall.

A job writes ``endpoint-<jobid>.json`` (``{"host", "port", "job_id"}``), renamed into place so
it is never read half-written, and removes it when its backend exits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EndpointRecord:
    """What a job published about where its backend listens."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"


class StateDir:
    """Files the service and its jobs share, by job id."""

    def __init__(self, path: Path, job_name: str):
        self.path = path
        self.job_name = job_name

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def endpoint_path(self, job_id: str) -> Path:
        return self.path / f"endpoint-{job_id}.json"

    def output_path(self, job_id: str) -> Path:
        return self.path / f"{self.job_name}-{job_id}.out"

    def read_endpoint(self, job_id: str) -> EndpointRecord | None:
        """The job's endpoint, or None while it has not written one (or wrote nonsense)."""
        try:
            data = json.loads(self.endpoint_path(job_id).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        try:
            port = int(data["port"])
        except (TypeError, KeyError, ValueError):
            return None
        return EndpointRecord(host=str(data.get("host") or "127.0.0.1"), port=port)

    def remove_endpoint(self, job_id: str) -> None:
        self.endpoint_path(job_id).unlink(missing_ok=True)

    def output_tail(self, job_id: str, lines: int = 5) -> str:
        """The last lines of the job's output, joined with `` | `` (for error messages)."""
        try:
            text = self.output_path(job_id).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])
