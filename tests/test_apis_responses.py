"""OpenAI Responses <-> chat completions (jupyter_llm_af.apis.responses), checked by the real ``openai``
SDK's ``responses.create``/``responses.stream`` parsing what the converters produce, and end to end
against a real llama-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from jupyter_llm_af import embedded
from jupyter_llm_af.apis.responses import ResponsesStream, chat_to_response, responses_to_chat
from jupyter_llm_af.errors import BadRequest, UpstreamError, render_error
from jupyter_llm_af.pipeline import _converted_sse

from .conftest import free_port, start_process

ROLE = {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}


def text_chunk(text: str) -> dict:
    return {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": text}}]}


def finish_chunk(reason: str) -> dict:
    return {"choices": [{"finish_reason": reason, "index": 0, "delta": {}}]}


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return {"choices": [], "usage": usage}


TOOL_STREAM = [
    ROLE,
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Need the "}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "weather tool."}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_9",
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
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}}
        ]
    },
    {
        "choices": [
            {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}}
        ]
    },
    finish_chunk("tool_calls"),
    usage_chunk(30, 12),
]


def sdk(handler) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test-token",
        base_url="http://service.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def answering(chat_answer: dict | None = None, chunks: list | None = None, seen: list | None = None):
    """A /v1/responses endpoint made of the converters and a canned backend answer; converter
    errors rendered as the service renders them."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        try:
            chat = responses_to_chat(body)
        except BadRequest as e:
            status, headers, content = render_error("openai", e)
            return httpx.Response(status, content=content, headers=headers)
        if seen is not None:
            seen.append((request, body, chat))
        if not chat.get("stream"):
            return httpx.Response(200, json=chat_to_response(chat_answer or {}, body))
        conv = ResponsesStream(body)
        data = conv.start() + b"".join(conv.feed(c) for c in chunks or []) + conv.finish()
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    return handler


def events_of(raw: bytes) -> list[dict]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        out.append(event)
    return out


def test_request_conversion_items_tools_and_settings():
    req = {
        "model": "smollm2:135m",
        "instructions": "You are brief.",
        "input": [
            {"role": "developer", "content": "Answer in French."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,aGk=", "detail": "auto"},
                ],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "call it"}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {
                "type": "function_call",
                "call_id": "call_2",
                "name": "get_weather",
                "arguments": '{"city":"Lyon"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [{"type": "input_text", "text": "18C"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Il fait beau.", "annotations": []}],
            },
            {"role": "user", "content": "Merci"},
        ],
        "tools": [WEATHER, {"type": "web_search"}, {"type": "namespace", "name": "mcp", "tools": []}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "max_output_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.8,
        "reasoning": {"effort": "minimal"},
        "text": {
            "format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}
        },
        "store": True,  # ignored, as Ollama does: nothing is stored
        "stream": True,
    }
    chat = responses_to_chat(req)
    msgs = chat["messages"]
    assert msgs[0] == {"role": "system", "content": "You are brief."}
    assert msgs[1] == {"role": "system", "content": "Answer in French."}
    assert msgs[2]["content"][0] == {"type": "text", "text": "Weather here?"}
    assert msgs[2]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    assert msgs[3]["role"] == "assistant" and msgs[3]["reasoning_content"] == "call it"
    assert [c["id"] for c in msgs[3]["tool_calls"]] == ["call_1", "call_2"]  # one turn, two calls
    assert msgs[4] == {"role": "tool", "tool_call_id": "call_1", "content": "21C"}
    assert msgs[5] == {"role": "tool", "tool_call_id": "call_2", "content": "18C"}
    assert msgs[6] == {"role": "assistant", "content": "Il fait beau."}
    assert msgs[7] == {"role": "user", "content": "Merci"}
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": WEATHER["description"],
                "strict": False,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False and chat["max_tokens"] == 100
    assert (chat["temperature"], chat["top_p"]) == (0.3, 0.8)
    assert chat["reasoning_effort"] == "low" and chat["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["stream"] and chat["stream_options"] == {"include_usage": True}
    assert responses_to_chat({"model": "m", "input": "hi"})["messages"] == [{"role": "user", "content": "hi"}]
    off = responses_to_chat({"model": "m", "input": "hi", "reasoning": {"effort": "none"}})
    assert off["chat_template_kwargs"] == {"enable_thinking": False} and "reasoning_effort" not in off


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "Missing required parameter: 'model'"),
        ({"input": None}, "Missing required parameter: 'input'"),
        ({"input": 5}, "Invalid type for 'input'"),
        ({"input": [{"type": "computer_call"}]}, "'input[0].type': 'computer_call' is not supported"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "stateless"),
        ({"input": [{"role": "tool", "content": "x"}]}, "'input[0].role'"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "file inputs"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "arguments"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "'input[0].call_id'"),
        ({"tools": {"type": "function"}}, "Invalid type for 'tools'"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "'tools[0].name'"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"max_output_tokens": "5"}, "max_output_tokens: Input should be a valid integer"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"background": True}, "background"),
    ],
)
def test_wrong_requests_raise_bad_request(change, message):
    req = {"model": "m", "input": "hi", **change}
    req = {k: v for k, v in req.items() if v is not None}
    with pytest.raises(BadRequest) as e:
        responses_to_chat(req)
    assert message in e.value.message and e.value.status == 400


