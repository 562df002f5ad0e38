"""A real JupyterHub for tests/test_hub.py: configurable-http-proxy, the managed ``llm`` service
(``jupyter-llm-af serve`` in front of the Ollama double), users alice, bob and admin.

All state lives in one temporary folder; ports are free loopback ports; the hub is stopped by PID
(SIGTERM: it stops its proxy, services and single-user servers), then whatever of its process tree
is still alive is ended by PID too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .conftest import PY, ROOT, Proc, free_port, start_double

HUB_CONFIG = ROOT / "tests" / "hub" / "jupyterhub_config.py"
DEFAULT_CHP = ROOT / ".ci" / "cache" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
USERS = ("alice", "bob")


def chp_bin() -> str:
    return os.environ.get("CHP_BIN") or str(DEFAULT_CHP)


def chp_missing() -> str | None:
    path = chp_bin()
    if os.access(path, os.X_OK):
        return None
    return (
        f"configurable-http-proxy not found at {path} (set $CHP_BIN, or run `npm install --prefix "
        f".ci/cache/chp --no-save configurable-http-proxy@5`; scripts/install.sh --test does)"
    )


# -- process tree (Linux /proc), so cleanup can end leftovers by PID -----------------------------
def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after "(comm)": [state, ppid, ...]; index 19 is the start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # comm may hold spaces and parentheses


def descendants(pid: int) -> dict[int, str]:
    """PID -> start time of every live process below ``pid`` (the start time guards against PID reuse)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    out: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p, start = todo.pop()
        out[p] = start
        todo.extend(children.get(p, []))
    return out


def _alive(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


def _end(procs: dict[int, str], grace: float = 5.0) -> list[int]:
    """SIGTERM each process still alive, SIGKILL those alive after ``grace``; returns the PIDs it ended."""
    live = {p: s for p, s in procs.items() if _alive(p, s)}
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in live.items()):
        time.sleep(0.1)
    for p, s in live.items():
        if _alive(p, s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return sorted(live)


@dataclass
class Hub:
    url: str
    popen: subprocess.Popen
    state_dir: Path
    double: Proc
    svc_port: int
    tokens: dict[str, str] = field(default_factory=dict)
    known_pids: dict[int, str] = field(default_factory=dict)
    leftovers: list[int] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "hub.log"

    def log(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[user]}"}

    def api(self, method: str, path: str, user: str = "admin", **kw: Any) -> httpx.Response:
        """The hub's REST API (``/hub/api/...``) as ``user``."""
        return httpx.request(
            method, f"{self.url}/hub/api/{path.lstrip('/')}", headers=self.headers(user), timeout=30, **kw
        )

    def svc(self, method: str, path: str, user: str | None = None, **kw: Any) -> httpx.Response:
        """The ``llm`` service through the proxy, as ``user`` (None: unauthenticated)."""
        headers = dict(kw.pop("headers", {}) or {})
        if user is not None:
            headers.update(self.headers(user))
        return httpx.request(
            method,
            f"{self.url}/services/llm/{path.lstrip('/')}",
            headers=headers,
            timeout=30,
            follow_redirects=False,
            **kw,
        )

    def remember_children(self) -> None:
        if self.popen.poll() is None:
            self.known_pids.update(descendants(self.popen.pid))

    def stop(self) -> None:
        """SIGTERM the hub by PID, wait, then end any process it started that is still alive."""
        self.remember_children()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(40)
            except subprocess.TimeoutExpired:
                self.remember_children()
                self.popen.kill()
                self.popen.wait(10)
        # the proxy, the service, single-user servers: the hub stops them; these are the ones it did not
        self.leftovers = _end(self.known_pids)
        self.double.stop()


def start_hub(state_dir: Path, delay: float = 0.2, timeout: float = 120) -> Hub:
    """Start the double, then the hub; returns once tokens for admin, alice and bob exist and the
    ``llm`` service answers through the proxy. On failure everything started is stopped again."""
    double = start_double(delay=delay)
    ports = {name: free_port() for name in ("HUB_PORT", "HUB_API_PORT", "CHP_API_PORT", "SVC_PORT")}
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "HUB_DIR": str(state_dir),
        "CHP_BIN": chp_bin(),
        "LLM_TEST_UPSTREAM": double.url,
        "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.pop("JUPYTERHUB_SERVICE_PREFIX", None)
    env.pop("JUPYTERHUB_API_TOKEN", None)
    try:
        with open(state_dir / "hub.log", "wb") as log:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                [PY, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
                cwd=state_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
    except BaseException:
        double.stop()
        raise
    hub = Hub(f"http://127.0.0.1:{ports['HUB_PORT']}", popen, state_dir, double, ports["SVC_PORT"])
    try:
        _wait_ready(hub, timeout)
    except BaseException:
        hub.stop()
        raise
    return hub


def _wait_ready(hub: Hub, timeout: float) -> None:
    deadline = time.monotonic() + timeout

    def poll(what: str, check: Any) -> Any:
        while time.monotonic() < deadline:
            if hub.popen.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {hub.popen.returncode}:\n{hub.log()}")
            hub.remember_children()
            try:
                result = check()
            except httpx.HTTPError:
                result = None
            if result:
                return result
            time.sleep(0.1)
        raise RuntimeError(f"jupyterhub: {what} not within {timeout} s:\n{hub.log()}")

    # the proxy answers 404 until the hub has added its routes: poll through the public port
    poll(
        "GET /hub/api/ through the proxy",
        lambda: httpx.get(hub.url + "/hub/api/", timeout=2).status_code == 200,
    )

    # a token for the hub admin, by authenticating in the request body (DummyAuthenticator)
    def admin_token() -> str | None:
        r = httpx.post(
            hub.url + "/hub/api/users/admin/tokens",
            timeout=10,
            json={
                "auth": {"username": "admin", "password": "any"},
                "note": "test_hub admin",
                "expires_in": 3600,
            },
        )
        return r.json()["token"] if r.status_code in (200, 201) else None

    hub.tokens["admin"] = poll("an admin token", admin_token)
    r = hub.api("POST", "users", json={"usernames": list(USERS)})
    if r.status_code not in (201, 409):
        raise RuntimeError(f"creating users: {r.status_code} {r.text}")
    for user in USERS:
        r = hub.api("POST", f"users/{user}/tokens", json={"note": f"test_hub {user}", "expires_in": 3600})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"token for {user}: {r.status_code} {r.text}")
        hub.tokens[user] = r.json()["token"]
    poll(
        "the llm service through the proxy",
        lambda: hub.svc("GET", "backend/state", user="admin").status_code == 200,
    )
    hub.remember_children()


def spawn(hub: Hub, user: str) -> None:
    """Ask the hub to start ``user``'s single-user server (returns at once; see wait_server)."""
    r = hub.api("POST", f"users/{user}/server")
    if r.status_code not in (201, 202, 400):  # 400: already running
        raise RuntimeError(f"spawn {user}: {r.status_code} {r.text}")


def wait_server(hub: Hub, user: str, timeout: float = 60) -> str:
    """Wait until ``user``'s default server is ready; returns its URL through the proxy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hub.remember_children()
        model = hub.api("GET", f"users/{user}").json()
        server = (model.get("servers") or {}).get("")
        if server and server.get("ready"):
            return hub.url + server["url"].rstrip("/")
        if not server:
            raise RuntimeError(f"{user}'s server is not starting: {model}\n{hub.log()}")
        time.sleep(0.2)
    raise RuntimeError(f"{user}'s server not ready within {timeout} s:\n{hub.log()}")
