"""Embedded default + Ollama API translation (issue 4), with real tokens from llama.cpp's server
(SmolLM2-135M-Instruct, Gemma 3 270M) and the real `ollama`/`openai` clients and curl."""

from __future__ import annotations

import json
import math
import subprocess
import time

import httpx
import ollama
import openai
import pytest

from .conftest import TOKEN, auth, start_standalone

pytestmark = pytest.mark.llama
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def client(embedded_service) -> ollama.Client:
    return ollama.Client(host=embedded_service.url, headers=auth(), timeout=300)


def test_state_names_the_embedded_models(embedded_service):
    st = httpx.get(embedded_service.url + "/backend/state", headers=auth(), timeout=30).json()
    assert st["kind"] == "local" and st["protocol"] == "openai" and st["state"] == "ready"
    assert {"smollm2:135m", "gemma3:270m"} <= set(st["models"])


def test_ollama_list_show_ps(client):
    models = {m.model: m for m in client.list().models}
    assert {"smollm2:135m", "gemma3:270m"} <= set(models)
    smol = models["smollm2:135m"]
    assert smol.size == 98_362_432 and smol.details.quantization_level == "Q4_1"
    assert len(smol.digest) == 64 and smol.details.parameter_size == "135M"
    shown = client.show("smollm2:135m")
    assert "im_start" in (shown.template or "")  # SmolLM2's ChatML template, from llama.cpp /props
    assert "completion" in shown.capabilities


