"""The launcher's state dir on the shared filesystem: endpoint files, job secrets, job output.

Blocking file I/O on purpose (small files); the launcher calls these through
``asyncio.to_thread`` because a shared filesystem can stall.

- ``endpoint-<jobid>.json``: ``{"host", "port", "job_id", "gateway"}``, written by the job and
  renamed into place so it is never read half-written; the job removes it when its backend exits.
- ``secret-<nonce>``: the per-job gateway secret, created 0600 by the service before sbatch (the
  batch script names this file, never the secret); the running job renames it ``secret-<jobid>``
  so that a restarted service finds it for the job it adopts. Never on a command line, never in
  the endpoint file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EndpointRecord:
    """What a job published about where its backend listens."""

    host: str
    port: int
    gateway: bool = False  # a gateway guards the port: requests need the job's secret

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

    def check_writable(self) -> None:
        """Raise OSError unless a file can be created here now (permission bits do not stop root)."""
        self.create()
        probe = self.path / f".write-check-{os.getpid()}"
        probe.write_text("")
        probe.unlink()

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
        host = str(data.get("host") or "127.0.0.1")
        return EndpointRecord(host=host, port=port, gateway=data.get("gateway") is True)

    def remove_endpoint(self, job_id: str) -> None:
        self.endpoint_path(job_id).unlink(missing_ok=True)

    # -- gateway secrets -----------------------------------------------------------------------
    def secret_path(self, name: str) -> Path:
        """``name``: the nonce before the job runs, the job id once it has renamed the file."""
        return self.path / f"secret-{name}"

    def new_secret(self) -> tuple[str, str]:
        """A fresh secret in a new 0600 file; returns (nonce naming the file, secret)."""
        secret = secrets.token_urlsafe(32)
        while True:
            nonce = secrets.token_hex(8)
            try:
                fd = os.open(self.secret_path(nonce), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            return nonce, secret

    def read_secret(self, name: str) -> str | None:
        try:
            return self.secret_path(name).read_text().strip() or None
        except OSError:
            return None

    def remove_secret(self, *names: str) -> None:
        for name in names:
            self.secret_path(name).unlink(missing_ok=True)

    def output_tail(self, job_id: str, lines: int = 5) -> str:
        """The last lines of the job's output, joined with `` | `` (for error messages)."""
        try:
            text = self.output_path(job_id).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])
