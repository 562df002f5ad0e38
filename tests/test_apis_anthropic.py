"""Anthropic Messages <-> chat completions (jupyter_llm_af.apis.anthropic), checked by the real
``anthropic`` SDK parsing what the converters produce, and end to end against a real llama-server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import httpx2
import pytest

from jupyter_llm_af import embedded
from jupyter_llm_af.apis.anthropic import (
    MessagesStream,
    chat_to_message,
    estimate_input_tokens,
    messages_to_chat,
)
from jupyter_llm_af.errors import BadRequest, UpstreamError, render_error

from .conftest import free_port, start_process

# what llama-server sends (recorded from the embedded build, ids shortened)
ROLE = {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}]}


def text_chunk(text: str) -> dict:
    return {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": text}}]}


def finish_chunk(reason: str) -> dict:
    return {"choices": [{"finish_reason": reason, "index": 0, "delta": {}}]}


USAGE = {
    "choices": [],
    "usage": {"completion_tokens": 14, "prompt_tokens": 37, "prompt_tokens_details": {"cached_tokens": 24}},
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_STREAM = [
    ROLE,
    {"choices": [{"index": 0, "delta": {"reasoning_content": "The user wants "}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "the weather."}}]},
    text_chunk("Let me check."),
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_abc",
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
    finish_chunk("tool_calls"),
    {"choices": [], "usage": {"completion_tokens": 20, "prompt_tokens": 50}},
]


def sdk(handler) -> anthropic.Anthropic:
    """The real SDK, its HTTP answered by ``handler`` (request -> httpx2.Response)."""
    return anthropic.Anthropic(
        api_key="test-token",
        base_url="http://service.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def answering(chat_answer: dict | None = None, chunks: list | None = None, seen: list | None = None):
    """A /v1/messages endpoint made of the converters and a canned backend answer."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        chat = messages_to_chat(body)
        if seen is not None:
            seen.append((request, body, chat))
        if not chat.get("stream"):
            return httpx2.Response(200, json=chat_to_message(chat_answer or {}, body["model"]))
        conv = MessagesStream(body["model"], estimate_input_tokens(body))
        data = conv.start() + b"".join(conv.feed(c) for c in chunks or []) + conv.finish()
        return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})

    return handler


def test_request_conversion_covers_blocks_tools_and_sampling():
    req = {
        "model": "smollm2:135m",
        "max_tokens": 256,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=a5145;"},
            {"type": "text", "text": "You are brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": "aGk="},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "use the tool", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "21C"}],
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": True},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "metadata": {"user_id": "u1"},
        "stream": True,
    }
    chat = messages_to_chat(req)
    assert chat["messages"][0] == {"role": "system", "content": "You are brief."}  # billing header dropped
    user = chat["messages"][1]
    assert user["content"][0] == {"type": "text", "text": "Weather?"}
    assert user["content"][1]["image_url"]["url"] == "data:image/jpeg;base64,aGk="
    assistant = chat["messages"][2]
    assert assistant["content"] == "Checking." and assistant["reasoning_content"] == "use the tool"
    assert assistant["tool_calls"][0]["id"] == "toolu_1"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # tool answers come right after the calling turn, before the user's new text
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"}
    assert chat["messages"][4] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"}
    assert chat["messages"][5] == {"role": "user", "content": "And tomorrow?"}
    assert chat["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert (chat["max_tokens"], chat["temperature"], chat["top_p"], chat["top_k"]) == (256, 0.2, 0.9, 40)
    assert chat["stop"] == ["END"] and chat["stream"] and chat["stream_options"] == {"include_usage": True}
    assert (
        chat["chat_template_kwargs"] == {"enable_thinking": True} and chat["thinking_budget_tokens"] == 2048
    )
    assert "metadata" not in chat
    choices = {"auto": "auto", "any": "required", "none": "none"}
    for kind, expected in choices.items():
        assert messages_to_chat({**req, "tool_choice": {"type": kind}})["tool_choice"] == expected
    off = messages_to_chat({**req, "thinking": {"type": "disabled"}})
    assert off["chat_template_kwargs"] == {"enable_thinking": False} and "thinking_budget_tokens" not in off


def test_system_role_messages_as_claude_code_sends_them():
    req = {
        "model": "m",
        "max_tokens": 10,
        "system": "Top.",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Agents: a, b."}]},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "Now be terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "why?"},
                    {"type": "image", "source": {"type": "url", "url": "http://i"}},
                ],
            },
            {"role": "system", "content": "Last word."},
        ],
    }
    messages = messages_to_chat(req)["messages"]
    assert messages[0] == {"role": "system", "content": "Top.\nAgents: a, b."}
    assert messages[1:3] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    # later system text travels with the user turn (chat templates want system text first)
    assert messages[3]["role"] == "user" and len(messages) == 4
    parts = messages[3]["content"]
    assert parts[0] == {"type": "text", "text": "<system-reminder>\nNow be terse.\n</system-reminder>"}
    assert parts[1] == {"type": "text", "text": "why?"} and parts[2]["type"] == "image_url"
    assert parts[3] == {"type": "text", "text": "<system-reminder>\nLast word.\n</system-reminder>"}
    short = messages_to_chat(
        {**req, "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "S"}]}
    )
    assert short["messages"][1] == {
        "role": "user",
        "content": "hi\n\n<system-reminder>\nS\n</system-reminder>",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"max_tokens": "10"}, "max_tokens: Input should be a valid integer"),
        ({"model": None}, "model: Field required"),
        ({"messages": {"role": "user"}}, "messages: Input should be a valid list"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role: Input should be 'user'"),
        ({"messages": [{"role": "system", "content": [{"type": "image"}]}]}, "messages.0.content.0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type: Input tag",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages.0.content.0.type: Field required",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content: Input should be"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "content.0.text"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": []}],
                    }
                ]
            },
            "messages.0.content.0.input: Input should be an object",
        ),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema: Field required"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
        ({"tool_choice": "auto"}, "tool_choice: Input should be an object"),
        ({"thinking": {"type": "enabled"}}, "thinking.enabled.budget_tokens: Field required"),
        ({"stop_sequences": "END"}, "stop_sequences: Input should be a valid list of strings"),
        ({"temperature": "hot"}, "temperature: Input should be a valid number"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
    ],
)
def test_wrong_requests_raise_bad_request_naming_the_field(change, message):
    req = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], **change}
    req = {k: v for k, v in req.items() if v is not None}
    with pytest.raises(BadRequest) as e:
        messages_to_chat(req)
    assert message in e.value.message and e.value.status == 400


