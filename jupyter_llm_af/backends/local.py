"""backend='local': the inference server as a child process on this machine.

Started on a free loopback port, probed for readiness, restarted on the next request if it died,
and stopped (its whole process group: SIGTERM, a short grace, then SIGKILL) when the service stops.

The child gets its own process group but stays in the service's session: under Linux autogroup
scheduling a new session is a new scheduling group, and the embedded server should share the
service's rather than compete as a stranger (see benchmarks/busy_neighbour.py).

Files: a log per start (``jupyter-llm-af-local-<pid>-<port>.log`` in ``log_dir``), removed after a
clean stop and kept when the backend failed (its path is in the error); files that the command owns
(:class:`LaunchCommand`, e.g. the embedded router's presets) are written before each start and
removed when the backend stops.
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

import httpx

from ..errors import BackendUnavailable
from ..state import LauncherState
from .base import Backend, Endpoint


class LaunchCommand(list[str]):
    """An argv that owns files: ``files`` (path -> content) exist while the process runs.

    The launcher writes them before each start and removes them when the backend stops, so a
    service leaves nothing behind in its runtime directory.
    """

    def __init__(self, argv: Sequence[str], files: dict[str, str] | None = None):
        super().__init__(argv)
        self.files = dict(files or {})


def _child_setup() -> None:
    """In the child before exec: own process group (killpg reaches it and its children) in the
    service's session; SIGTERM if the service dies (even by SIGKILL), never orphaned."""
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _group_in_session(pgid: int) -> bool:
    """Whether a live process of process group ``pgid`` is in this process's session."""
    sid = os.getsid(0)
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state, ppid, pgrp, session
        if fields[0] != "Z" and int(fields[2]) == pgid and int(fields[3]) == sid:
            return True
    return False


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
        stop_grace: float = 2.0,
    ):
        super().__init__()
        if not command:
            raise ValueError("the local backend needs a command")
        self.command = list(command)
        self.owned_files: dict[str, str] = dict(getattr(command, "files", {}))
        # SIGTERM -> SIGKILL: llama-server can hang in "cancel task" after cancelled streams
        self.stop_grace = stop_grace
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
        self._kept_log: str | None = None  # the log of a failed run, left for whoever reads the error

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
        try:
            self._write_owned_files()
            log = open(self.log_path, "ab")  # noqa: ASYNC230 - a local log file, opened once per start
        except OSError as e:
            self._fail(f"cannot write in {self.log_dir}: {e}")
            return
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=_child_setup if sys.platform == "linux" else os.setpgrp,
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
        self._fail(f"did not answer {self.ready_path} within {self.start_timeout:.0f} s: {self._log_tail()}")
        await self._terminate()

    def _fail(self, message: str) -> None:
        self.state = "failed"
        if self.log_path and os.path.exists(self.log_path):
            message += f" (log: {self.log_path})"  # kept: it says why
            self._kept_log = self.log_path
        self.last_error = message
        self._failed_at = time.monotonic()

    def _write_owned_files(self) -> None:
        for path, content in self.owned_files.items():
            with open(path, "w") as f:
                f.write(content)

    def _remove_owned_files(self) -> None:
        for path in self.owned_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

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
        """Stop the process group: SIGTERM, ``stop_grace`` seconds, then SIGKILL to what is left
        (the router's model children included: they share its group). A log of a run we stopped
        is removed; one of a run that died or failed by itself is kept."""
        proc = self.proc
        if proc is None:
            return
        died_by_itself = proc.returncode is not None
        if not died_by_itself:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace)
            except asyncio.TimeoutError:
                pass
        # children may outlive the leader (or ignore SIGTERM): the group goes, whatever is left.
        # A leader reaped long ago may have had its pid reused: only a group still in our session
        if not died_by_itself or _group_in_session(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        self.proc = None
        if self.log_path and self.log_path != self._kept_log and not died_by_itself:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log_path)

    async def shutdown(self) -> None:
        if self._starting and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        await self._terminate()
        self._remove_owned_files()
        self.state = "idle"

    async def control(self, action: str) -> LauncherState:
        if action == "stop":
            await self.shutdown()
        elif action == "start":
            self._start_task()
        else:
            return await super().control(action)
        return self.describe(admin=True)

    def describe(self, admin: bool = False) -> LauncherState:
        if self.state == "ready" and not self._alive():
            self._fail(f"exited with code {self.proc.returncode if self.proc else '?'}: {self._log_tail()}")
        messages = {
            "idle": "Not running (starts on first request)",
            "starting": f"Starting the local backend ({self.label})",
            "ready": f"Ready (local {self.label})",
            "failed": f"The local backend failed: {self.last_error}",
        }
        out: LauncherState = {
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
