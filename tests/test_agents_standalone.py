"""Claude Code and Codex, the real CLIs from npm, against the standalone service (issue 13).

``jupyter-llm-af serve`` runs on the embedded default (llama.cpp ``llama-server`` with
SmolLM2-135M) with a token from ``$JUPYTER_LLM_AF_TOKEN``, as the README starts it. Each CLI is
run with the command lines of the README's "Using it" section, taken from the README itself
(only the URL is put in), so the test also proves the documented one-liners. The service's log
must name the routes it answered but never the token or the prompt. (The same CLIs in a JupyterLab
terminal, with no set-up, are in ``test_kernel_env``.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib

from jupyter_llm_af.kernel_env import codex_config

from .conftest import PY, ROOT, Proc, embedded_available, free_port, start_process

DOC_URL = "http://127.0.0.1:11434"  # the URL in the README's commands
# what a test machine (or CI) may have set: none of it may reach the CLIs
FOREIGN_VARS = re.compile(r"^(ANTHROPIC|OPENAI|OLLAMA|CODEX|JUPYTER_LLM_AF|CLAUDE)_")
# Claude Code's own system prompt and tools (~20k tokens) do not fit the 135M model (README)
SMALL_MODEL_FLAGS = "--system-prompt 'You are brief.' --tools ''"
CLAUDE_FLAGS = SMALL_MODEL_FLAGS + " --output-format json"  # the answer as one JSON object
CLI_TIMEOUT = 240  # Codex's first prompt is ~4.6k tokens: ~95 s on 2 busy cores


def documented_agent_commands() -> dict[str, str]:
    """The ``claude`` and ``codex exec`` command lines of the README's "Using it" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    commands: dict[str, str] = {}
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = command.split()
            for name in ("claude", "codex"):
                if name in words and name not in commands:
                    commands[name] = command.strip()
    assert set(commands) == {"claude", "codex"}, f"README 'Using it' lacks a command: {commands}"
    assert DOC_URL in commands["claude"] and DOC_URL in commands["codex"]
    return commands


def test_readme_commands_use_the_routes_and_settings_the_service_has() -> None:
    """What the README tells users to type: the root URL for Claude Code, the Responses API at /v1
    for Codex with the token in an environment variable (never in the command line)."""
    commands = documented_agent_commands()
    assert f"ANTHROPIC_BASE_URL={DOC_URL} " in commands["claude"]  # no /v1: Claude Code appends it
    assert "ANTHROPIC_AUTH_TOKEN=$TOKEN" in commands["claude"]
    codex = commands["codex"]
    provider = re.search(r"model_providers\.llm_af=\{(.*?)\}", codex)
    assert provider, codex
    fields = dict(re.findall(r'(\w+)="([^"]*)"', provider.group(1)))
    assert fields == {"name": "llm_af", "base_url": DOC_URL + "/v1", "wire_api": "responses",
                      "env_key": "LLM_TOKEN"}  # fmt: skip
    assert "model_provider=llm_af" in codex and codex.startswith("LLM_TOKEN=$TOKEN codex exec ")


