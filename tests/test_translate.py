"""Translation tests (Ollama ↔ OpenAI): fed with recorded OpenAI-format backend answers through
httpx's transport hook (tool calls, options, formats, thinking, logprobs, truncation, errors, NDJSON
stats, broken streams), and against a real llama-server where the behaviour depends on it."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator

import httpx
import pytest

from jupyter_llm_af import embedded
from jupyter_llm_af.errors import ServiceError as OllamaError
from jupyter_llm_af.errors import UpstreamError
from jupyter_llm_af.forwarding import Upstream
from jupyter_llm_af.translate import OpenAIToOllama

from .conftest import free_port, start_process

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
    # Ollama's shape: the call's id beside the function, its position as function.index
    assert calls == [
        {"id": "c1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    ]
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


# -- Ollama's API as it is today: think, ids, logprobs, truncate, dimensions, suffix ---------------
CHAT = [{"role": "user", "content": "x"}]


def routed(routes: dict, seen: list | None = None) -> OpenAIToOllama:
    """A translator whose backend answers per path: ``routes[path](payload) -> httpx.Response``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        payload = json.loads(request.content)
        if seen is not None:
            seen.append((request.url.path, payload))
        return routes[request.url.path](payload)

    up = Upstream()
    up.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIToOllama(up)


def sse_response(events: list, done: bool = True) -> httpx.Response:
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + ("data: [DONE]\n\n" if done else "")
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}


REASONING_STREAM = [
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "Paris is "}),
    chunk({"reasoning_content": "in France."}),
    chunk({"content": "Paris"}),
    chunk({}, "stop"),
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}},
]


@pytest.mark.asyncio
async def test_think_maps_to_reasoning_switches_and_thinking_comes_back():
    seen: list = []
    answer = {
        "choices": [
            {
                "message": {"role": "assistant", "content": "Paris", "reasoning_content": "easy"},
                "finish_reason": "stop",
            }
        ]
    }
    tr = routed(
        {
            "/v1/chat/completions": lambda p: (
                sse_response(REASONING_STREAM) if p.get("stream") else httpx.Response(200, json=answer)
            )
        },
        seen,
    )
    base = {"model": "qwen3:8b", "messages": CHAT, "stream": False}
    _, doc = await tr.chat("http://b", {**base, "think": True})
    assert doc["message"]["thinking"] == "easy" and doc["message"]["content"] == "Paris"
    assert seen[-1][1]["chat_template_kwargs"] == {"enable_thinking": True}
    _, doc = await tr.chat("http://b", {**base, "think": "high"})
    assert (
        seen[-1][1]["reasoning_effort"] == "high" and seen[-1][1]["chat_template_kwargs"]["enable_thinking"]
    )
    await tr.chat("http://b", {**base, "think": "max"})
    assert seen[-1][1]["reasoning_effort"] == "high"
    _, doc = await tr.chat("http://b", {**base, "think": False})
    assert (
        seen[-1][1]["chat_template_kwargs"] == {"enable_thinking": False} and "thinking" not in doc["message"]
    )
    _, doc = await tr.chat("http://b", base)
    assert "chat_template_kwargs" not in seen[-1][1] and doc["message"]["thinking"] == "easy"
    streaming, objs = await tr.chat("http://b", {"model": "qwen3:8b", "messages": CHAT, "think": True})
    out = [o async for o in objs]
    assert "".join(o["message"].get("thinking", "") for o in out) == "Paris is in France."
    assert "".join(o["message"]["content"] for o in out) == "Paris" and out[-1]["done"]
    _, objs = await tr.generate("http://b", {"model": "qwen3:8b", "prompt": "capital?", "think": True})
    out = [o async for o in objs]
    assert "".join(o.get("thinking", "") for o in out) == "Paris is in France."
    assert "".join(o["response"] for o in out) == "Paris"
    # the assistant's earlier thinking goes back as the backend's reasoning field
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "thinking": "t"},
        *CHAT,
    ]
    await tr.chat("http://b", {**base, "messages": history})
    assert seen[-1][1]["messages"][1]["reasoning_content"] == "t"


