"""``kernel_environment()`` and ``jupyter_llm_af.clients``: the variables, and real clients using them.

The client checks send real requests to the stand-in service of ``test_magics`` (served under
``/llm/`` with a token), so they prove that the ``ollama`` and ``openai`` packages keep the path
of ``OLLAMA_HOST`` / ``OPENAI_BASE_URL`` and send the token.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from jupyter_llm_af import clients
from jupyter_llm_af.kernel_env import kernel_environment

from .test_magics import MODELS, TOKEN, FakeService, reply_for

P = "http://127.0.0.1:8888/user/ada/llm/"
ALL = {
    "JUPYTER_LLM_AF_URL": P,
    "JUPYTER_LLM_AF_TOKEN": "tok",
    "OLLAMA_HOST": "http://127.0.0.1:8888/user/ada/llm",
    "OLLAMA_API_KEY": "tok",
    "OPENAI_BASE_URL": P + "v1",
    "OPENAI_API_BASE": P + "v1",
    "OPENAI_API_KEY": "tok",
}
CLIENT_VARS = [*ALL, "JUPYTER_LLM_AF_MODEL"]


# -- kernel_environment -----------------------------------------------------------------------


def test_adds_every_variable_to_an_empty_environment() -> None:
    assert kernel_environment(P, "tok", {}) == ALL


def test_url_without_trailing_slash_is_the_same_prefix() -> None:
    assert kernel_environment(P.rstrip("/"), "tok", {}) == ALL


@pytest.mark.parametrize(
    ("user_set", "kept_groups"),
    [
        ({"OPENAI_API_KEY": "sk-real"}, {"JUPYTER_LLM_AF_URL", "OLLAMA_HOST"}),
        ({"OPENAI_BASE_URL": "https://api.example/v1"}, {"JUPYTER_LLM_AF_URL", "OLLAMA_HOST"}),
        ({"OLLAMA_HOST": "gpu17:11434"}, {"JUPYTER_LLM_AF_URL", "OPENAI_BASE_URL"}),
        ({"OLLAMA_API_KEY": "cloud-key"}, {"JUPYTER_LLM_AF_URL", "OPENAI_BASE_URL"}),
        ({"JUPYTER_LLM_AF_URL": "http://hub/services/llm/"}, {"OLLAMA_HOST", "OPENAI_BASE_URL"}),
    ],
)
def test_never_overwrites_and_skips_the_whole_group(user_set: dict[str, str], kept_groups: set[str]) -> None:
    added = kernel_environment(P, "tok", user_set)
    assert not set(added) & set(user_set)  # nothing the user set is returned
    groups = {
        "JUPYTER_LLM_AF_URL": {"JUPYTER_LLM_AF_URL", "JUPYTER_LLM_AF_TOKEN"},
        "OLLAMA_HOST": {"OLLAMA_HOST", "OLLAMA_API_KEY"},
        "OPENAI_BASE_URL": {"OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"},
    }
    expected = set().union(*(groups[g] for g in kept_groups))
    assert set(added) == expected  # e.g. a real OpenAI key is never paired with our URL
    assert all(added[k] == ALL[k] for k in added)


def test_an_empty_variable_counts_as_unset() -> None:
    assert kernel_environment(P, "tok", {"OLLAMA_HOST": ""}) == ALL


def test_without_a_token_no_empty_credentials() -> None:
    added = kernel_environment(P, "", {})
    assert "JUPYTER_LLM_AF_TOKEN" not in added and "OLLAMA_API_KEY" not in added
    assert added["OPENAI_API_KEY"] == "unused"  # the openai client refuses to start without one


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
    ollama = pytest.importorskip("ollama")
    assert env["OLLAMA_HOST"].endswith("/llm")
    client = ollama.Client()  # zero config: OLLAMA_HOST and OLLAMA_API_KEY (ollama >= 0.6)
    answer = client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content == reply_for([{"role": "user", "content": "hi"}])
    assert [m.model for m in client.list().models] == MODELS
    seen = [(r["route"], r["auth"]) for r in fake.requests]
    assert seen == [("api/chat", True), ("api/tags", True)]  # under /llm/, with the token


def test_openai_client_uses_openai_base_url(env: dict[str, str], fake: FakeService) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI()
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content.startswith("**Echo 1**")
    assert [(r["route"], r["auth"]) for r in fake.requests] == [("v1/chat/completions", True)]


def test_package_clients(env: dict[str, str], fake: FakeService) -> None:
    pytest.importorskip("ollama")
    pytest.importorskip("openai")
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
    pytest.importorskip("ollama")
    pytest.importorskip("openai")
    chat = await clients.async_ollama_client().chat(model="tiny", messages=[{"role": "user", "content": "c"}])
    assert chat.message.content.endswith(": c")
    completion = await clients.async_openai_client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "d"}]
    )
    assert completion.choices[0].message.content.endswith(": d")


def test_ollama_client_sends_the_token_itself(monkeypatch: pytest.MonkeyPatch, fake: FakeService) -> None:
    """With only JUPYTER_LLM_AF_* set (e.g. an ollama < 0.6 that ignores OLLAMA_API_KEY)."""
    pytest.importorskip("ollama")
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
