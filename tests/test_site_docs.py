"""The admin guide works as written: every setting it (and the README) names exists, every
example config in examples/site/ loads with traitlets, and each one starts the service from a
minimal environment (``env -i`` with only PATH=/usr/bin:/bin and HOME): no virtual environment
on PATH, no working directory in the checkout, against the Ollama double as the backend."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config, PyFileConfigLoader

from jupyter_llm_af.config import LLMService
from jupyter_llm_af.metrics import Metrics
from jupyter_llm_af.standalone import ServeApp

from .conftest import ROOT, Proc, free_port

SITE = ROOT / "examples" / "site"
DOCS = [ROOT / "docs" / "site-admin.md", ROOT / "README.md"]
CONFIGS = ["jupyter_server_config.py", "jupyterhub_config.py", "llm_config.py", "standalone_config.py"]
MINIMAL_PATH = "/usr/bin:/bin"
TOKEN = "site-docs-" + os.urandom(8).hex()

SETTING = re.compile(r"(?:c\.|--)(LLMService|ServeApp)\.([A-Za-z_][A-Za-z0-9_]*)")


def traits(cls: type) -> set[str]:
    return set(cls.class_traits(config=True))  # type: ignore[attr-defined]


def load(name: str) -> Config:
    return PyFileConfigLoader(name, path=str(SITE)).load_config()


# -- names -------------------------------------------------------------------------------------
def test_every_setting_named_in_the_docs_exists():
    known = {"LLMService": traits(LLMService), "ServeApp": traits(ServeApp)}
    named: set[tuple[str, str]] = set()
    for doc in [*DOCS, *(SITE / n for n in CONFIGS)]:
        named |= set(SETTING.findall(doc.read_text()))
    missing = sorted(f"{cls}.{name}" for cls, name in named if name not in known[cls])
    assert not missing, f"named in the docs but not a setting: {missing}"
    assert len(named) >= 30  # the parser found the settings (the guide names dozens)


def test_serve_options_in_the_docs_exist():
    """``--backend``, ``--token-file``… on a ``… serve`` line are options of ServeApp."""
    options = set(ServeApp.aliases) | set(ServeApp.flags) | {"help-all", "help"}
    used: set[str] = set()
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            if re.search(r"(jupyter-llm-af|jupyter_llm_af) serve", line):
                used |= set(re.findall(r"(?<![\w.-])--([a-z][a-z-]*)(?![\w.])", line))
    assert {"config", "port", "backend", "upstream-url"} <= used
    assert used <= options, f"not options of serve: {sorted(used - options)}"


def test_readme_hub_snippet_uses_the_interpreter():
    readme = (ROOT / "README.md").read_text()
    assert '[sys.executable, "-m", "jupyter_llm_af", "serve"' in readme
    assert '["jupyter-llm-af", "serve"' not in readme


# -- the example configs load ----------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_example_config_loads_and_validates(name):
    cfg = load(name)
    sections = set(cfg)
    assert sections, f"{name} sets nothing"
    for section in sections:
        cls = {
            "LLMService": LLMService,
            "ServeApp": ServeApp,
            **_jupyter_classes(),
        }.get(section)
        assert cls is not None, f"{name}: unexpected section {section}"
        unknown = set(cfg[section]) - traits(cls)
        assert not unknown, f"{name}: {section} has no settings {sorted(unknown)}"
    if "LLMService" in cfg:
        service = LLMService(config=cfg)  # every value passes its trait's validation
        for key, value in cfg.LLMService.items():
            assert getattr(service, key) == value


def _jupyter_classes() -> dict[str, type]:
    from jupyter_server.serverapp import ServerApp
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import Spawner

    return {"ServerApp": ServerApp, "JupyterHub": JupyterHub, "Spawner": Spawner}


def test_hub_service_command_is_the_interpreter_and_finds_its_config():
    service = load("jupyterhub_config.py").JupyterHub.services[0]
    cmd = service["command"]
    assert cmd[:4] == [sys.executable, "-m", "jupyter_llm_af", "serve"]
    config = Path(cmd[cmd.index("--config") + 1])
    assert config == SITE / "llm_config.py" and config.is_file()


def test_unit_file_is_valid_and_runs_as_a_service_user():
    unit = (SITE / "jupyter-llm-af.service").read_text()
    fields = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert fields["User"] not in ("root", "0") and fields["Group"] not in ("root", "0")
    argv = shlex.split(fields["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/bin/python")
    assert argv[1:4] == ["-m", "jupyter_llm_af", "serve"] and "--config" in argv
    # systemd's own check (unknown keys, bad values), with the interpreter that exists here
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jupyter-llm-af.service"
        path.write_text(unit.replace(argv[0], sys.executable))
        out = subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0 and "Unknown" not in out.stderr, out.stderr


def test_dashboard_uses_only_series_the_service_exports():
    dash = json.loads((SITE / "grafana-dashboard.json").read_text())
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    exported = set()
    for fam in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(fam.type, [""])
        exported |= {fam.name + suffix for suffix in suffixes}
    used = {name for e in exprs for name in re.findall(r"jupyter_llm_af_[a-z_]+", e)}
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p["gridPos"]["w"] > 0


# -- the example configs start as written ----------------------------------------------------------
def start_minimal(
    argv: list[str], ready_url: str, env: dict[str, str], cwd: str, timeout: float = 90
) -> Proc:
    """Start ``argv`` under ``env -i`` with only ``env``; wait until ``ready_url`` answers 200."""
    fd, log_path = tempfile.mkstemp(prefix="llm-af-site-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        popen = subprocess.Popen(
            ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    proc = Proc(popen, ready_url, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"{argv[:5]} exited with {popen.returncode}:\n{proc.log()}")
        try:
            if (
                httpx.get(ready_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).status_code
                == 200
            ):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise AssertionError(f"{argv[:5]} not ready within {timeout} s:\n{proc.log()}")


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="llm-af-site-home-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def minimal_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": MINIMAL_PATH, "HOME": str(home), **extra}


def check_tags(base: str, proc: Proc) -> None:
    r = httpx.get(base + "/api/tags", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, proc.log()
    assert {m["name"] for m in r.json()["models"]} >= {"tiny:1b", "small:3b"}
    assert httpx.get(base + "/api/tags", timeout=10).status_code in (401, 403)
    chat = httpx.post(
        base + "/api/chat",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"model": "tiny:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=30,
    )
    assert chat.status_code == 200 and chat.json()["done"] is True, chat.text


def test_standalone_config_starts_as_the_unit_runs_it(ollama_double, home):
    """The unit's ExecStart with the example config, from ``env -i``: only what the test must
    place (port, token file, accounting file, and the double instead of Slurm) is overridden."""
    unit = (SITE / "jupyter-llm-af.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    argv[0] = sys.executable
    argv[argv.index("--config") + 1] = str(SITE / "standalone_config.py")
    (home / "tokens").write_text(f"# token user\n{TOKEN} alice\n")
    (home / "tokens").chmod(0o600)
    port = free_port()
    argv += [
        "--port", str(port),
        "--token-file", str(home / "tokens"),
        "--backend", "upstream",
        "--upstream-url", ollama_double.url,
        f"--LLMService.usage_log_file={home / 'usage.jsonl'}",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    proc = start_minimal(
        argv, base + "/", minimal_env(home, JUPYTER_LLM_AF_METRICS_TOKEN="m-" + TOKEN), str(home)
    )
    try:
        check_tags(base, proc)
    finally:
        proc.stop()
    assert TOKEN not in proc.log()  # the token never appears in the service's log


def test_hub_service_command_starts_from_a_minimal_environment(ollama_double, home):
    """The hub's ``llm`` service command as the example writes it (the hub's interpreter, its
    ``environment``), with the llm_config.py beside it; run outside a hub, with a token."""
    service = load("jupyterhub_config.py").JupyterHub.services[0]
    port = free_port()
    argv = list(service["command"])
    argv[argv.index("--port") + 1] = str(port)  # the one thing a hub test must move
    argv += [
        "--token", TOKEN,
        "--backend", "upstream",
        "--upstream-url", ollama_double.url,
        f"--LLMService.usage_log_file={home / 'usage.jsonl'}",
    ]  # fmt: skip
    env = minimal_env(home, **service.get("environment", {}))
    base = f"http://127.0.0.1:{port}"
    proc = start_minimal(argv, base + "/", env, str(home))
    try:
        check_tags(base, proc)
    finally:
        proc.stop()


def test_user_jupyter_config_starts_a_jupyter_server(ollama_double, home):
    """Shape 1: a Jupyter server with the example config (Slurm swapped for the double)."""
    port = free_port()
    argv = [
        sys.executable, "-m", "jupyter_server",
        "--config", str(SITE / "jupyter_server_config.py"),
        "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={home}",
        "--LLMService.backend=upstream", f"--LLMService.upstream_url={ollama_double.url}",
    ]  # fmt: skip
    env = minimal_env(
        home,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
    )
    base = f"http://127.0.0.1:{port}/llm"
    proc = start_minimal(argv, base + "/", env, str(home), timeout=120)
    try:
        check_tags(base, proc)
    finally:
        proc.stop()