@pytest.mark.asyncio
async def test_tool_call_ids_and_indexes_survive_both_ways():
    seen: list = []
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1}'},
                        },
                        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
            }
        ]
    }
    tr = routed({"/v1/chat/completions": lambda p: httpx.Response(200, json=answer)}, seen)
    _, doc = await tr.chat("http://b", {"model": "qwen3:8b", "stream": False, "messages": CHAT})
    assert doc["message"]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "call_b", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]
    history = [
        *CHAT,
        {"role": "assistant", "content": "", "tool_calls": doc["message"]["tool_calls"]},
        {"role": "tool", "content": "from g", "tool_name": "g"},  # paired by name
        {"role": "tool", "content": "from f", "tool_call_id": "call_a"},  # by id
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "h", "arguments": {}}}]},
        {"role": "tool", "content": "from h"},  # no id, no name: the call still open
    ]
    await tr.chat("http://b", {"model": "qwen3:8b", "stream": False, "messages": history})
    sent = seen[-1][1]["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]
    assert sent[2]["tool_call_id"] == "call_b" and sent[3]["tool_call_id"] == "call_a"
    assert sent[5]["tool_call_id"] == sent[4]["tool_calls"][0]["id"] == "call_4_0"


@pytest.mark.asyncio
async def test_logprobs_requested_and_returned_in_ollamas_shape():
    seen: list = []

    def entry(token: str, lp: float, alts: int) -> dict:
        alt = {"id": 1, "token": token, "bytes": list(token.encode()), "logprob": lp}
        return {**alt, "top_logprobs": [alt, {"id": 2, "token": "?", "bytes": [63], "logprob": -9.0}][:alts]}

    answer = {
        "choices": [
            {
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": {"content": [entry("Hi", -0.5, 2)]},
            }
        ]
    }
    stream = [chunk({"content": "Hi"}, logprobs={"content": [entry("Hi", -0.5, 2)]}), chunk({}, "stop")]
    tr = routed(
        {
            "/v1/chat/completions": lambda p: (
                sse_response(stream) if p.get("stream") else httpx.Response(200, json=answer)
            ),
            "/v1/completions": lambda p: httpx.Response(
                200,
                json={
                    "choices": [
                        {
                            "text": "Hi",
                            "finish_reason": "stop",
                            "logprobs": {"content": [entry("Hi", -0.5, 2)]},
                        }
                    ]
                },
            ),
        },
        seen,
    )
    base = {"model": "qwen3:8b", "messages": CHAT, "stream": False, "logprobs": True}
    _, doc = await tr.chat("http://b", {**base, "top_logprobs": 1})
    assert seen[-1][1]["logprobs"] is True and seen[-1][1]["top_logprobs"] == 1
    assert doc["logprobs"] == [
        {
            "token": "Hi",
            "logprob": -0.5,
            "bytes": [72, 105],
            "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}],
        }
    ]
    _, doc = await tr.chat("http://b", base)  # no alternatives asked for: none given
    assert doc["logprobs"] == [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]
    _, objs = await tr.chat("http://b", {**base, "stream": True, "top_logprobs": 2})
    out = [o async for o in objs]
    assert len(out[0]["logprobs"][0]["top_logprobs"]) == 2 and "logprobs" not in out[-1]
    _, doc = await tr.generate(
        "http://b", {"model": "qwen3:8b", "prompt": "x", "raw": True, "stream": False, "logprobs": True}
    )
    assert seen[-1] == ("/v1/completions", {"model": "qwen", "logprobs": 1, "prompt": "x"})
    assert doc["logprobs"][0]["token"] == "Hi"
    _, doc = await tr.chat("http://b", {"model": "qwen3:8b", "messages": CHAT, "stream": False})
    assert "logprobs" not in doc and "logprobs" not in seen[-1][1]


@pytest.mark.asyncio
async def test_chat_history_too_long_is_shortened_unless_truncate_false():
    seen: list = []
    too_long = {
        "error": {
            "code": 400,
            "message": "request (3000 tokens) exceeds the available context size (1000 tokens), try "
            "increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 3000,
            "n_ctx": 1000,
        }
    }

    def backend(payload: dict) -> httpx.Response:
        if len(payload["messages"]) > 3 or payload["messages"][-1]["content"] == "huge":
            return httpx.Response(400, json=too_long)
        return httpx.Response(
            200, json={"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
        )

    tr = routed({"/v1/chat/completions": backend}, seen)
    history = [{"role": "system", "content": "be brief"}]
    for i in range(4):
        history += [
            {"role": "user", "content": f"question {i} " * 20},
            {"role": "assistant", "content": f"answer {i} " * 20},
        ]
    history.append({"role": "user", "content": "last question"})
    _, doc = await tr.chat("http://b", {"model": "qwen3:8b", "stream": False, "messages": history})
    assert doc["message"]["content"] == "ok"
    kept = seen[-1][1]["messages"]
    assert kept[0] == {"role": "system", "content": "be brief"} and kept[-1]["content"] == "last question"
    assert len(kept) <= 3 and all("question 0" not in m["content"] for m in kept)
    with pytest.raises(OllamaError) as e:
        await tr.chat(
            "http://b", {"model": "qwen3:8b", "stream": False, "truncate": False, "messages": history}
        )
    assert e.value.status == 400 and "exceeds the available context size" in e.value.message
    with pytest.raises(OllamaError) as e:  # nothing left to drop: the backend's own words
        await tr.chat(
            "http://b",
            {
                "model": "qwen3:8b",
                "stream": False,
                "messages": [history[0], {"role": "user", "content": "huge"}],
            },
        )
    assert e.value.status == 400


@pytest.mark.asyncio
async def test_embed_dimensions_cut_and_renormalise():
    vectors = [[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]]
    data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
    tr = routed(
        {"/v1/embeddings": lambda p: httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 4}})}
    )
    doc = await tr.embed("http://b", {"model": "qwen3:8b", "input": ["a", "b"], "dimensions": 2})
    assert doc["embeddings"] == [[0.6, 0.8], [1.0, 0.0]] and doc["prompt_eval_count"] == 4
    doc = await tr.embed("http://b", {"model": "qwen3:8b", "input": "a", "dimensions": 10})
    assert doc["embeddings"][0] == [3.0, 4.0, 12.0]  # more than the model has: unchanged


