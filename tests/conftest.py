"""Shared fixtures: real processes (Ollama double, llama.cpp server, standalone service, Jupyter
server) started on free loopback ports and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["pytest_jupyter.jupyter_server"]

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TOKEN = "test-token-" + os.urandom(6).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    popen: subprocess.Popen
    url: str
    log_path: str
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_process(
    args: list[str],
    ready_url: str,
    headers: dict | None = None,
    env: dict | None = None,
    timeout: float = 60,
    ok=(200,),
) -> Proc:
    fd, log_path = tempfile.mkstemp(prefix="llm-af-test-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        popen = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    proc = Proc(popen, ready_url.rstrip("/"), log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{args[:4]} exited with {popen.returncode}:\n{proc.log()}")
        try:
            if httpx.get(ready_url, headers=headers or {}, timeout=2).status_code in ok:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{args[:4]} not ready within {timeout} s:\n{proc.log()}")


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_double(delay: float = 0.01, models: str = "tiny:1b,small:3b") -> Proc:
    port = free_port()
    return start_process(
        [PY, "-m", "tests.resources.ollama_double", "--port", str(port), "--delay", str(delay)]
        + ["--models", models],
        f"http://127.0.0.1:{port}/",
    )


def start_standalone(*extra: str, token: str = TOKEN, timeout: float = 60) -> Proc:
    port = free_port()
    proc = start_process(
        [PY, "-m", "jupyter_llm_af", "serve", "--port", str(port), "--token", token, *extra],
        f"http://127.0.0.1:{port}/",
        headers=auth(token),
        timeout=timeout,
    )
    return proc


def start_jupyter_server(*extra: str, token: str = TOKEN, timeout: float = 90) -> Proc:
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="llm-af-jupyter-")
    env = {
        "JUPYTER_CONFIG_DIR": f"{tmp}/config",
        "JUPYTER_RUNTIME_DIR": f"{tmp}/runtime",
        "JUPYTER_DATA_DIR": f"{tmp}/data",
    }
    proc = start_process(
        [
            PY,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp}",
            *extra,
        ],
        f"http://127.0.0.1:{port}/llm/",
        headers=auth(token),
        env=env,
        timeout=timeout,
    )
    proc.extra["base"] = f"http://127.0.0.1:{port}/"
    return proc


@pytest.fixture(scope="session")
def ollama_double() -> Iterator[Proc]:
    proc = start_double(delay=0.02)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def native_service(ollama_double: Proc) -> Iterator[Proc]:
    """Standalone service, backend_protocol=ollama, in front of the Ollama double."""
    proc = start_standalone("--backend", "upstream", "--upstream-url", ollama_double.url)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def native_jupyter(ollama_double: Proc) -> Iterator[Proc]:
    """A real Jupyter server with the extension, backend = the Ollama double."""
    proc = start_jupyter_server(
        "--LLMService.backend=upstream", f"--LLMService.upstream_url={ollama_double.url}"
    )
    yield proc
    proc.stop()


def embedded_available() -> bool:
    from jupyter_llm_af import embedded

    return bool(embedded.find_llama_server() and embedded.load_manifest())


@pytest.fixture(scope="session")
def embedded_service() -> Iterator[Proc]:
    """Standalone service on the embedded default (llama.cpp router + SmolLM2/Gemma 3): real tokens."""
    if not embedded_available():
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    proc = start_standalone("--backend", "local", timeout=180)
    # wait for the router itself (the first request would wait anyway; this keeps timings clean)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = httpx.get(proc.url + "/backend/state", headers=auth(), timeout=5).json()
        if st["state"] == "ready":
            break
        time.sleep(0.2)
    yield proc
    proc.stop()


@pytest.fixture
def jp_server_config(ollama_double: Proc) -> dict:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_llm_af": True}},
        "LLMService": {"backend": "upstream", "upstream_url": ollama_double.url},
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every test must run: a skip (Slurm, browser, hub, llama.cpp, curl missing) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"


# -- figures: lines a test prints starting with FAULT or FIGURE are repeated in the run's summary,
# so CI's log shows the fault suite's and the property tests' counts without ``-s``.
_FIGURES: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        for line in (report.capstdout or "").splitlines():
            if line.startswith(("FAULT ", "FIGURE ")):
                _FIGURES.append(line)


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


# The Claude Code and Codex CLIs (npm), shared by the Lab-terminal and standalone agent tests.
AGENTS_DIR = Path.home() / ".cache" / "jupyter_llm_af" / "agents"


@pytest.fixture(scope="session")
def agent_clis() -> dict[str, str]:
    """Claude Code and Codex CLIs from npm (cached; about 8 s to install)."""
    bin_dir = AGENTS_DIR / "node_modules" / ".bin"
    if not all((bin_dir / name).exists() for name in ("claude", "codex")):
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the Claude Code and Codex CLIs"
        packages = ["@anthropic-ai/claude-code@2", "@openai/codex"]
        cmd = [npm, "install", "--silent", "--no-save", "--prefix", str(AGENTS_DIR), *packages]
        subprocess.run(cmd, check=True, timeout=300)
    return {name: str(bin_dir / name) for name in ("claude", "codex")}