def test_base_model_is_labelled_and_its_chat_ends_cleanly(embedded_service, client):
    """Gemma 3 270M is a base model: users are told where they pick models, and a chat with no
    options still ends within the site's default token limit instead of filling the screen."""
    tags = httpx.get(embedded_service.url + "/api/tags", headers=auth(), timeout=60).json()
    notes = {m["name"]: m.get("note", "") for m in tags["models"]}
    assert "base model" in notes["gemma3:270m"].lower() and not notes["smollm2:135m"]
    st = httpx.get(embedded_service.url + "/backend/state", headers=auth(), timeout=30).json()
    assert "gemma3:270m" in st["model_notes"] and st["default_model"] == "smollm2:135m"
    shown = httpx.post(
        embedded_service.url + "/api/show", headers=auth(), json={"model": "gemma3:270m"}, timeout=60
    ).json()
    assert "base model" in shown["note"].lower()
    start = time.monotonic()
    r = client.chat(model="gemma3:270m", messages=[{"role": "user", "content": "Tell me about the sea."}])
    assert r.done and 0 < r.eval_count <= 200, r.eval_count
    assert time.monotonic() - start < 120
    c = openai.OpenAI(base_url=embedded_service.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
    out = c.chat.completions.create(model="gemma3:270m", messages=[{"role": "user", "content": "Hi"}])
    assert out.usage.completion_tokens <= 200 and out.model == "gemma3:270m"


def test_ollama_chat_non_streaming_real_answer(client):
    r = client.chat(model="smollm2:135m", messages=CHAT, options={"temperature": 0, "num_predict": 32})
    assert "Paris" in r.message.content
    assert r.done and r.done_reason in ("stop", "length")
    assert r.eval_count > 0 and r.eval_duration > 0 and r.prompt_eval_count > 0
    assert r.total_duration >= r.eval_duration  # nanoseconds
    assert r.created_at.endswith("Z") or "+" in r.created_at


def test_ollama_chat_streaming(client):
    parts = list(
        client.chat(
            model="smollm2:135m", messages=CHAT, stream=True, options={"temperature": 0, "num_predict": 32}
        )
    )
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "Paris" in "".join(p.message.content for p in parts)
    assert (
        parts[-1].eval_count == len([p for p in parts[:-1] if p.message.content]) or parts[-1].eval_count > 0
    )


def test_ollama_generate_and_options(client):
    r = client.generate(model="gemma3:270m", prompt="The sea is", options={"num_predict": 6, "seed": 1})
    assert r.done_reason == "length" and r.eval_count == 6 and r.response
    again = client.generate(
        model="gemma3:270m", prompt="The sea is", options={"num_predict": 6, "seed": 1, "temperature": 0}
    )
    assert again.eval_count == 6


def test_ollama_json_format(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.chat(
        model="smollm2:135m", messages=CHAT, format=schema, options={"temperature": 0, "num_predict": 40}
    )
    assert "city" in json.loads(r.message.content)


def test_ollama_embed(client):
    r = client.embed(model="smollm2:135m", input=["The cat sat on the mat.", "A kitten on the couch."])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576
    norm = math.sqrt(sum(x * x for x in r.embeddings[0]))
    assert abs(norm - 1.0) < 1e-3  # unit vectors, as Ollama's /api/embed returns
    legacy = client.embeddings(model="smollm2:135m", prompt="hello")
    assert len(legacy.embedding) == 576


def test_ollama_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3.3:70b", messages=CHAT)
    assert e.value.status_code == 404 and e.value.error == "model 'llama3.3:70b' not found"
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("smollm2:135m")
    assert e.value.status_code == 403


def test_openai_client_pass_through(embedded_service):
    c = openai.OpenAI(base_url=embedded_service.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
    # the same names as /api/tags, never the router's internal ids ("smollm2")
    tags = httpx.get(embedded_service.url + "/api/tags", headers=auth(), timeout=60).json()
    names = {m["name"] for m in tags["models"]}
    assert names == {m.id for m in c.models.list()} == {"smollm2:135m", "gemma3:270m"}
    assert c.models.retrieve("gemma3:270m").id == "gemma3:270m"
    r = c.chat.completions.create(model="smollm2:135m", messages=CHAT, temperature=0, max_tokens=32)
    assert "Paris" in r.choices[0].message.content
    assert r.model == "smollm2:135m"
    stream = c.chat.completions.create(
        model="smollm2:135m", messages=CHAT, temperature=0, max_tokens=32, stream=True
    )
    chunks = list(stream)
    assert "Paris" in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert {ch.model for ch in chunks} == {"smollm2:135m"}
    emb = c.embeddings.create(model="smollm2:135m", input="hello")
    assert len(emb.data[0].embedding) == 576 and emb.model == "smollm2:135m"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=CHAT)


def test_curl_docs_commands(embedded_service):
    out = subprocess.run(
        f"curl -s -H 'Authorization: Bearer {TOKEN}' {embedded_service.url}/api/tags"
        ' | jq -r \'.["models"][]["name"]\'',
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert "smollm2:135m" in out


def test_chained_native_front_in_front_of_translating_instance(embedded_service, tmp_path):
    """An ollama-protocol instance (native pass-through) → this openai-protocol instance → llama-server."""
    cfg = tmp_path / "front.py"
    cfg.write_text(
        "c.LLMService.backend = 'upstream'\n"
        f"c.LLMService.upstream_url = {embedded_service.url!r}\n"
        "c.LLMService.backend_protocol = 'ollama'\n"
        f"c.LLMService.upstream_headers = {{'Authorization': 'Bearer {TOKEN}'}}\n"
    )
    front = start_standalone("--config", str(cfg), token="front-token")
    try:
        cl = ollama.Client(host=front.url, headers={"Authorization": "Bearer front-token"}, timeout=300)
        parts = list(
            cl.chat(
                model="smollm2:135m",
                messages=CHAT,
                stream=True,
                options={"temperature": 0, "num_predict": 32},
            )
        )
        assert "Paris" in "".join(p.message.content for p in parts) and parts[-1].done
        assert "smollm2:135m" in [m.model for m in cl.list().models]
        st = httpx.get(front.url + "/backend/state", headers={"Authorization": "Bearer front-token"}).json()
        assert st["protocol"] == "ollama"
        t0 = time.monotonic()
        assert cl.embed(model="smollm2:135m", input="x").embeddings
        assert time.monotonic() - t0 < 60
    finally:
        front.stop()


def test_jupyter_server_with_no_config_answers_with_a_real_model():
    """The README's first command: a Jupyter server with the extension and no site config at all."""
    from .conftest import start_jupyter_server

    server = start_jupyter_server(timeout=180)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = httpx.get(server.url + "/backend/state", headers=auth(), timeout=30).json()
            if st["state"] in ("ready", "failed"):
                break
            time.sleep(0.3)
        assert st["kind"] == "local" and st["state"] == "ready", st
        assert st["default_model"] == "smollm2:135m" and st["user"]["admin"] is True
        c = ollama.Client(host=server.url, headers=auth(), timeout=300)
        r = c.chat(model="smollm2:135m", messages=CHAT, options={"temperature": 0, "num_predict": 32})
        assert "Paris" in r.message.content
        o = openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
        assert o.embeddings.create(model="smollm2:135m", input="hi").data[0].embedding
    finally:
        server.stop()


def test_usage_counts_what_the_real_backend_reported(embedded_service, client):
    """Per-user usage (GET /usage) adds up the tokens llama.cpp itself counted, for Ollama's API
    (translated) and OpenAI's (passed through, streamed with include_usage)."""

    def totals() -> dict:
        doc = httpx.get(embedded_service.url + "/usage?days=1", headers=auth(), timeout=30).json()
        return doc["usage"]["models"].get("smollm2:135m") or {"prompt_tokens": 0, "completion_tokens": 0}

    before = totals()
    r = client.chat(model="smollm2:135m", messages=CHAT, options={"temperature": 0, "num_predict": 16})
    reported_prompt, reported_completion = r.prompt_eval_count, r.eval_count
    c = openai.OpenAI(base_url=embedded_service.url + "/v1", api_key=TOKEN, max_retries=0, timeout=300)
    chunks = list(
        c.chat.completions.create(
            model="smollm2:135m",
            messages=CHAT,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = next(ch.usage for ch in reversed(chunks) if ch.usage)
    reported_prompt += usage.prompt_tokens
    reported_completion += usage.completion_tokens
    after = totals()
    assert after["prompt_tokens"] - before["prompt_tokens"] == reported_prompt
    assert after["completion_tokens"] - before["completion_tokens"] == reported_completion