@pytest.mark.asyncio
async def test_generate_with_suffix_uses_infill_or_says_the_model_cannot():
    seen: list = []
    native_stream = [
        {"content": "a, b", "stop": False},
        {"content": "", "stop": True, "stop_type": "eos", "tokens_predicted": 3, "tokens_evaluated": 9},
    ]
    native = {
        "content": "a, b",
        "stop": True,
        "stop_type": "limit",
        "tokens_predicted": 3,
        "tokens_evaluated": 9,
    }
    tr = routed(
        {
            "/infill": lambda p: (
                sse_response(native_stream, done=False) if p["stream"] else httpx.Response(200, json=native)
            )
        },
        seen,
    )
    req = {
        "model": "qwen3:8b",
        "prompt": "def add(",
        "suffix": "):\n    return a + b",
        "options": {"num_predict": 8},
    }
    _, doc = await tr.generate("http://b", {**req, "stream": False})
    assert doc["response"] == "a, b" and doc["done_reason"] == "length" and doc["eval_count"] == 3
    path, sent = seen[-1]
    assert path == "/infill" and sent["input_prefix"] == "def add(" and sent["input_suffix"].startswith("):")
    assert sent["n_predict"] == 8 and sent["model"] == "qwen"
    streaming, objs = await tr.generate("http://b", req)
    out = [o async for o in objs]
    assert streaming and "".join(o["response"] for o in out) == "a, b" and out[-1]["done_reason"] == "stop"
    no_fim = {
        "error": {
            "code": 501,
            "message": "Infill is not supported by this model",
            "type": "not_supported_error",
        }
    }
    tr = routed({"/infill": lambda p: httpx.Response(501, json=no_fim)})
    with pytest.raises(OllamaError) as e:
        await tr.generate("http://b", {**req, "stream": False})
    assert e.value.status == 400 and e.value.message == '"qwen3:8b" does not support insert'


class BreakingStream(httpx.AsyncByteStream):
    """A body that sends some SSE events, then fails the way a dropped connection does."""

    def __init__(self, events: list):
        self.events = events

    async def __aiter__(self):
        for e in self.events:
            yield f"data: {json.dumps(e)}\n\n".encode()
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


