"""Helpers shared by the HTTP benchmarks: loopback ports, child processes stopped by PID, figures.

Nothing here is a test fixture: benchmarks print figures and exit 0 whatever they measure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def fix_sys_path(here: str) -> None:
    """Run as a script, benchmarks/ is sys.path[0] and its queue.py would shadow the stdlib ``queue``."""
    here = os.path.abspath(here)
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        sys.path[0] = str(REPO)
    elif str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_service_args(port: int, token: str, backend_url: str) -> list[str]:
    """``jupyter-llm-af serve`` arguments (after ``serve``) for a service on loopback ``port``
    with one API ``token``, forwarding to ``backend_url``."""
    return ["--port", str(port), "--token", token, "--backend", "upstream", "--upstream-url", backend_url]


class Child:
    """A child process with its output in a temporary log; stopped by its own PID (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] = REPO,
    ):
        self.name = name
        self.cleanup_dirs: list[str] = []  # removed after the process stops
        fd, self.log_path = tempfile.mkstemp(prefix=f"llm-af-bench-{name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.popen = subprocess.Popen(
                args,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=False,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self, n: int = 3000) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            try:
                if httpx.get(url, headers=headers or {}, timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
        for d in self.cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)


class Worktree:
    """A detached git worktree of an older commit (for "before" figures), removed by :meth:`remove`.

    A child runs that version with ``cwd=path`` and ``env``: ``python -m`` puts the working directory
    first on ``sys.path``, and ``PYTHONPATH`` wins over the venv's editable install of this tree.
    """

    def __init__(self, commit: str, path: str):
        self.commit, self.path = commit, path
        if os.path.exists(path):  # left over from an interrupted run
            subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO, check=False)
        subprocess.run(
            ["git", "worktree", "add", "--detach", path, commit],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.env = {"PYTHONPATH": path}

    def module_file(self, module: str) -> str:
        """Where a child started like the benchmark's imports ``module`` from (to check it is here)."""
        out = subprocess.run(
            [PY, "-c", f"import {module}; print({module}.__file__)"],
            cwd=self.path,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def remove(self) -> None:
        subprocess.run(["git", "worktree", "remove", "--force", self.path], cwd=REPO, check=False)


def jupyter_env() -> tuple[str, dict[str, str]]:
    """A throw-away root/config/runtime dir for a Jupyter server (no user config leaks in)."""
    tmp = tempfile.mkdtemp(prefix="llm-af-bench-jupyter-")
    return tmp, {
        "JUPYTER_CONFIG_DIR": f"{tmp}/config",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime",
        "JUPYTER_DATA_DIR": f"{tmp}/data",
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc, 10 ms ticks; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


# -- figures ---------------------------------------------------------------------------------
def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v == v]
    return statistics.median(vals) if vals else float("nan")


def rng(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """'median [min-max]' of repeated figures."""
    vals = [v for v in values if v == v]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(median(vals))} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = zip(r, widths, strict=True)
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(cells))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def machine_note() -> str:
    try:
        load = os.getloadavg()
        load_s = f"load avg {load[0]:.2f}/{load[1]:.2f}"
    except OSError:
        load_s = "load n/a"
    return f"{os.cpu_count()} CPUs, {load_s}, Python {sys.version.split()[0]}"
