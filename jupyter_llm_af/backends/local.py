"""backend='local': the inference server as a child process on this machine.

Started on a free loopback port, probed for readiness, restarted on the next request if it died,
and stopped (its whole process group) when the service stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ..errors import BackendUnavailable
from .base import Backend, Endpoint


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the service dies (even by SIGKILL), never orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalProcessBackend(Backend):
    kind = "local"

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        start_timeout: float = 120.0,
        ready_path: str = "/",
        label: str = "",
        host: str = "127.0.0.1",
        log_dir: str | None = None,
    ):
        super().__init__()
        if not command:
            raise ValueError("the local backend needs a command")
        self.command = list(command)
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.ready_path = ready_path
        self.label = label or os.path.basename(self.command[0])
        self.host = host
        self.log_dir = log_dir or tempfile.gettempdir()
        self.proc: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.state = "idle"
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._starting: asyncio.Task | None = None
        self._failed_at = 0.0
        self.log_path: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serving_url(self) -> str | None:
        return self.url if self.state == "ready" and self._alive() else None

    async def start(self) -> None:
        # Start in the background so the Jupyter server is up at once; requests wait for it.
        self._start_task()

    def _start_task(self) -> asyncio.Task:
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._spawn_and_probe())
        return self._starting

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def ready_endpoint(self, deadline: float) -> Endpoint:
        if self.state == "ready" and self._alive():
            return Endpoint(self.url, f"local:{self.port}")
        if self.state == "failed" and time.monotonic() - self._failed_at < 2.0 and self.last_error:
            raise BackendUnavailable(f"local backend {self.label} failed: {self.last_error}", 503, 5)
        task = self._start_task()
        remaining = deadline - time.monotonic()
        try:
            # shield: one waiter giving up must not abort the start for the others
            await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.001))
        except asyncio.TimeoutError:
            raise BackendUnavailable(
                f"local backend {self.label} is still starting; retry shortly", 503, 10
            ) from None
        if self.state != "ready":
            raise BackendUnavailable(f"local backend {self.label} failed: {self.last_error}", 503, 5)
        return Endpoint(self.url, f"local:{self.port}")

    async def _spawn_and_probe(self) -> None:
        if self._alive() and self.state == "ready":
            return
        await self._terminate()
        self.state = "starting"
        self.port = free_port(self.host)
        argv = [a.replace("{port}", str(self.port)).replace("{host}", self.host) for a in self.command]
        env = {**os.environ, **self.env, "OLLAMA_HOST": f"{self.host}:{self.port}"}
        self.log_path = os.path.join(self.log_dir, f"jupyter-llm-af-local-{os.getpid()}-{self.port}.log")
        log = open(self.log_path, "ab")  # noqa: ASYNC230 - a local log file, opened once per start
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # own process group: we stop its children too
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as e:
            self._fail(f"cannot run {argv[0]}: {e}")
            return
        finally:
            log.close()
        self.started_at = time.monotonic()
        deadline = time.monotonic() + self.start_timeout
        delay = 0.05
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self._alive():
                    self._fail(f"exited with code {self.proc.returncode}: {self._log_tail()}")
                    return
                try:
                    resp = await client.get(self.url + self.ready_path)
                    if resp.status_code == 200:
                        self.state = "ready"
                        self.last_error = None
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        await self._terminate()
        self._fail(f"did not answer {self.ready_path} within {self.start_timeout:.0f} s: {self._log_tail()}")

    def _fail(self, message: str) -> None:
        self.state = "failed"
        self.last_error = message
        self._failed_at = time.monotonic()

    def _log_tail(self, n: int = 3) -> str:
        try:
            with open(self.log_path or "", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4000))
                lines = f.read().decode(errors="replace").strip().splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def shutdown(self) -> None:
        if self._starting and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        await self._terminate()
        self.state = "idle"

    async def control(self, action: str) -> dict[str, Any]:
        if action == "stop":
            await self.shutdown()
        elif action == "start":
            self._start_task()
        else:
            return await super().control(action)
        return self.describe(admin=True)

    def describe(self, admin: bool = False) -> dict[str, Any]:
        if self.state == "ready" and not self._alive():
            self._fail(f"exited with code {self.proc.returncode if self.proc else '?'}: {self._log_tail()}")
        messages = {
            "idle": "Not running (starts on first request)",
            "starting": f"Starting the local backend ({self.label})",
            "ready": f"Ready (local {self.label})",
            "failed": f"The local backend failed: {self.last_error}",
        }
        out: dict[str, Any] = {
            "kind": self.kind,
            "state": self.state,
            "message": messages.get(self.state, self.state),
            "job": None,
            "successor": None,
            "idle_s": round(time.monotonic() - self.last_activity, 1),
            "last_error": self.last_error,
        }
        if admin:
            out["backend_url"] = self.url if self.port else None
            out["pid"] = self.proc.pid if self._alive() and self.proc else None
        return out

    def wait_message(self) -> str:
        return f"the local backend ({self.label}) is {self.state}"