def test_stateless_service_refuses_previous_response_id_in_the_sdks_words():
    client = sdk(answering({}))
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="m", input="and then?", previous_response_id="resp_123")
    assert e.value.status_code == 400 and "stateless" in e.value.message
    assert e.value.param == "previous_response_id" and e.value.type == "invalid_request_error"


def test_sdk_create_text_usage_and_echoed_settings():
    answer = {
        "created": 1796114509,
        "choices": [
            {"finish_reason": "stop", "index": 0, "message": {"role": "assistant", "content": "Paris."}}
        ],
        "usage": {
            "completion_tokens": 3,
            "prompt_tokens": 32,
            "prompt_tokens_details": {"cached_tokens": 31},
        },
    }
    seen: list = []
    client = sdk(answering(answer, seen=seen))
    r = client.responses.create(
        model="smollm2:135m",
        instructions="Be brief.",
        input="Capital of France?",
        max_output_tokens=20,
        temperature=0,
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Paris." and r.model == "smollm2:135m" and r.created_at == 1796114509
    assert (
        r.output[0].type == "message"
        and r.output[0].id.startswith("msg_")
        and r.output[0].status == "completed"
    )
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (32, 3, 35)
    assert r.usage.input_tokens_details.cached_tokens == 31
    assert r.instructions == "Be brief." and r.max_output_tokens == 20 and r.temperature == 0
    assert r.store is False and r.previous_response_id is None and r.error is None
    request, _, chat = seen[0]
    assert request.url.path == "/v1/responses" and request.headers["authorization"] == "Bearer test-token"
    assert chat["messages"][-1] == {"role": "user", "content": "Capital of France?"}
    answer["choices"][0]["finish_reason"] = "length"
    cut = client.responses.create(model="m", input="Tell a story", max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output[0].status == "incomplete"


def test_sdk_create_function_call_and_its_output_round_trip():
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "Use the tool.",
                    "tool_calls": [
                        {
                            "id": "call_5",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "completion_tokens": 9,
            "prompt_tokens": 40,
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    }
    seen: list = []
    client = sdk(answering(answer, seen=seen))
    r = client.responses.create(model="m", input="Weather in Paris?", tools=[WEATHER])
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Use the tool."
    assert call.type == "function_call" and call.call_id == "call_5" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.id.startswith("fc_")
    assert r.output_text == "" and r.usage.output_tokens_details.reasoning_tokens == 4
    assert r.tools[0].name == "get_weather"
    # Codex-style next turn: the whole history, the call's output appended
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        *[o.model_dump(exclude_none=True) for o in r.output],
    ]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "21C"})
    client.responses.create(model="m", input=history, tools=[WEATHER])
    msgs = seen[1][2]["messages"]
    assert msgs[1]["tool_calls"][0]["id"] == "call_5" and msgs[1]["reasoning_content"] == "Use the tool."
    assert msgs[2] == {"role": "tool", "tool_call_id": "call_5", "content": "21C"}


def test_sdk_stream_text_events_and_final_response():
    chunks = [
        ROLE,
        text_chunk("The capital"),
        text_chunk(" is Paris."),
        finish_chunk("stop"),
        usage_chunk(37, 14, 24),
    ]
    client = sdk(answering(chunks=chunks))
    with client.responses.stream(model="smollm2:135m", input="Capital?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert (
        "".join(e.delta for e in events if e.type == "response.output_text.delta") == "The capital is Paris."
    )
    assert final.output_text == "The capital is Paris." and final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (37, 14)
    assert final.usage.input_tokens_details.cached_tokens == 24
    ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert ids == {final.output[0].id}


def test_sdk_stream_reasoning_then_function_call():
    conv = ResponsesStream({"model": "m", "input": "x", "tools": [WEATHER]})
    raw = conv.start() + b"".join(conv.feed(c) for c in TOOL_STREAM) + conv.finish()
    kinds = [e["type"] for e in events_of(raw)]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # function call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    client = sdk(answering(chunks=TOOL_STREAM))
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.name == "get_weather" and json.loads(done.arguments) == {"city": "Paris"}
    reasoning, call = final.output
    assert reasoning.content[0].text == "Need the weather tool." and reasoning.status == "completed"
    assert call.call_id == "call_9" and json.loads(call.arguments) == {"city": "Paris"}
    assert [o.output_index for o in events if o.type == "response.output_item.added"] == [0, 1]
    assert final.usage.output_tokens == 12