def test_notebook_docs_show_the_codex_config_the_extension_writes() -> None:
    """docs/notebook.md: its config.toml is what ``codex_config`` writes for a Lab terminal, and its
    one-command form names the same provider as the README's (the Jupyter URL and token variable)."""
    doc = (ROOT / "docs" / "notebook.md").read_text()
    section = doc.split("\n## Coding agents in a terminal\n", 1)[1].split("\n## ", 1)[0]
    (toml_block,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    written = codex_config("http://127.0.0.1:8888/llm/", "tok", "smollm2:135m")
    assert tomllib.loads(toml_block) == tomllib.loads(written)
    one_liner = next(
        line for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
        for line in block.replace("\\\n", " ").splitlines() if "model_providers.llm_af=" in line
    )  # fmt: skip
    fields = dict(re.findall(r'(\w+)="([^"]*)"', one_liner.replace('\\"', '"')))
    assert fields == {"name": "llm_af", "base_url": "${JUPYTER_LLM_AF_URL}v1", "wire_api": "responses",
                      "env_key": "JUPYTER_LLM_AF_TOKEN"}  # fmt: skip
    assert "--skip-git-repo-check" in one_liner and "-c model_provider=llm_af" in one_liner
    for line in re.findall(r"^codex exec .*$", section, flags=re.M):
        assert "--skip-git-repo-check" in line, line  # else Codex refuses to run outside a git repo


# -- the service and the CLIs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def standalone() -> Iterator[Proc]:
    """``JUPYTER_LLM_AF_TOKEN=… jupyter-llm-af serve --port P``: the embedded default, one token."""
    if not embedded_available():
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    token = "agents-" + os.urandom(12).hex()
    port = free_port()
    env = {name: "" for name in os.environ if FOREIGN_VARS.match(name)}
    env["JUPYTER_LLM_AF_TOKEN"] = token
    args = [PY, "-m", "jupyter_llm_af", "serve", "--port", str(port)]
    headers = {"Authorization": f"Bearer {token}"}
    proc = start_process(args, f"http://127.0.0.1:{port}/", headers=headers, env=env, timeout=180)
    try:
        deadline = time.monotonic() + 120
        while httpx.get(proc.url + "/backend/state", headers=headers, timeout=5).json()["state"] != "ready":
            assert time.monotonic() < deadline, proc.log()
            time.sleep(0.2)
        proc.extra["token"] = token
        yield proc
    finally:
        proc.stop()  # by PID (SIGTERM, then SIGKILL); the service stops its llama-server


def run_documented(
    service: Proc,
    clis: dict[str, str],
    name: str,
    append: str = "",
    token: str | None = None,
    replace: tuple[str, str] = ("", ""),
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the README's command for ``name`` in bash, as a user would type it, in a fresh $HOME
    and a directory that is no git repository, with ``$TOKEN`` set (the service's, or ``token``);
    only the URL put in (and ``append`` added, ``replace`` made, ``env`` set)."""
    command = documented_agent_commands()[name].replace(DOC_URL, service.url).replace(*replace)
    # the CLI by its npm path, at the place where the user types its name
    command = re.sub(rf"(?<![\w./-]){name}(?= )", clis[name], command, count=1)
    command += " " + append if append else ""
    with tempfile.TemporaryDirectory(prefix=f"llm-af-{name}-") as home:
        clean = {k: v for k, v in os.environ.items() if not FOREIGN_VARS.match(k)}
        full_env = {**clean, "HOME": home, "TOKEN": token or service.extra["token"], **(env or {})}
        started = time.monotonic()
        done = subprocess.run(
            # timeout(1) signals its whole process group: bash and the CLI's node processes
            ["timeout", "-k", "10", str(CLI_TIMEOUT), "bash", "-c", command],
            stdin=subprocess.DEVNULL,
            cwd=home,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT + 30,
        )
    return done, time.monotonic() - started


def service_log(service: Proc) -> str:
    return Path(service.log_path).read_text(errors="replace")


def backend_log(service: Proc) -> str:
    """The embedded llama-server's log (``jupyter-llm-af-local-<service pid>-<port>.log``)."""
    (path,) = Path(tempfile.gettempdir()).glob(f"jupyter-llm-af-local-{service.popen.pid}-*.log")
    return path.read_text(errors="replace")


def assert_log_names_route_but_no_secret(service: Proc, route: str, prompt: str) -> None:
    log = service_log(service)
    assert re.search(rf"\b200 POST {re.escape(route)} \(127\.0\.0\.1\)", log), log[-3000:]
    assert service.extra["token"] not in log
    assert prompt not in log and "?beta" not in log  # neither the prompt nor a query string
    # nor the backend's: the token is not forwarded, and llama-server does not log prompts
    backend = backend_log(service)
    assert "srv" in backend and service.extra["token"] not in backend and prompt not in backend


def prompt_of(command: str) -> str:
    return re.findall(r'"([^"]+)"', command)[-1]


def claude_result(done: subprocess.CompletedProcess[str]) -> dict:
    """Claude Code's ``--output-format json`` answer: one JSON object, the last line of stdout."""
    lines = done.stdout.strip().splitlines()
    assert lines, f"exit {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.llama
@pytest.mark.timeout(CLI_TIMEOUT + 120)
def test_claude_code_answers_from_the_standalone_service(
    standalone: Proc, agent_clis: dict[str, str]
) -> None:
    """``ANTHROPIC_BASE_URL`` + ``ANTHROPIC_AUTH_TOKEN`` (``Authorization: Bearer``)."""
    done, seconds = run_documented(standalone, agent_clis, "claude", CLAUDE_FLAGS)
    print(f"claude -p (ANTHROPIC_AUTH_TOKEN): {seconds:.1f} s")
    result = claude_result(done)
    assert done.returncode == 0 and result["subtype"] == "success" and result["is_error"] is False, result
    assert result["result"].strip(), result
    assert result["usage"]["output_tokens"] > 0, result  # counted by llama.cpp, not made up
    assert_log_names_route_but_no_secret(
        standalone, "/v1/messages", prompt_of(documented_agent_commands()["claude"])
    )


@pytest.mark.llama
@pytest.mark.timeout(CLI_TIMEOUT + 120)
def test_claude_code_with_an_api_key(standalone: Proc, agent_clis: dict[str, str]) -> None:
    """``ANTHROPIC_API_KEY`` instead (sent as ``x-api-key``), as the README says also works."""
    done, seconds = run_documented(
        standalone,
        agent_clis,
        "claude",
        CLAUDE_FLAGS,
        replace=("ANTHROPIC_AUTH_TOKEN=", "ANTHROPIC_API_KEY="),  # in its place: set only one
    )
    print(f"claude -p (ANTHROPIC_API_KEY): {seconds:.1f} s")
    result = claude_result(done)
    assert done.returncode == 0 and result["subtype"] == "success" and result["result"].strip(), result


@pytest.mark.llama
@pytest.mark.timeout(CLI_TIMEOUT + 120)
def test_codex_answers_from_the_standalone_service(standalone: Proc, agent_clis: dict[str, str]) -> None:
    """The README's ``codex exec`` one-liner: a ``model_providers`` entry with ``wire_api="responses"``."""
    done, seconds = run_documented(standalone, agent_clis, "codex")
    print(f"codex exec: {seconds:.1f} s")
    out = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + "\n" + done.stderr)
    assert done.returncode == 0, out[-3000:]
    assert "model: smollm2:135m" in out and "provider: llm_af" in out, out[-3000:]
    assert "tokens used" in out and not re.search(r"ERROR|unexpected status", out), out[-3000:]
    assert done.stdout.strip(), out[-3000:]  # the answer (codex exec prints only it on stdout)
    assert_log_names_route_but_no_secret(
        standalone, "/v1/responses", prompt_of(documented_agent_commands()["codex"])
    )


@pytest.mark.llama
@pytest.mark.timeout(120)
def test_claude_code_with_a_wrong_key_is_told_authentication_error(
    standalone: Proc, agent_clis: dict[str, str]
) -> None:
    """A wrong ``ANTHROPIC_API_KEY``: Claude Code exits 1 with what it says for Anthropic's own
    ``authentication_error`` on ``x-api-key``, at once: Claude Code retries a 401 with back-off for
    minutes unless the answer carries ``x-should-retry: false``, which the service sends."""
    wrong = "wrong-" + os.urandom(8).hex()
    done, seconds = run_documented(
        standalone,
        agent_clis,
        "claude",
        CLAUDE_FLAGS,
        token=wrong,
        replace=("ANTHROPIC_AUTH_TOKEN=", "ANTHROPIC_API_KEY="),
    )
    print(f"claude -p (wrong key): {seconds:.1f} s, exit {done.returncode}")
    result = claude_result(done)
    assert done.returncode == 1 and result["is_error"] is True, (done.returncode, result)
    assert result["api_error_status"] == 401 and "Invalid API key" in result["result"], result
    assert seconds < 60, seconds
    log = service_log(standalone)
    assert re.search(r"\b401 POST /v1/messages \(127\.0\.0\.1\)", log), log[-3000:]
    assert wrong not in log
    # what Claude Code was answered: Anthropic's error document, as its SDK parses it
    r = httpx.post(
        standalone.url + "/v1/messages?beta=true",
        headers={"x-api-key": wrong, "anthropic-version": "2023-06-01"},
        json={"model": "smollm2:135m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 401 and r.json()["type"] == "error", r.text
    assert r.json()["error"]["type"] == "authentication_error", r.text
    assert r.headers["x-should-retry"] == "false"