@pytest.mark.asyncio
async def test_every_broken_stream_raises_upstream_error():
    partial = [chunk({"role": "assistant", "content": None}), chunk({"content": "Hel"})]
    answers = {
        "read error": lambda p: httpx.Response(
            200, stream=BreakingStream(partial), headers={"content-type": "text/event-stream"}
        ),
        "closed early": lambda p: sse_response(partial, done=False),
        "error event": lambda p: sse_response(
            [*partial, {"error": {"code": 500, "message": "slot crashed"}}]
        ),
    }
    for case, answer in answers.items():
        tr = routed({"/v1/chat/completions": answer})
        streaming, objs = await tr.chat("http://b", {"model": "qwen3:8b", "messages": CHAT})
        got: list = []
        with pytest.raises(UpstreamError) as e:
            async for o in objs:
                got.append(o)
        assert streaming and got[0]["message"]["content"] == "Hel" and not got[-1]["done"], case
        assert e.value.status == 502 and e.value.message, case
    assert "slot crashed" in e.value.message


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("endpoint", "body", "message"),
    [
        ("chat", {"options": []}, "options must be an object"),
        ("chat", {"options": {"temperature": "hot"}}, 'option "temperature" must be of type float32'),
        ("chat", {"options": {"num_predict": "5"}}, 'option "num_predict" must be of type integer'),
        ("chat", {"options": {"stop": [1]}}, 'option "stop" must be of an array of strings'),
        (
            "chat",
            {"messages": [{"role": "user", "content": "x", "images": "aGk="}]},
            "messages[0].images must be an array",
        ),
        ("chat", {"messages": [{"role": "user", "content": "x", "images": [1]}]}, "base64-encoded strings"),
        (
            "chat",
            {"messages": [{"role": "assistant", "content": "", "tool_calls": "f"}]},
            "tool_calls must be an array",
        ),
        ("chat", {"messages": [{"role": "assistant", "tool_calls": [1]}]}, "tool_calls[0] must be an object"),
        (
            "chat",
            {"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
            "must be an object with a function",
        ),
        (
            "chat",
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}
                ]
            },
            "arguments must be an object",
        ),
        ("chat", {"messages": [1]}, "messages[0] must be an object"),
        ("chat", {"messages": [{"role": 1, "content": "x"}]}, "messages[0].role must be a string"),
        (
            "chat",
            {"messages": [{"role": "user", "content": {"a": 1}}]},
            "messages[0].content must be a string",
        ),
        ("chat", {"tools": {"type": "function"}}, "tools must be an array of objects"),
        ("chat", {"stream": "yes"}, "stream must be true or false"),
        ("chat", {"think": "extreme"}, "invalid think value"),
        ("chat", {"logprobs": True, "top_logprobs": 50}, "top_logprobs must be between 0 and 20"),
        ("chat", {"logprobs": "yes"}, "logprobs must be true or false"),
        ("chat", {"format": 5}, "invalid format"),
        ("generate", {"prompt": "x", "images": ["aGk=", None]}, "images must be an array"),
        ("generate", {"prompt": "x", "suffix": 3}, "suffix must be a string"),
        ("generate", {"prompt": "x", "system": ["a"]}, "system must be a string"),
        ("embed", {"input": 5}, "input must be a string or an array of strings"),
        ("embed", {"input": "x", "dimensions": "2"}, "dimensions must be an integer"),
        ("embed", {"input": "x", "truncate": "no"}, "truncate must be true or false"),
    ],
)
async def test_wrong_types_are_bad_requests_not_crashes(endpoint, body, message):
    tr = routed({})  # nothing may reach the backend
    request = {"model": "qwen3:8b", "messages": CHAT, **body}
    with pytest.raises(OllamaError) as e:
        result = await getattr(tr, endpoint)("http://b", request)
        if isinstance(result, tuple) and result[0]:
            [o async for o in result[1]]
    assert e.value.status == 400 and message in e.value.message
    with pytest.raises(OllamaError) as e:
        await tr.chat("http://b", ["not", "an", "object"])  # type: ignore[arg-type]
    assert e.value.status == 400