def test_stream_cut_by_max_output_tokens_ends_incomplete():
    conv = ResponsesStream({"model": "m", "input": "x", "max_output_tokens": 2})
    raw = conv.start() + conv.feed(text_chunk("Once")) + conv.feed(finish_chunk("length")) + conv.finish()
    events = events_of(raw)
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    assert (
        response["output"][0]["status"] == "incomplete"
        and response["output"][0]["content"][0]["text"] == "Once"
    )


def test_broken_stream_ends_with_error_and_response_failed():
    conv = ResponsesStream({"model": "m", "input": "x"})
    with pytest.raises(UpstreamError):
        conv.feed({"error": {"message": "slot crashed", "code": 500}})
    data = conv.start() + conv.feed(text_chunk("Hel")) + conv.error("the backend broke off: slot crashed")
    assert conv.finish() == b""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    with sdk(handler).responses.stream(model="m", input="x") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()  # the SDK's word for "no response.completed"
    error, failed = events[-2:]
    assert error.type == "error" and error.message == "the backend broke off: slot crashed"
    assert error.code == "server_error"
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.message == "the backend broke off: slot crashed"


# -- end to end with the real llama-server ------------------------------------------------------
@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """llama-server (the embedded build) serving SmolLM2 on a free loopback port: its base URL."""
    binary, models = embedded.find_llama_server(), embedded.load_manifest()
    smol = next((m for m in models if m.name == "smollm2:135m"), None)
    if not binary or smol is None:
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    port = free_port()
    args = [binary, "-m", smol.path, "--alias", smol.name, "-c", "4096", "-np", "2", "--no-ui"]
    proc = start_process(
        [*args, "--host", "127.0.0.1", "--port", str(port)], f"http://127.0.0.1:{port}/health"
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.mark.llama
def test_sdk_against_real_llama_server_through_the_converters(llama):
    """SDK -> responses_to_chat -> llama-server /v1/chat/completions -> chat_to_response or
    ResponsesStream -> SDK."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        chat = responses_to_chat(body)
        if not chat.get("stream"):
            r = httpx.post(f"{llama}/v1/chat/completions", json=chat, timeout=120)
            assert r.status_code == 200, r.text
            return httpx.Response(200, json=chat_to_response(r.json(), body))

        def events() -> Iterator[bytes]:
            conv = ResponsesStream(body)
            yield conv.start()
            with httpx.stream("POST", f"{llama}/v1/chat/completions", json=chat, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield conv.feed(json.loads(line[6:]))
            yield conv.finish()

        return httpx.Response(200, content=events(), headers={"content-type": "text/event-stream"})

    client = sdk(handler)
    question = "What is the capital of France? Answer in one sentence."
    r = client.responses.create(model="smollm2:135m", input=question, max_output_tokens=32, temperature=0)
    assert "Paris" in r.output_text and r.status in ("completed", "incomplete")
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 10
    with client.responses.stream(
        model="smollm2:135m", input=question, max_output_tokens=32, temperature=0
    ) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "Paris" in "".join(deltas) and final.output_text == "".join(deltas)
    assert final.usage.output_tokens > 0
    cut = client.responses.create(model="smollm2:135m", input=question, max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 3


class _SlowBackend:
    """A chat backend's SSE body that says nothing while it reads the prompt."""

    def __init__(self, chunks: list[dict], think_s: float):
        self.chunks, self.think_s = chunks, think_s

    async def iter_any(self):
        await asyncio.sleep(self.think_s)
        for c in self.chunks:
            yield b"data: " + json.dumps(c).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


@pytest.mark.asyncio
async def test_translated_stream_opens_with_the_first_token_so_ttft_counts_the_prompt():
    """``response.created`` goes out with the first delta, not before the backend has said anything:
    telemetry's time to first byte then includes the prompt's reading (it showed 0.05 s for a
    coding agent's 90 s prompt)."""
    body = {"model": "m", "input": "hi", "stream": True}
    t0 = time.monotonic()
    chunks = _converted_sse(
        _SlowBackend([text_chunk("Hel"), text_chunk("lo"), finish_chunk("stop")], 0.3), ResponsesStream(body)
    )  # type: ignore[arg-type]
    first = await chunks.__anext__()
    assert time.monotonic() - t0 >= 0.3
    first_events = [e["type"] for e in events_of(first)]
    assert first_events[0] == "response.created" and "response.output_text.delta" in first_events
    rest = b"".join([c async for c in chunks])
    assert events_of(rest)[-1]["type"] == "response.completed"
