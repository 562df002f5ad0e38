"""Translation unit tests (Ollama ↔ OpenAI), fed with recorded OpenAI-format backend answers
through httpx's transport hook: tool calls, options, formats, errors, NDJSON stats."""

from __future__ import annotations

import json

import httpx
import pytest

from jupyter_llm_af.errors import ServiceError as OllamaError
from jupyter_llm_af.forwarding import Upstream
from jupyter_llm_af.translate import OpenAIToOllama

MODELS = {
    "object": "list",
    "data": [
        {
            "id": "qwen",
            "aliases": ["qwen3:8b"],
            "object": "model",
            "meta": {"n_params": 8_000_000_000, "size": 5_000_000_000, "n_ctx": 4096},
        }
    ],
}
TOOL_STREAM = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
            }
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}
        ]
    },
    {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9},
    },
]


def make(seen: list, stream_events: list | None = None, status: int = 200, body: dict | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        payload = json.loads(request.content)
        seen.append(payload)
        if status != 200:
            return httpx.Response(status, json=body)
        if payload.get("stream"):
            text = "".join(f"data: {json.dumps(e)}\n\n" for e in stream_events or []) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json=body)

    up = Upstream()
    up.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIToOllama(up)


@pytest.mark.asyncio
async def test_streamed_tool_call_arguments_become_an_object():
    seen: list = []
    tr = make(seen, TOOL_STREAM)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    streaming, objs = await tr.chat(
        "http://b",
        {
            "model": "qwen3:8b",
            "tools": tools,
            "messages": [{"role": "user", "content": "Weather?", "images": ["aGVsbG8="]}],
            "options": {"temperature": 0.2, "num_predict": 50, "num_ctx": 8192},
        },
    )
    out = [o async for o in objs]
    assert streaming and out[-1]["done"] and not any(o["done"] for o in out[:-1])
    calls = [c for o in out for c in o["message"].get("tool_calls", [])]
    assert calls == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert out[-1]["prompt_eval_count"] == 12 and out[-1]["eval_count"] == 9
    assert isinstance(out[-1]["total_duration"], int) and out[-1]["created_at"].endswith("Z")
    sent = seen[0]
    assert sent["model"] == "qwen" and sent["tools"] == tools  # alias resolved to the backend id
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and "num_ctx" not in sent
    assert sent["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.asyncio
async def test_non_streaming_generate_with_schema_and_history_tool_messages():
    seen: list = []
    tr = make(
        seen,
        body={
            "choices": [{"message": {"content": '{"a": 1}'}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        },
    )
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    streaming, doc = await tr.generate(
        "http://b",
        {"model": "qwen3:8b", "prompt": "x", "system": "be terse", "format": schema, "stream": False},
    )
    assert not streaming and doc["response"] == '{"a": 1}' and doc["done_reason"] == "length"
    assert seen[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert seen[0]["messages"][0] == {"role": "system", "content": "be terse"}
    _, doc = await tr.chat(
        "http://b",
        {
            "model": "qwen3:8b",
            "stream": False,
            "format": "json",
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
        },
    )
    sent = seen[1]
    assert sent["response_format"] == {"type": "json_object"}
    assert json.loads(sent["messages"][0]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert sent["messages"][1]["role"] == "tool" and sent["messages"][1]["tool_call_id"]


@pytest.mark.asyncio
async def test_errors_in_ollama_words():
    tr = make(
        [],
        status=400,
        body={"error": {"message": "request (3031 tokens) exceeds the available context size"}},
    )
    with pytest.raises(OllamaError) as e:
        await tr.chat("http://b", {"model": "nope:1b", "messages": [{"role": "user", "content": "x"}]})
    assert e.value.status == 404 and e.value.message == "model 'nope:1b' not found"
    with pytest.raises(OllamaError) as e:
        await tr.chat(
            "http://b", {"model": "qwen3:8b", "stream": False, "messages": [{"role": "user", "content": "x"}]}
        )
    assert e.value.status == 400 and "context size" in e.value.message
    with pytest.raises(OllamaError) as e:
        await tr.chat("http://b", {"model": "qwen3:8b", "messages": "not a list"})
    assert e.value.status == 400
    tags = await tr.tags("http://b")
    assert (
        tags["models"][0]["name"] == "qwen3:8b" and tags["models"][0]["details"]["parameter_size"] == "8.0B"
    )
    assert tags["models"][0]["size"] == 5_000_000_000