# -- against the real llama-server ------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """llama-server (the embedded build) with SmolLM2, a small context so truncation shows, and
    embeddings on: its base URL."""
    binary, models = embedded.find_llama_server(), embedded.load_manifest()
    smol = next((m for m in models if m.name == "smollm2:135m"), None)
    if not binary or smol is None:
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    port = free_port()
    args = [
        binary,
        "-m",
        smol.path,
        "--alias",
        smol.name,
        "-c",
        "1024",
        "-np",
        "1",
        "-b",
        "256",
        "-ub",
        "256",
    ]
    args += ["--embeddings", "--pooling", "mean", "--no-ui", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process(args, f"http://127.0.0.1:{port}/health")
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def real() -> OpenAIToOllama:
    return OpenAIToOllama(Upstream())


QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.mark.llama
@pytest.mark.asyncio
async def test_real_logprobs_think_and_ids(llama, real):
    _, doc = await real.chat(
        llama,
        {
            "model": "smollm2:135m",
            "messages": QUESTION,
            "stream": False,
            "options": GREEDY,
            "logprobs": True,
            "top_logprobs": 2,
            "think": True,
        },
    )
    assert "Paris" in doc["message"]["content"] and doc["eval_count"] == len(doc["logprobs"])
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in doc["logprobs"])
    assert "".join(lp["token"] for lp in doc["logprobs"]) == doc["message"]["content"]
    _, objs = await real.chat(
        llama,
        {"model": "smollm2:135m", "messages": QUESTION, "options": GREEDY, "logprobs": True, "think": "low"},
    )
    out = [o async for o in objs]
    tokens = [lp for o in out for lp in o.get("logprobs", [])]
    assert "".join(o["message"]["content"] for o in out) == "".join(t["token"] for t in tokens)
    assert tokens and all("top_logprobs" not in t for t in tokens)  # none asked for, none sent
    _, doc = await real.generate(
        llama,
        {
            "model": "smollm2:135m",
            "prompt": "The sea is",
            "raw": True,
            "stream": False,
            "logprobs": True,
            "options": {"num_predict": 3},
        },
    )
    assert len(doc["logprobs"]) == 3 and doc["done_reason"] == "length"


@pytest.mark.llama
@pytest.mark.asyncio
async def test_real_truncation_of_chat_history_and_embed_input(llama, real):
    long_history = []
    for i in range(12):  # ~1,900 tokens: more than the 1,024-token context
        long_history += [
            {"role": "user", "content": f"Tell me fact {i}. " + "blah " * 70},
            {"role": "assistant", "content": "Fine."},
        ]
    long_history += QUESTION
    _, doc = await real.chat(
        llama, {"model": "smollm2:135m", "messages": long_history, "stream": False, "options": GREEDY}
    )
    assert doc["done"] and doc["eval_count"] > 0 and doc["prompt_eval_count"] < 1024
    streaming, objs = await real.chat(
        llama, {"model": "smollm2:135m", "messages": long_history, "options": GREEDY}
    )
    assert streaming and [o async for o in objs][-1]["done"]
    with pytest.raises(OllamaError) as e:
        await real.chat(
            llama, {"model": "smollm2:135m", "messages": long_history, "truncate": False, "stream": False}
        )
    assert e.value.status == 400 and "context size" in e.value.message
    long_text = "The quick brown fox jumps over the lazy dog. " * 80  # ~800 tokens > the 256-token batch
    doc = await real.embed(llama, {"model": "smollm2:135m", "input": [long_text, "short"], "dimensions": 64})
    assert [len(v) for v in doc["embeddings"]] == [64, 64]
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-6 for v in doc["embeddings"])
    with pytest.raises(OllamaError) as e:
        await real.embed(llama, {"model": "smollm2:135m", "input": long_text, "truncate": False})
    assert e.value.status == 400 and e.value.message == "the input length exceeds the context length"


@pytest.mark.llama
@pytest.mark.asyncio
async def test_real_suffix_on_a_model_without_fim_tokens(llama, real):
    with pytest.raises(OllamaError) as e:
        await real.generate(
            llama, {"model": "smollm2:135m", "prompt": "def add(", "suffix": "):", "stream": False}
        )
    assert e.value.status == 400 and e.value.message == '"smollm2:135m" does not support insert'


@pytest.mark.llama
@pytest.mark.asyncio
async def test_real_backend_killed_mid_stream_ends_with_upstream_error(real):
    """A llama-server of its own, killed while it streams: the iterator raises, never ends quietly."""
    binary, models = embedded.find_llama_server(), embedded.load_manifest()
    smol = next(m for m in models if m.name == "smollm2:135m")
    port = free_port()
    proc = start_process(
        [
            binary,
            "-m",
            smol.path,
            "--alias",
            smol.name,
            "-c",
            "2048",
            "--no-ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        f"http://127.0.0.1:{port}/health",
    )
    try:
        body = {
            "model": "smollm2:135m",
            "prompt": "Write a very long story.",
            "options": {"num_predict": 1500, "temperature": 1},
        }
        streaming, objs = await real.generate(f"http://127.0.0.1:{port}", body)
        got = []
        with pytest.raises(UpstreamError) as e:
            async for o in objs:
                got.append(o)
                if len(got) == 5:
                    proc.popen.send_signal(signal.SIGKILL)
        assert streaming and len(got) >= 5 and not got[-1]["done"]
        assert e.value.status == 502 and "backend" in e.value.message
    finally:
        proc.stop()
