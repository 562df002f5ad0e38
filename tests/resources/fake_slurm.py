"""An in-memory Slurm for :class:`~jupyter_llm_af.backends.slurm.SlurmBackend` (its ``cli``).

Same surface as :class:`~jupyter_llm_af.backends.slurm_cli.SlurmCLI` (``SlurmOps``), with the
errors the real commands raise (texts from ``shared/notes/slurm.md`` §6h), so the launcher's
decisions can be driven in milliseconds. A "running" job is a tiny HTTP server in this process
on 127.0.0.1 that writes the job's endpoint file into the state dir, as the batch script does.
The real-cluster tests (``tests/test_slurm.py``) stay the authority on how Slurm behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jupyter_llm_af.backends.slurm_cli import (
    JobInfo,
    JobPhase,
    SlurmError,
    SlurmSubmitError,
    job_phase,
    parse_duration,
)
from jupyter_llm_af.gateway import SECRET_HEADER

CONTROLLER_DOWN = "Unable to contact slurm controller (connect failure)"


class FakeBackendServer:
    """A backend that answers 200 on every path (or 503 while ``healthy`` is False).

    With ``secret`` it stands for a job behind its gateway: 401 without the secret header.
    """

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.healthy = True
        self.models: list[dict[str, object]] = []  # what its /api/ps lists (Ollama's fields)
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)
            }
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            self.requests.append((method, path, headers))
            if self.secret is not None and headers.get(SECRET_HEADER.lower()) != self.secret:
                status, body = 401, b'{"error": "this port only serves the LLM service"}'
            elif path == "/api/ps":
                status, body = 200, json.dumps({"models": self.models}).encode()
            elif self.healthy:
                status, body = 200, b"Ollama is running"
            else:
                status, body = 503, b'{"error": "loading model"}'
            reason = {200: "OK", 401: "Unauthorized"}.get(status, "Service Unavailable")
            length_line = f"Content-Length: {len(body)}\r\n"
            head_out = f"HTTP/1.1 {status} {reason}\r\n{length_line}Connection: close\r\n\r\n"
            writer.write(head_out.encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


@dataclass
class FakeJob:
    id: str
    name: str
    script: str
    state: str = "PENDING"
    reason: str = "None"
    time_limit_s: float = 3600.0
    started_mono: float | None = None
    time_left_override: float | None = None  # pretend the job has this much time left
    server: FakeBackendServer | None = None
    submit_time: datetime = field(default_factory=lambda: datetime.now().astimezone())

    def info(self) -> JobInfo:
        running = self.state == "RUNNING"
        if job_phase(self.state) is JobPhase.ENDED:
            left: float | None = None
        elif running and self.time_left_override is not None:
            left = self.time_left_override
        elif running and self.started_mono is not None and not math.isinf(self.time_limit_s):
            left = max(0.0, self.time_limit_s - (time.monotonic() - self.started_mono))
        else:
            left = self.time_limit_s
        return JobInfo(
            id=self.id,
            name=self.name,
            state=self.state,
            reason="" if self.reason == "None" else self.reason,
            nodes="fakenode" if running else "",
            time_left_s=left,
            time_limit_s=self.time_limit_s,
            submit_time=self.submit_time,
        )


class FakeSlurm:
    """Slurm in memory. ``auto_run``: a submitted job runs and its backend answers at once."""

    def __init__(self, state_dir: Path, *, auto_run: bool = True, first_id: int = 100):
        self.state_dir = Path(state_dir)
        self.auto_run = auto_run
        self.calls: Counter[str] = Counter()
        self.jobs: dict[str, FakeJob] = {}
        self.controller_up = True
        self.reject_with: str | None = None  # sbatch's stderr while submissions are rejected
        self.submit_delay = 0.0  # seconds sbatch takes (widens races)
        self.submit_unreachable = False  # sbatch cannot reach the controller (squeue still can)
        self.lose_submit_reply = False  # sbatch times out after the job was queued
        self._next_id = first_id

    # -- the SlurmOps surface --------------------------------------------------------------------
    async def submit(self, script: str) -> str:
        self.calls["submit"] += 1
        await asyncio.sleep(self.submit_delay)
        argv = ["sbatch", "--parsable"]
        if not self.controller_up or self.submit_unreachable:
            stderr = f"sbatch: error: Batch job submission failed: {CONTROLLER_DOWN}"
            raise SlurmSubmitError(f"sbatch failed: {stderr}", argv, 1, stderr)
        if self.reject_with is not None:
            raise SlurmSubmitError(f"sbatch failed: {self.reject_with}", argv, 1, self.reject_with)
        job_id = str(self._next_id)
        self._next_id += 1
        name = _directive(script, "job-name") or "sbatch"
        limit = parse_duration(_directive(script, "time") or "60") or 3600.0
        self.jobs[job_id] = FakeJob(id=job_id, name=name, script=script, time_limit_s=limit)
        if self.auto_run:
            await self.run(job_id)
        if self.lose_submit_reply:
            self.lose_submit_reply = False
            error = SlurmSubmitError(
                "sbatch --parsable took longer than 15 s (killed)", argv, None, "timed out"
            )
            error.timed_out = True
            raise error
        return job_id

    async def list_jobs(self, job_name: str, *, all_states: bool = False) -> list[JobInfo]:
        self.calls["query"] += 1
        if not self.controller_up:
            raise SlurmError(
                f"squeue failed: slurm_load_jobs error: {CONTROLLER_DOWN}",
                ["squeue"],
                1,
                f"slurm_load_jobs error: {CONTROLLER_DOWN}",
            )
        return [
            job.info()
            for job in self.jobs.values()
            if job.name == job_name and (all_states or job_phase(job.state) is not JobPhase.ENDED)
        ]

    async def estimated_start(self, job_id: str) -> datetime | None:
        self.calls["start_estimate"] += 1
        return None

    async def cancel(self, *job_ids: str) -> None:
        self.calls["cancel"] += 1
        if not self.controller_up:
            stderr = f"scancel: error: Kill job error on job id {job_ids[0]}: {CONTROLLER_DOWN}"
            raise SlurmError(f"scancel failed: {stderr}", ["scancel"], 8, stderr)
        for job_id in job_ids:
            if job_id in self.jobs:
                await self.end(job_id, "CANCELLED")

    async def ping(self) -> bool:
        self.calls["ping"] += 1
        return self.controller_up

    # -- what the cluster does on its own --------------------------------------------------------
    async def run(self, job_id: str, *, serve: bool = True) -> FakeBackendServer | None:
        """The job starts; with ``serve`` its backend listens and the endpoint file appears.

        A script with the gateway on (``GATEWAY=true``) gets what the real one does: its secret
        file renamed to ``secret-<jobid>``, a server that wants the secret, ``"gateway": true``.
        """
        job = self.jobs[job_id]
        job.state, job.reason, job.started_mono = "RUNNING", "None", time.monotonic()
        secret = None
        if "\nGATEWAY=true\n" in job.script:
            named = self.state_dir / f"secret-{job_id}"
            if not named.exists():
                nonce_file = re.search(r'mv "([^"]+)" "\$SECRET_FILE"', job.script)
                assert nonce_file, "the script names no secret file"
                os.replace(nonce_file.group(1), named)
            secret = named.read_text().strip()
        if serve:
            job.server = FakeBackendServer(secret)
            await job.server.start()
            self.publish(job_id, job.server.port, gateway=secret is not None)
        return job.server

    def publish(self, job_id: str, port: int, gateway: bool = False) -> None:
        path = self.state_dir / f"endpoint-{job_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": "127.0.0.1", "port": port, "job_id": job_id, "gateway": gateway}))
        tmp.replace(path)

    async def end(self, job_id: str, state: str = "COMPLETED") -> None:
        """The job ends (``TIMEOUT``, ``CANCELLED``, ``FAILED``…): backend gone, endpoint file removed."""
        job = self.jobs[job_id]
        job.state = state
        if job.server is not None:
            await job.server.stop()
            job.server = None
        if job.started_mono is not None:  # the script's last line ran
            (self.state_dir / f"endpoint-{job_id}.json").unlink(missing_ok=True)
            (self.state_dir / f"secret-{job_id}").unlink(missing_ok=True)

    def pend(self, job_id: str, reason: str = "Resources") -> None:
        self.jobs[job_id].reason = reason

    def active(self, job_name: str | None = None) -> list[FakeJob]:
        return [
            j
            for j in self.jobs.values()
            if job_phase(j.state) is not JobPhase.ENDED and (job_name is None or j.name == job_name)
        ]

    async def close(self) -> None:
        for job in self.jobs.values():
            if job.server is not None:
                await job.server.stop()
                job.server = None


def _directive(script: str, option: str) -> str | None:
    match = re.search(rf"^#SBATCH --{re.escape(option)}=(\S+)", script, re.MULTILINE)
    return match.group(1) if match else None