def test_sdk_raises_bad_request_error_with_the_converters_message():
    def handler(request: httpx2.Request) -> httpx2.Response:
        try:
            messages_to_chat(json.loads(request.content))
        except BadRequest as e:
            status, headers, body = render_error("anthropic", e)
            return httpx2.Response(status, content=body, headers=headers)
        return httpx2.Response(500)

    client = sdk(handler)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": [{"type": "video", "x": 1}]}]
        )
    assert e.value.status_code == 400 and "messages.0.content.0.type" in str(e.value)
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_sdk_create_parses_the_converted_message():
    seen: list = []
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "smollm2:135m",
        "choices": [
            {"finish_reason": "stop", "index": 0, "message": {"role": "assistant", "content": "Paris."}}
        ],
        "usage": {
            "completion_tokens": 8,
            "prompt_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 30},
        },
    }
    client = sdk(answering(answer, seen=seen))
    msg = client.messages.create(
        model="smollm2:135m",
        max_tokens=64,
        system="You are brief.",
        messages=[{"role": "user", "content": "Capital of France?"}],
        extra_body={"temperature": 0},  # current SDKs dropped sampling arguments; older clients send them
    )
    assert isinstance(msg, anthropic.types.Message)
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.model == "smollm2:135m"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Paris."
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (12, 30, 8)
    request, _, chat = seen[0]
    assert (
        request.url.path == "/v1/messages" and request.headers["authorization"] == "Bearer test-token"
    )  # SDK 2.x: not x-api-key
    assert chat["messages"] == [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    for finish, stop in (("length", "max_tokens"), ("content_filter", "refusal")):
        answer["choices"][0]["finish_reason"] = finish
        assert client.messages.create(model="m", max_tokens=1, messages=[]).stop_reason == stop
    # vLLM names the stop string it hit
    answer["choices"][0].update(finish_reason="stop", stop_reason="END")
    msg = client.messages.create(model="m", max_tokens=5, stop_sequences=["END"], messages=[])
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "END")


def test_sdk_create_tool_use_round_trip():
    answer = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "I should call the tool.",
                    "tool_calls": [
                        {
                            "id": "call_7",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"completion_tokens": 9, "prompt_tokens": 12},
    }
    seen: list = []
    client = sdk(answering(answer, seen=seen))
    question = {"role": "user", "content": "Weather in Paris?"}
    msg = client.messages.create(model="m", max_tokens=100, tools=[WEATHER_TOOL], messages=[question])
    assert msg.stop_reason == "tool_use"
    thinking, call = msg.content
    assert thinking.type == "thinking" and thinking.thinking == "I should call the tool."
    assert call.type == "tool_use" and call.id == "call_7" and call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    # the SDK sends the assistant turn and the tool result back; they arrive as chat tool messages
    client.messages.create(
        model="m",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21C"}]},
        ],
    )
    chat = seen[1][2]
    assert chat["messages"][1]["tool_calls"][0]["id"] == "call_7"
    assert chat["messages"][1]["reasoning_content"] == "I should call the tool."
    assert chat["messages"][2] == {"role": "tool", "tool_call_id": "call_7", "content": "21C"}


