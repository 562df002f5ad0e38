"""``kernel_environment()`` and ``jupyter_llm_af.clients``: the variables, and real clients using them.

The client checks send real requests to the stand-in service of ``test_magics`` (served under
``/llm/`` with a token), so they prove that the ``ollama``, ``openai`` and ``anthropic`` packages
keep the path of ``OLLAMA_HOST`` / ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` and send the
token. A real Jupyter server with a real terminal (REST + websocket, as JupyterLab opens one)
proves that terminals get the same variables as kernels.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
import tomllib
from websockets.sync.client import connect

from jupyter_llm_af import clients
from jupyter_llm_af.kernel_env import (
    codex_config,
    has_own_codex_setup,
    kernel_environment,
    server_environment,
)

from .conftest import PY, Proc, auth, embedded_available, free_port, start_process
from .conftest import TOKEN as SERVER_TOKEN
from .test_magics import MODELS, TOKEN, FakeService, reply_for

P = "http://127.0.0.1:8888/user/ada/llm/"
ALL = {
    "JUPYTER_LLM_AF_URL": P,
    "JUPYTER_LLM_AF_TOKEN": "tok",
    "OLLAMA_HOST": "http://127.0.0.1:8888/user/ada/llm",
    "OLLAMA_API_BASE": "http://127.0.0.1:8888/user/ada/llm",
    "OLLAMA_API_KEY": "tok",
    "OPENAI_BASE_URL": P + "v1",
    "OPENAI_API_BASE": P + "v1",
    "OPENAI_API_KEY": "tok",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:8888/user/ada/llm",  # the SDK and Claude Code add /v1/messages
    "ANTHROPIC_AUTH_TOKEN": "tok",
}
GROUPS = {
    "JUPYTER_LLM_AF_URL": {"JUPYTER_LLM_AF_URL", "JUPYTER_LLM_AF_TOKEN"},
    "OLLAMA_HOST": {"OLLAMA_HOST", "OLLAMA_API_BASE", "OLLAMA_API_KEY"},
    "OPENAI_BASE_URL": {"OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"},
    "ANTHROPIC_BASE_URL": {"ANTHROPIC_BASE_URL", "ANTHROPIC_AUTH_TOKEN"},
}
CLIENT_VARS = [*ALL, "JUPYTER_LLM_AF_MODEL", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "CODEX_HOME"]


# -- kernel_environment -----------------------------------------------------------------------


def test_adds_every_variable_to_an_empty_environment() -> None:
    assert kernel_environment(P, "tok", {}) == ALL


def test_url_without_trailing_slash_is_the_same_prefix() -> None:
    assert kernel_environment(P.rstrip("/"), "tok", {}) == ALL


def test_default_model_and_codex_home_when_known() -> None:
    added = kernel_environment(P, "tok", {}, model="smollm2:135m", codex_home="/run/x/codex")
    assert added == {**ALL, "ANTHROPIC_MODEL": "smollm2:135m", "CODEX_HOME": "/run/x/codex"}


@pytest.mark.parametrize(
    ("user_set", "left_alone"),
    [
        ({"OPENAI_API_KEY": "sk-real"}, "OPENAI_BASE_URL"),
        ({"OPENAI_BASE_URL": "https://api.example/v1"}, "OPENAI_BASE_URL"),
        ({"OLLAMA_HOST": "gpu17:11434"}, "OLLAMA_HOST"),
        ({"OLLAMA_API_KEY": "cloud-key"}, "OLLAMA_HOST"),
        ({"OLLAMA_API_BASE": "http://gpu17:11434"}, "OLLAMA_HOST"),
        ({"JUPYTER_LLM_AF_URL": "http://hub/services/llm/"}, "JUPYTER_LLM_AF_URL"),
        # a real Anthropic key (which we never set): our URL must not receive it, nor theirs our token
        ({"ANTHROPIC_API_KEY": "sk-ant-real"}, "ANTHROPIC_BASE_URL"),
        ({"ANTHROPIC_BASE_URL": "https://proxy.example"}, "ANTHROPIC_BASE_URL"),
        ({"ANTHROPIC_MODEL": "claude-x"}, "ANTHROPIC_BASE_URL"),
    ],
)
def test_never_overwrites_and_skips_the_whole_group(user_set: dict[str, str], left_alone: str) -> None:
    added = kernel_environment(P, "tok", user_set)
    assert not set(added) & set(user_set)  # nothing the user set is returned
    expected = set().union(*(names for group, names in GROUPS.items() if group != left_alone))
    assert set(added) == expected  # e.g. a real OpenAI key is never paired with our URL
    assert all(added[k] == ALL[k] for k in added)


def test_a_users_codex_home_is_kept() -> None:
    added = kernel_environment(P, "tok", {"CODEX_HOME": "/home/ada/.codex-work"}, codex_home="/run/x")
    assert "CODEX_HOME" not in added and added == ALL


def test_an_empty_variable_counts_as_unset() -> None:
    assert kernel_environment(P, "tok", {"OLLAMA_HOST": ""}) == ALL


def test_without_a_token_no_empty_credentials() -> None:
    added = kernel_environment(P, "", {})
    assert "JUPYTER_LLM_AF_TOKEN" not in added and "OLLAMA_API_KEY" not in added
    # the openai and anthropic clients refuse to start without one
    assert added["OPENAI_API_KEY"] == "unused" and added["ANTHROPIC_AUTH_TOKEN"] == "unused"


# -- Codex: a generated config.toml -----------------------------------------------------------


def test_codex_config_names_the_service_as_default_provider() -> None:
    config = tomllib.loads(codex_config(P, "tok", "smollm2:135m"))
    assert config == {
        "model_provider": "llm_af",
        "model": "smollm2:135m",
        "model_providers": {
            "llm_af": {
                "name": "jupyter_llm_af",
                "base_url": P + "v1",
                "wire_api": "responses",  # Codex speaks only the Responses API now
                "env_key": "JUPYTER_LLM_AF_TOKEN",  # the token stays out of the file
            }
        },
    }
    assert "tok" not in codex_config(P, "tok", "smollm2:135m").replace("JUPYTER_LLM_AF_TOKEN", "")
    bare = tomllib.loads(codex_config(P.rstrip("/"), "", None))
    assert "model" not in bare and "env_key" not in bare["model_providers"]["llm_af"]
    assert bare["model_providers"]["llm_af"]["base_url"] == P + "v1"


def test_server_environment_writes_codex_home_only_for_users_without_their_own(tmp_path: Path) -> None:
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    added = server_environment(P, "tok", {}, str(runtime), "smollm2:135m", home=str(home))
    codex_home = Path(added["CODEX_HOME"])
    assert codex_home.parent == runtime / "jupyter_llm_af" and codex_home.stat().st_mode & 0o077 == 0
    assert tomllib.loads((codex_home / "config.toml").read_text())["model"] == "smollm2:135m"
    assert added["ANTHROPIC_MODEL"] == "smollm2:135m"
    other = server_environment("http://127.0.0.1:9999/llm/", "t2", {}, str(runtime), None, home=str(home))
    assert other["CODEX_HOME"] != added["CODEX_HOME"]  # two servers of one user: one config each
    # a user who set Codex up (config, login, or CODEX_HOME) keeps it: nothing written, nothing set
    for own in ("config.toml", "auth.json"):
        (home / ".codex").mkdir(exist_ok=True)
        (home / ".codex" / own).write_text("")
        assert has_own_codex_setup({}, str(home))
        fresh = tmp_path / f"runtime-{own}"
        assert "CODEX_HOME" not in server_environment(P, "tok", {}, str(fresh), None, home=str(home))
        assert not fresh.exists()
        (home / ".codex" / own).unlink()
    assert has_own_codex_setup({"CODEX_HOME": "/x"}, str(home)) and not has_own_codex_setup({}, str(home))


# -- real clients with that environment --------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeService]:
    service = FakeService().start()
    yield service
    service.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake: FakeService) -> dict[str, str]:
    for name in CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)
    added = kernel_environment(fake.url, TOKEN, {})
    for name, value in added.items():
        monkeypatch.setenv(name, value)
    return added


def test_ollama_client_keeps_the_path_of_ollama_host(env: dict[str, str], fake: FakeService) -> None:
    assert env["OLLAMA_HOST"].endswith("/llm")
    client = ollama.Client()  # zero config: OLLAMA_HOST and OLLAMA_API_KEY (ollama >= 0.6)
    answer = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content == reply_for([{"role": "user", "content": "hi"}])
    assert [m.model for m in client.list().models] == MODELS
    seen = [(r["route"], r["auth"]) for r in fake.requests]
    assert seen == [("api/chat", True), ("api/tags", True)]  # under /llm/, with the token


def test_openai_client_uses_openai_base_url(env: dict[str, str], fake: FakeService) -> None:
    client = openai.OpenAI()
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("**Echo 1**")
    assert [(r["route"], r["auth"]) for r in fake.requests] == [("v1/chat/completions", True)]


def test_anthropic_sdk_uses_anthropic_base_url(env: dict[str, str], fake: FakeService) -> None:
    client = anthropic.Anthropic()  # zero config: ANTHROPIC_BASE_URL + ANTHROPIC_AUTH_TOKEN
    messages = [{"role": "user", "content": "hi"}]
    answer = client.messages.create(model="tiny", max_tokens=16, messages=messages)  # type: ignore[arg-type]
    assert answer.content[0].text == reply_for(messages)  # type: ignore[union-attr]
    (request,) = fake.requests
    # under /llm/ (the SDK appended /v1/messages to the root), the token as a bearer, no x-api-key
    assert (request["route"], request["auth"], request["x-api-key"]) == ("v1/messages", True, None)


def test_package_clients(env: dict[str, str], fake: FakeService) -> None:
    assert clients.service_url() == fake.url and clients.service_token() == TOKEN
    chat = clients.ollama_client().chat(model="tiny", messages=[{"role": "user", "content": "a"}])
    assert chat.message.content.endswith(": a")
    completion = clients.openai_client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "b"}]
    )
    assert completion.choices[0].message.content.endswith(": b")
    assert clients.openai_client().timeout.read == clients.READ_TIMEOUT  # long: requests may queue
    assert clients.state()["state"] == "ready"
    assert clients.queue()["mine"] == []
    assert clients.models() == MODELS
    assert all(r["auth"] for r in fake.requests)


async def test_async_package_clients(env: dict[str, str]) -> None:
    chat = await clients.async_ollama_client().chat(model="tiny", messages=[{"role": "user", "content": "c"}])
    assert chat.message.content.endswith(": c")
    completion = await clients.async_openai_client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "d"}]
    )
    assert completion.choices[0].message.content.endswith(": d")


def test_ollama_client_sends_the_token_itself(monkeypatch: pytest.MonkeyPatch, fake: FakeService) -> None:
    """With only JUPYTER_LLM_AF_* set (e.g. an ollama < 0.6 that ignores OLLAMA_API_KEY)."""
    for name in CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_LLM_AF_URL", fake.url)
    monkeypatch.setenv("JUPYTER_LLM_AF_TOKEN", TOKEN)
    clients.ollama_client().list()
    assert fake.requests[-1]["auth"]


# -- clients: URL fallbacks and error messages --------------------------------------------------


@pytest.mark.parametrize(
    ("ollama_host", "url"),
    [
        (None, "http://127.0.0.1:11434/"),
        ("127.0.0.1:8888/llm", "http://127.0.0.1:8888/llm/"),
        ("https://llm.example.org/prefix/", "https://llm.example.org/prefix/"),
        (":5000", "http://127.0.0.1:5000/"),
        ("gpu17", "http://gpu17:11434/"),
        ("http://gpu17", "http://gpu17/"),
    ],
)
def test_service_url_falls_back_to_ollama_host(
    monkeypatch: pytest.MonkeyPatch, ollama_host: str | None, url: str
) -> None:
    for name in CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)
    if ollama_host is not None:
        monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    assert clients.service_url() == url
    assert clients.service_token() is None and clients.auth_headers() == {}


@pytest.mark.parametrize(
    ("status", "body", "headers", "message"),
    [
        (404, {"error": "model 'x' not found"}, {}, "model 'x' not found (HTTP 404)"),
        (429, {"error": "queue full"}, {"Retry-After": "7"}, "queue full (HTTP 429; retry in 7 s)"),
        (
            503,
            {"error": {"message": "waited too long for a GPU", "type": "x", "param": None, "code": None}},
            {"Retry-After": "30"},
            "waited too long for a GPU (HTTP 503; retry in 30 s)",
        ),
        (502, "Bad Gateway", {}, "Bad Gateway (HTTP 502)"),
    ],
)
def test_service_error_is_one_readable_line(status: int, body: object, headers: dict, message: str) -> None:
    kw = {"json": body} if isinstance(body, dict) else {"text": body}
    error = clients.ServiceError.from_response(httpx.Response(status, headers=headers, **kw))
    assert error.message == message and error.status == status
    assert error.retry_after == (int(headers["Retry-After"]) if headers else None)


def test_unreachable_service(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("JUPYTER_LLM_AF_URL", f"http://127.0.0.1:{port}/llm/")
    with pytest.raises(clients.ServiceError, match="Cannot reach the LLM service at http://127.0.0.1"):
        clients.state()


def test_wrong_token(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_LLM_AF_TOKEN", "wrong")
    with pytest.raises(clients.ServiceError, match=r"Not authorized .*HTTP 401.*JUPYTER_LLM_AF_TOKEN"):
        clients.state()


# -- a real Jupyter server: its terminals get the same environment ------------------------------


def _shell(base: str, command: str, timeout: float = 60) -> str:
    """Open a terminal as JupyterLab does (``POST api/terminals``, then its websocket), run
    ``command`` in its shell, and return what it printed (between two markers the shell computes,
    so the echoed command line is not mistaken for output)."""
    name = httpx.post(base + "api/terminals", headers=auth(), timeout=10).json()["name"]
    ws_url = base.replace("http://", "ws://") + f"terminals/websocket/{name}"
    try:
        with connect(ws_url, additional_headers=auth(), open_timeout=10) as ws:
            ws.send(json.dumps(["stdin", f'echo "==$((6*7))=="; {command}; echo "==$((6*8))=="\r']))
            out, deadline = "", time.monotonic() + timeout
            while "==48==" not in out:
                assert time.monotonic() < deadline, out[-2000:]
                kind, *data = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if kind == "stdout":
                    out += data[0]
    finally:
        httpx.delete(base + f"api/terminals/{name}", headers=auth(), timeout=10)
    return out.split("==42==")[-1].split("==48==")[0].replace("\r\n", "\n")


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, FakeService, Path]]:
    """``jupyter server`` with the extension in front of the stand-in, started the way a user has it:
    their own OPENAI_API_KEY set, no Codex set-up in $HOME."""
    fake = FakeService(prefix="/", require_auth=False).start()
    tmp = tmp_path_factory.mktemp("jupyter")
    (tmp / "config").mkdir()
    (tmp / "home").mkdir()
    config = {
        "ServerApp": {"jpserver_extensions": {"jupyter_llm_af": True}},
        # a site URL's models are not known when the server starts: the site names its default
        "LLMService": {"backend": "upstream", "upstream_url": fake.url.rstrip("/"), "default_model": "tiny"},
    }
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    port = free_port()
    env = {name: "" for name in CLIENT_VARS if os.environ.get(name)}  # none of the test machine's own
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        HOME=str(tmp / "home"),
        OPENAI_API_KEY="sk-users-own",
        SHELL="/bin/bash",
    )
    args = [PY, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={SERVER_TOKEN}", f"--ServerApp.root_dir={tmp}"]  # fmt: skip
    proc = start_process(args, f"http://127.0.0.1:{port}/llm/", headers=auth(), env=env, timeout=90)
    proc.extra.update(base=f"http://127.0.0.1:{port}/", tmp=tmp)
    yield proc, fake, tmp
    proc.stop()
    fake.stop()


def test_terminals_get_the_agents_variables(jupyter: tuple[Proc, FakeService, Path]) -> None:
    proc, fake, tmp = jupyter
    base = proc.extra["base"]
    out = _shell(base, "env | grep -E '^(JUPYTER_LLM_AF|OLLAMA|OPENAI|ANTHROPIC|CODEX)_' | sort")
    seen = dict(re.findall(r"^([A-Z_]+)=(.*)$", out, flags=re.M))
    root = base + "llm"
    assert {k: v for k, v in seen.items() if v} == {
        "JUPYTER_LLM_AF_URL": root + "/",
        "JUPYTER_LLM_AF_TOKEN": SERVER_TOKEN,
        "OLLAMA_HOST": root,
        "OLLAMA_API_BASE": root,
        "OLLAMA_API_KEY": SERVER_TOKEN,
        "OPENAI_API_KEY": "sk-users-own",  # the user's own: the OpenAI group is left alone
        "ANTHROPIC_BASE_URL": root,
        "ANTHROPIC_AUTH_TOKEN": SERVER_TOKEN,
        "ANTHROPIC_MODEL": "tiny",  # Claude Code's default: the service's default model
        "CODEX_HOME": seen["CODEX_HOME"],
    }, out
    codex_home = Path(seen["CODEX_HOME"])
    assert codex_home.is_relative_to(tmp / "runtime")  # under the Jupyter runtime dir, not ~/.codex
    assert not (tmp / "home" / ".codex").exists()
    codex = tomllib.loads((codex_home / "config.toml").read_text())
    assert codex["model_providers"]["llm_af"]["base_url"] == root + "/v1" and codex["model"] == "tiny"

    # clients started in that terminal reach the service with no configuration
    code = "import ollama, anthropic; print('TAGS', [m.model for m in ollama.list().models])"
    out = _shell(base, f'{sys.executable} -c "{code}"')
    assert f"TAGS {MODELS}" in out, out
    assert fake.requests[-1]["route"] == "api/tags"


def test_kernels_get_the_same_variables(jupyter: tuple[Proc, FakeService, Path]) -> None:
    proc, _fake, _tmp = jupyter
    base = proc.extra["base"]
    kernel = httpx.post(base + "api/kernels", headers=auth(), json={"name": "python3"}, timeout=60).json()
    try:
        ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
        code = (
            "import os; print({k: v for k, v in os.environ.items()"
            " if k.startswith(('ANTHROPIC_', 'OLLAMA_', 'CODEX_', 'OPENAI_')) and v})"
        )
        msg_id = os.urandom(8).hex()
        request = {
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "s",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False},
        }  # fmt: skip
        with connect(ws_url, additional_headers=auth(), open_timeout=30) as ws:
            ws.send(json.dumps(request))
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline
                msg = json.loads(ws.recv(timeout=60))
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    break
        shown = eval(msg["content"]["text"])  # a dict literal printed by the kernel
    finally:
        httpx.delete(base + f"api/kernels/{kernel['id']}", headers=auth(), timeout=30)
    assert shown["ANTHROPIC_BASE_URL"] == base + "llm" and shown["ANTHROPIC_AUTH_TOKEN"] == SERVER_TOKEN
    assert shown["OLLAMA_API_BASE"] == base + "llm" and shown["OPENAI_API_KEY"] == "sk-users-own"
    assert Path(shown["CODEX_HOME"], "config.toml").exists()


# -- coding agents typed in a Lab terminal, answered by the embedded default ------------------------


@pytest.fixture(scope="module")
def embedded_jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """``jupyter server`` with the extension's zero-config default (embedded llama.cpp), fresh $HOME."""
    if not embedded_available():
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    tmp = tmp_path_factory.mktemp("jupyter-embedded")
    (tmp / "config").mkdir()
    (tmp / "home").mkdir()
    # One slot per model: the agents' requests take turns (Claude Code sends a second one beside
    # its answer), each with the whole context (Codex's own prompt is ~4.6k tokens).
    config = {
        "ServerApp": {"jpserver_extensions": {"jupyter_llm_af": True}},
        "LLMService": {"embedded_parallel": 1},
    }
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    port = free_port()
    env = {name: "" for name in CLIENT_VARS if os.environ.get(name)}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        HOME=str(tmp / "home"),
        SHELL="/bin/bash",
    )
    args = [PY, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={SERVER_TOKEN}", f"--ServerApp.root_dir={tmp}"]  # fmt: skip
    proc = start_process(args, f"http://127.0.0.1:{port}/llm/", headers=auth(), env=env, timeout=90)
    proc.extra.update(base=f"http://127.0.0.1:{port}/", tmp=tmp)
    yield proc
    proc.stop()


def _service_log(proc: Proc, last: int = 12) -> str:
    """The service's access-log lines for the model routes (tokens read and written, times,
    ``client_gone`` when the CLI was killed), and its last warnings: why an agent was slow."""
    try:
        lines = Path(proc.log_path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    access = [line for line in lines if "jupyter_llm_af.access]" in line and " route=/v1/" in line]
    problems = [line for line in lines if line.startswith(("[W ", "[E ")) and "llm" in line]
    return "\n".join(["-- access log --", *access[-last:], "-- warnings --", *problems[-5:]])


def _agent_in_terminal(proc: Proc, command: str, timeout: float) -> str:
    """What ``command`` typed in a Lab terminal printed (colours removed); if it does not finish,
    what it printed and what the service saw."""
    try:
        out = _shell(proc.extra["base"], command, timeout=timeout)
    except AssertionError as err:
        raise AssertionError(f"no end within {timeout} s; terminal:\n{err}\n{_service_log(proc)}") from None
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


def _why(out: str, proc: Proc) -> str:
    """An agent test's failure message: the terminal's end and the service's view."""
    return f"terminal:\n{out[-3000:]}\n{_service_log(proc)}"


@pytest.mark.llama
@pytest.mark.timeout(420)
def test_claude_code_answers_in_a_lab_terminal(embedded_jupyter: Proc, agent_clis: dict[str, str]) -> None:
    """``claude -p`` with no set-up: ANTHROPIC_BASE_URL, ANTHROPIC_AUTH_TOKEN and ANTHROPIC_MODEL
    come from the server. (``--system-prompt``/``--tools ""``: Claude Code's own ~20k-token system
    prompt and tool list do not fit a 135M model's context; a site's GPU model needs neither.)"""
    command = (
        f"timeout 330 {agent_clis['claude']} -p 'In one sentence: what is a Slurm job?'"
        " --system-prompt 'You are brief.' --tools '' --output-format json < /dev/null 2>&1; echo \"exit=$?\""
    )
    # Claude Code samples, and asks the model to go on when an answer stops at max_tokens (up to
    # 3 times): a 135M model rambling to its cap keeps it going, hence the model's small cap.
    out = _agent_in_terminal(embedded_jupyter, command, timeout=360)
    why = _why(out, embedded_jupyter)
    assert "exit=0" in out, why
    results = [line for line in out.splitlines() if line.startswith("{") and '"result"' in line]
    assert results, why
    result = json.loads(results[-1])
    assert result["subtype"] == "success" and result["is_error"] is False, why
    assert result["result"].strip(), why
    print(_service_log(embedded_jupyter))  # shown with -rP: the requests' tokens and times


CODEX_CUT = "Incomplete response returned, reason: max_output_tokens"


@pytest.mark.llama
@pytest.mark.timeout(660)
def test_codex_answers_in_a_lab_terminal(embedded_jupyter: Proc, agent_clis: dict[str, str]) -> None:
    """``codex exec`` with no flags but the one every non-git directory needs: the generated
    ``$CODEX_HOME/config.toml`` names the service's Responses API, its token variable and model."""
    codex = agent_clis["codex"]
    # Codex's own prompt is ~4.6k tokens: 1.5 min to read on two cores, longer when they are shared
    command = (
        f"cd \"$HOME\" && timeout 300 {codex} exec --skip-git-repo-check 'Say hi' < /dev/null 2>&1;"
        ' echo "exit=$?"'
    )
    out = _agent_in_terminal(embedded_jupyter, command, timeout=320)
    if CODEX_CUT in out:
        # Codex asks for no limit and stops with this error when an answer is cut at the 135M
        # model's cap (it rambles under Codex's prompt now and then): the service did its part,
        # and the model's next sample gets one more chance, which must answer cleanly.
        print(f"first run cut at the cap:\n{out[-1500:]}\n{_service_log(embedded_jupyter)}")
        out = _agent_in_terminal(embedded_jupyter, command, timeout=320)
    why = _why(out, embedded_jupyter)
    assert "exit=0" in out, why
    assert "model: smollm2:135m" in out and "provider: llm_af" in out, why
    answer = out.split("\ncodex\n")[-1].split("tokens used")[0]
    assert "tokens used" in out and answer.strip(), why
    assert not re.search(r"ERROR|unexpected status", out), why
    print(_service_log(embedded_jupyter))  # shown with -rP: the requests' tokens and times
