"""Anthropic Messages and OpenAI Responses through the service (issue 13), with the real
``anthropic`` and ``openai`` SDKs: passed through to a backend that serves them (llama.cpp's
llama-server), translated onto /v1/chat/completions for one that does not (the Ollama double,
an Ollama older than 0.13), in standalone and in Jupyter, with the auth and errors these
clients expect."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from .conftest import TOKEN, auth, start_double, start_jupyter_server, start_standalone

ASK = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def translated():
    """Standalone service in front of a backend without /v1/messages or /v1/responses."""
    double = start_double(delay=0.005)
    svc = start_standalone("--backend", "upstream", "--upstream-url", double.url)
    yield svc
    svc.stop()
    double.stop()


def _claude(url: str, **kw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=TOKEN, max_retries=0, timeout=300, **kw)


# -- translated: the backend lacks both ------------------------------------------------------
def test_anthropic_sdk_translated(translated):
    c = _claude(translated.url)
    msg = c.messages.create(model="tiny:1b", max_tokens=6, messages=ASK)
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "tiny:1b"
    assert msg.content[0].type == "text" and msg.content[0].text.strip()
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens > 0
    with c.messages.stream(model="tiny:1b", max_tokens=5, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text
    # count_tokens: an estimate when the backend cannot count (Claude Code calls it)
    n = c.messages.count_tokens(model="tiny:1b", messages=ASK)
    assert n.input_tokens > 0


def test_openai_responses_translated(translated):
    c = openai.OpenAI(base_url=translated.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
    r = c.responses.create(model="tiny:1b", input="Say hello", max_output_tokens=5)
    assert r.object == "response" and r.output_text.strip() and r.model == "tiny:1b"
    with c.responses.stream(model="tiny:1b", input="Say hello", max_output_tokens=4) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # the double always stops at the token limit: the Responses API says "incomplete" then
    assert deltas and events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_errors_in_anthropic_format(translated):
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=translated.url, api_key="wrong", max_retries=0).messages.create(
            model="tiny:1b", max_tokens=5, messages=ASK
        )
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        _claude(translated.url).messages.create(model="nope:1b", max_tokens=5, messages=ASK)
    with pytest.raises(anthropic.BadRequestError):
        _claude(translated.url).messages.create(model="tiny:1b", max_tokens=5, messages="not a list")
    r = httpx.post(translated.url + "/v1/messages/nope", headers={"x-api-key": TOKEN}, json={})
    assert r.status_code == 404 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "not_found_error"


def test_head_probes_and_version(translated):
    for path in ("/", "/api/version", "/api/tags"):
        r = httpx.head(translated.url + path, headers=auth(), timeout=30)
        assert r.status_code == 200, path
    assert httpx.head(translated.url + "/api/version", timeout=30).status_code == 401
    version = httpx.get(translated.url + "/api/version", headers=auth(), timeout=30).json()["version"]
    assert tuple(int(x) for x in version.split(".")) >= (0, 13, 4)  # Codex --oss requires it


# -- native: llama.cpp's server has both -----------------------------------------------------
@pytest.mark.llama
def test_anthropic_sdk_native_embedded(embedded_service):
    c = _claude(embedded_service.url)
    # greedy, so a 135M model's answer is the same each run (anthropic 2.x has no temperature argument)
    msg = c.messages.create(model="smollm2:135m", max_tokens=32, messages=ASK, extra_body={"temperature": 0})
    assert "Paris" in msg.content[0].text and msg.model == "smollm2:135m"
    # the query string Claude Code sends
    r = httpx.post(
        embedded_service.url + "/v1/messages?beta=true",
        headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01"},
        json={"model": "smollm2:135m", "max_tokens": 8, "messages": ASK},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["type"] == "message"
    tools = [
        {
            "name": "get_weather",
            "description": "Get the weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    with c.messages.stream(
        model="smollm2:135m",
        max_tokens=64,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        tools=tools,
        tool_choice={"type": "any"},
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason in ("tool_use", "end_turn", "max_tokens")
    assert final.model == "smollm2:135m"


@pytest.mark.llama
def test_openai_responses_native_embedded(embedded_service):
    c = openai.OpenAI(base_url=embedded_service.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
    r = c.responses.create(model="smollm2:135m", input=ASK[0]["content"], max_output_tokens=32, temperature=0)
    assert "Paris" in r.output_text and r.model == "smollm2:135m"
    with c.responses.stream(
        model="smollm2:135m", input="Say hello in one word.", max_output_tokens=160, temperature=0
    ) as stream:
        final = stream.get_final_response()  # the SDK's helper needs a well-formed event sequence
    assert final.output_text.strip() and final.status == "completed" and final.model == "smollm2:135m"


# -- Jupyter: the key as Anthropic clients send it ---------------------------------------------
def test_jupyter_accepts_x_api_key_and_bearer(ollama_double):
    jp = start_jupyter_server(
        "--LLMService.backend=upstream", f"--LLMService.upstream_url={ollama_double.url}"
    )
    try:
        msg = _claude(jp.url.rstrip("/")).messages.create(model="tiny:1b", max_tokens=4, messages=ASK)
        assert msg.content[0].text.strip()
        r = httpx.post(
            jp.url.rstrip("/") + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"model": "tiny:1b", "messages": ASK, "max_tokens": 3},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            jp.url.rstrip("/") + "/v1/messages", json={"model": "tiny:1b", "max_tokens": 3, "messages": ASK}
        )
        assert r.status_code == 403 and r.json()["type"] == "error"  # no XSRF sentence for an API client
    finally:
        jp.stop()