def test_sdk_stream_text_and_final_message():
    chunks = [ROLE, text_chunk("The capital"), text_chunk(" is Paris."), finish_chunk("stop"), USAGE]
    client = sdk(answering(chunks=chunks))
    with client.messages.stream(
        model="smollm2:135m", max_tokens=32, messages=[{"role": "user", "content": "Capital?"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The capital is Paris."
    assert final.content[0].text == text and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (
        13,
        24,
        14,
    )


def test_stream_event_order_and_sdk_accumulates_thinking_and_tool_input():
    conv = MessagesStream("m", input_tokens=7)
    raw = (conv.start() + b"".join(conv.feed(c) for c in TOOL_STREAM) + conv.finish()).decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    assert events == [
        "message_start",
        "ping",
        "content_block_start",  # thinking
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # tool_use
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = json.loads(raw.split("\n\n")[0].split("data: ")[1])
    assert start["message"]["usage"]["input_tokens"] == 7 and start["message"]["stop_reason"] is None
    client = sdk(answering(chunks=TOOL_STREAM))
    with client.messages.stream(
        model="m", max_tokens=100, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "content_block_delta" in kinds and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "The user wants the weather."
    assert final.content[1].text == "Let me check."
    assert final.content[2].id == "call_abc" and final.content[2].input == {"city": "Paris"}
    assert (
        final.stop_reason == "tool_use" and final.usage.output_tokens == 20 and final.usage.input_tokens == 50
    )


def test_broken_stream_ends_with_an_error_event_the_sdk_raises():
    conv = MessagesStream("m")
    with pytest.raises(UpstreamError) as e:
        conv.feed({"error": {"code": 500, "message": "slot crashed"}})
    data = conv.start() + conv.feed(text_chunk("Hel")) + conv.error(str(e.value.message))
    assert conv.finish() == b"" and conv.error("again") == b""  # the stream is over

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=data, headers={"content-type": "text/event-stream"})

    with pytest.raises(anthropic.APIStatusError) as raised:
        with sdk(handler).messages.stream(model="m", max_tokens=5, messages=[]) as stream:
            for _ in stream.text_stream:
                pass
    assert "slot crashed" in str(raised.value)
    assert raised.value.body["error"]["type"] == "api_error"


GREEDY = {"temperature": 0}


# -- end to end with the real llama-server ------------------------------------------------------
@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    """llama-server (the embedded build) serving SmolLM2 on a free loopback port: its base URL."""
    binary, models = embedded.find_llama_server(), embedded.load_manifest()
    smol = next((m for m in models if m.name == "smollm2:135m"), None)
    if not binary or smol is None:
        pytest.fail("embedded backend not set up: run `jupyter-llm-af setup-local` (CI does)")
    port = free_port()
    args = [binary, "-m", smol.path, "--alias", smol.name, "-c", "4096", "-np", "2"]
    proc = start_process(
        [*args, "--host", "127.0.0.1", "--port", str(port), "--no-ui"], f"http://127.0.0.1:{port}/health"
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.mark.llama
def test_sdk_against_real_llama_server_through_the_converters(llama):
    """SDK -> messages_to_chat -> llama-server /v1/chat/completions -> chat_to_message or
    MessagesStream -> SDK."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        chat = messages_to_chat(body)
        if not chat.get("stream"):
            r = httpx.post(f"{llama}/v1/chat/completions", json=chat, timeout=120)
            assert r.status_code == 200, r.text
            return httpx2.Response(200, json=chat_to_message(r.json(), body["model"]))

        def events() -> Iterator[bytes]:
            conv = MessagesStream(body["model"], estimate_input_tokens(body))
            yield conv.start()
            with httpx.stream("POST", f"{llama}/v1/chat/completions", json=chat, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        yield conv.feed(json.loads(line[6:]))
            yield conv.finish()

        return httpx2.Response(200, content=events(), headers={"content-type": "text/event-stream"})

    client = sdk(handler)
    question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    msg = client.messages.create(model="smollm2:135m", max_tokens=32, messages=question, extra_body=GREEDY)
    assert "Paris" in msg.content[0].text and msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens + msg.usage.cache_read_input_tokens > 10
    with client.messages.stream(
        model="smollm2:135m", max_tokens=32, messages=question, extra_body=GREEDY
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Paris" in text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")
    short = client.messages.create(model="smollm2:135m", max_tokens=3, messages=question)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
