"""Anthropic Messages API (``POST /v1/messages``) on top of OpenAI chat completions. Pure, no I/O.

* :func:`messages_to_chat`  an Anthropic request -> a ``/v1/chat/completions`` request
* :func:`chat_to_message`   a ``chat.completion`` -> an Anthropic ``message``
* :class:`MessagesStream`   ``chat.completion.chunk`` dicts -> Anthropic SSE bytes
  (``message_start``, ``ping``, ``content_block_start/delta/stop``, ``message_delta``, ``message_stop``;
  ``error`` for a stream the backend broke off)
* :func:`estimate_input_tokens`  Ollama's characters/4 estimate, for ``message_start`` before the
  backend has counted the prompt

Follows the wire format that the ``anthropic`` SDK and Claude Code parse (and Ollama's
``anthropic/anthropic.go``): thinking blocks first, then text, then ``tool_use``; ``stop_reason``
``end_turn | max_tokens | stop_sequence | tool_use | refusal``; usage as Anthropic counts it
(``input_tokens`` excludes the prompt tokens the backend served from its cache, which are
``cache_read_input_tokens``).

``/v1/messages/count_tokens``: llama.cpp and vLLM serve it themselves (pass it through). Ollama has
no such route and answers 404; Claude Code then falls back to its own estimate, so a translating
service should do the same (a 404 ``not_found_error`` in Anthropic's format) rather than invent a
count.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypedDict

from ..errors import BadRequest, error_body
from ..errors import ServiceError as _ServiceError
from . import (
    ChatContentPart,
    ChatMessage,
    ChatRequest,
    ChatTool,
    ChatToolCall,
    first_choice,
    new_id,
    optional_bool,
    optional_int,
    optional_number,
    raise_chunk_error,
    reasoning_text,
    sse,
    tool_input,
    usage_counts,
)

# -- wire structs ------------------------------------------------------------------------------
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class TextBlock(TypedDict):
    type: Literal["text"]
    text: str


class ThinkingBlock(TypedDict):
    type: Literal["thinking"]
    thinking: str
    signature: str  # required by the SDK's type; empty: the backend's reasoning is not signed


class ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock


class Usage(TypedDict):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


class Message(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


# Block types a client may send in ``messages[].content``.
_USER_BLOCKS = ("text", "image", "document", "tool_result")
_ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
# Claude Code's first system block changes on every request ("cch=…") and would defeat the
# backend's prompt cache for the ~20k-token prompt after it; it is metadata, not an instruction.
_BILLING_HEADER = "x-anthropic-billing-header:"


# -- request -------------------------------------------------------------------------------------
def messages_to_chat(req: Any) -> ChatRequest:
    """An Anthropic Messages request as an OpenAI chat-completions request (``model`` unchanged:
    the caller resolves names). Raises :class:`BadRequest` naming the field, in Anthropic's words."""
    if not isinstance(req, dict):
        raise BadRequest("The request body must be a JSON object")
    model = req.get("model")
    if model is None:
        raise BadRequest("model: Field required")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Input should be a non-empty string")
    if req.get("max_tokens") is None:
        raise BadRequest("max_tokens: Field required")
    out = _conversation(req)
    out["model"] = model
    out["max_tokens"] = optional_int(req, "max_tokens", minimum=1) or 1
    _sampling(req, out)
    if optional_bool(req, "stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def estimate_input_tokens(req: Any) -> int:
    """Characters/4 over system, messages and tools (Ollama's ``EstimateInputTokens``): a figure for
    ``message_start`` while the backend has not counted yet; the final ``message_delta`` corrects it."""
    if not isinstance(req, dict):
        return 0
    size = len(json.dumps(req.get("system") or "")) + len(json.dumps(req.get("messages") or []))
    size += len(json.dumps(req.get("tools") or []))
    return max(1, size // 4) if req.get("messages") else 0


def _conversation(req: dict[str, Any]) -> ChatRequest:
    system = [_system_text(req.get("system"), "system")]
    raw = req.get("messages")
    if raw is None:
        raise BadRequest("messages: Field required")
    if not isinstance(raw, list):
        raise BadRequest("messages: Input should be a valid list")
    messages: list[ChatMessage] = []
    reminders: list[str] = []
    for i, msg in enumerate(raw):
        where = f"messages.{i}"
        if isinstance(msg, dict) and msg.get("role") == "system":
            # Messages in the system role (Claude Code sends them): before the conversation they
            # join the system prompt; later ones go with the next user turn, as Claude Code itself
            # words them for APIs without the role, since chat templates want system text first.
            text = _system_text(msg.get("content"), f"{where}.content")
            (reminders if messages else system).append(text)
            continue
        converted = _message(msg, where)
        if reminders and msg.get("role") == "user":
            converted = _with_reminders(converted, reminders)
            reminders = []
        messages.extend(converted)
    if reminders:
        messages = _with_reminders(messages, reminders, after=True)
    prompt = "\n".join(t for t in system if t)
    if prompt:
        messages.insert(0, {"role": "system", "content": prompt})
    out: ChatRequest = {"messages": messages}
    tools = _tools(req.get("tools"))
    if tools:
        out["tools"] = tools
    if req.get("tool_choice") is not None:
        _tool_choice(req["tool_choice"], out)
    return out


def _with_reminders(
    messages: list[ChatMessage], reminders: list[str], after: bool = False
) -> list[ChatMessage]:
    """``messages`` with system text put into the last user message (before its text, or after it
    for system text that ends the conversation)."""
    text = "\n\n".join(f"<system-reminder>\n{r}\n</system-reminder>" for r in reminders if r)
    last = messages[-1] if messages else None
    if last is None or last["role"] != "user":
        return [*messages, {"role": "user", "content": text}]
    content = last.get("content")
    if isinstance(content, list):
        part: ChatContentPart = {"type": "text", "text": text}
        parts = [*content, part] if after else [part, *content]
        return [*messages[:-1], {"role": "user", "content": parts}]
    joined = f"{content or ''}\n\n{text}" if after else f"{text}\n\n{content or ''}"
    return [*messages[:-1], {"role": "user", "content": joined}]


def _system_text(system: Any, where: str) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise BadRequest(f"{where}: Input should be a valid string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(f"{where}.{i}: only text blocks are allowed here")
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.{i}.text: Input should be a valid string")
        if not text.startswith(_BILLING_HEADER):
            texts.append(text)
    return "\n".join(texts)


def _message(msg: Any, where: str) -> list[ChatMessage]:
    if not isinstance(msg, dict):
        raise BadRequest(f"{where}: Input should be an object with role and content")
    role = msg.get("role")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{where}.role: Input should be 'user', 'assistant' or 'system'")
    content = msg.get("content")
    if content is None:
        raise BadRequest(f"{where}.content: Field required")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: Input should be a valid string or a list of content blocks")
    if role == "user":
        return _user_message(content, where)
    return [_assistant_message(content, where)]


def _block_type(block: Any, where: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(block, dict):
        raise BadRequest(f"{where}: Input should be a content block object")
    kind = block.get("type")
    if kind is None:
        raise BadRequest(f"{where}.type: Field required")
    if kind not in allowed:
        raise BadRequest(
            f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the expected "
            f"tags: {', '.join(repr(a) for a in allowed)}"
        )
    return str(kind)


def _text(block: dict[str, Any], where: str, key: str = "text") -> str:
    text = block.get(key)
    if not isinstance(text, str):
        raise BadRequest(f"{where}.{key}: Input should be a valid string")
    return text


def _image_part(block: dict[str, Any], where: str) -> ChatContentPart:
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{where}.source: Field required")
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type") or "image/png"
        data = source.get("data")
        if not isinstance(data, str) or not isinstance(media, str):
            raise BadRequest(f"{where}.source.data: Input should be a valid base64 string")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": _text(source, f"{where}.source", "url")}}
    raise BadRequest(
        f"{where}.source.type: image sources of type {kind!r} are not supported (use base64 or url)"
    )


def _document_text(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        return _text(source, f"{where}.source", "data")
    if (
        isinstance(source, dict)
        and source.get("type") == "content"
        and isinstance(source.get("content"), list)
    ):
        return "\n".join(
            _text(b, f"{where}.source.content") for b in source["content"] if isinstance(b, dict)
        )
    raise BadRequest(f"{where}.source: only plain-text documents are supported here (no PDF or file sources)")


def _user_message(content: list[Any], where: str) -> list[ChatMessage]:
    tool_messages: list[ChatMessage] = []
    parts: list[ChatContentPart] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = _block_type(block, at, _USER_BLOCKS)
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document":
            parts.append({"type": "text", "text": _document_text(block, at)})
        else:
            tool_messages.append(_tool_result(block, at))
    # the tool answers must follow the assistant turn that called the tools, before any new text
    out = list(tool_messages)
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: dict[str, Any], where: str) -> ChatMessage:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise BadRequest(f"{where}.tool_use_id: Field required")
    content = block.get("content")
    texts: list[str] = []
    images: list[ChatContentPart] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(content):
            at = f"{where}.content.{k}"
            if not isinstance(part, dict):
                raise BadRequest(f"{at}: Input should be a content block object")
            kind = part.get("type")
            if kind == "image":
                images.append(_image_part(part, at))
            elif kind == "document":
                texts.append(_document_text(part, at))
            elif kind == "text":
                texts.append(_text(part, at))
            elif kind == "search_result":
                texts += [str(c.get("text") or "") for c in part.get("content") or [] if isinstance(c, dict)]
            # other kinds (e.g. Claude Code's tool_reference) mean nothing to another model: left out
    elif content is not None:
        raise BadRequest(f"{where}.content: Input should be a valid string or a list of content blocks")
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}"  # chat completions has no error flag; tell the model in words
    msg: ChatMessage = {"role": "tool", "tool_call_id": tool_use_id, "content": text}
    if images:  # llama.cpp accepts image parts in tool messages (multimodal models)
        msg["content"] = [{"type": "text", "text": text}, *images] if text else images
    return msg


def _assistant_message(content: list[Any], where: str) -> ChatMessage:
    texts: list[str] = []
    calls: list[ChatToolCall] = []
    reasoning: list[str] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = _block_type(block, at, _ASSISTANT_BLOCKS)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "thinking":
            reasoning.append(_text(block, at, "thinking"))
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{at}.id: Field required")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}.name: Field required")
            if not isinstance(args, dict):
                raise BadRequest(f"{at}.input: Input should be an object")
            calls.append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            )
        # redacted_thinking: encrypted by Anthropic, meaningless to another model
    msg: ChatMessage = {"role": "assistant", "content": "".join(texts)}
    if calls:
        msg["tool_calls"] = calls
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    return msg


def _tools(tools: Any) -> list[ChatTool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("tools: Input should be a valid list")
    out: list[ChatTool] = []
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where}: Input should be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(
                f"{where}.type: tool type {kind!r} runs on Anthropic's servers and is not available here; "
                "only custom tools (name, description, input_schema) are supported"
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.name: Field required")
        schema = tool.get("input_schema")
        if schema is None:
            raise BadRequest(f"{where}.input_schema: Field required")
        if not isinstance(schema, dict):
            raise BadRequest(f"{where}.input_schema: Input should be an object")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise BadRequest(f"{where}.description: Input should be a valid string")
            function["description"] = description
        out.append({"type": "function", "function": function})  # type: ignore[typeddict-item]
    return out


def _tool_choice(choice: Any, out: ChatRequest) -> None:
    if not isinstance(choice, dict):
        raise BadRequest("tool_choice: Input should be an object with a type")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice.name: Field required")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise BadRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _sampling(req: dict[str, Any], out: ChatRequest) -> None:
    for key in ("temperature", "top_p"):
        value = optional_number(req, key)
        if value is not None:
            out[key] = float(value)
    top_k = optional_int(req, "top_k", minimum=0)
    if top_k is not None:
        out["top_k"] = top_k
    stops = req.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: Input should be a valid list of strings")
        if stops:
            out["stop"] = stops
    thinking = req.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise BadRequest("thinking: Input should be an object")
        kind = thinking.get("type")
        if kind == "enabled":
            budget = optional_int(thinking, "budget_tokens", "thinking.enabled.", minimum=1)
            if budget is None:
                raise BadRequest("thinking.enabled.budget_tokens: Field required")
            out["chat_template_kwargs"] = {"enable_thinking": True}
            out["thinking_budget_tokens"] = budget
        elif kind in ("adaptive", "between_tools"):
            out["chat_template_kwargs"] = {"enable_thinking": True}
        elif kind == "disabled":
            out["chat_template_kwargs"] = {"enable_thinking": False}
        else:
            raise BadRequest(
                "thinking.type: Input should be 'enabled', 'adaptive', 'between_tools' or 'disabled'"
            )
    config = req.get("output_config")
    if isinstance(config, dict):
        effort = config.get("effort")
        if effort is not None:
            if effort not in _EFFORTS:
                raise BadRequest(
                    "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
                )
            out["reasoning_effort"] = _EFFORTS[effort]
        fmt = config.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                raise BadRequest("output_config.format.schema: Input should be an object")
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema},
            }


# -- answer --------------------------------------------------------------------------------------
def _stop_reason(
    finish_reason: Any, has_tool_calls: bool, matched_stop: Any
) -> tuple[StopReason, str | None]:
    if has_tool_calls:
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched_stop, str) and matched_stop:  # vLLM names the stop string it hit
        return "stop_sequence", matched_stop
    return "end_turn", None


def _usage(usage: Any, input_estimate: int = 0) -> Usage:
    prompt, completion, cached = usage_counts(usage)
    if not prompt and not completion:
        prompt = input_estimate
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def chat_to_message(resp: dict[str, Any], model: str, message_id: str | None = None) -> Message:
    """A non-streamed ``chat.completion`` as an Anthropic ``message`` (``model``: the name the client
    asked for)."""
    choice = first_choice(resp)
    message = choice.get("message") or {}
    content: list[ContentBlock] = []
    thinking = reasoning_text(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    for call in calls:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or new_id("toolu")),
                "name": str(fn.get("name") or ""),
                "input": tool_input(fn.get("arguments")),
            }
        )
    stop_reason, stop_sequence = _stop_reason(
        choice.get("finish_reason"), bool(calls), choice.get("stop_reason")
    )
    return {
        "id": message_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(resp.get("usage")),
    }


class MessagesStream:
    """Turns the backend's ``chat.completion.chunk`` dicts into Anthropic's SSE events, in order:
    ``start()`` once, ``feed(chunk)`` per chunk (``[DONE]`` is the caller's to skip), then ``finish()``
    — or ``error(message)`` when the backend broke off. Each returns bytes to write (maybe empty).

    ``feed`` raises :class:`UpstreamError` for a chunk that carries the backend's error; the caller
    then writes ``error(str(e))``. ``input_tokens`` is what ``message_start`` reports before the
    backend's count arrives (e.g. :func:`estimate_input_tokens`); ``message_delta`` has the real one.
    """

    def __init__(self, model: str, input_tokens: int = 0, message_id: str | None = None):
        self.model = model
        self.id = message_id or new_id("msg")
        self.input_estimate = input_tokens
        self._index = -1  # index of the open content block
        self._open: str | None = None  # "text" | "thinking" | "tool:<n>"
        self._tools: dict[int, dict[str, Any]] = {}  # backend tool index -> {"block", "id", "name", "args"}
        self._usage: Any = None
        self._finish_reason: Any = None
        self._matched_stop: Any = None
        self._done = False

    def start(self) -> bytes:
        message: Message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(None, self.input_estimate),
        }
        return sse("message_start", {"type": "message_start", "message": message}) + self.ping()

    @staticmethod
    def ping() -> bytes:
        """A keep-alive event (clients ignore it); the real API sends one after ``message_start``."""
        return sse("ping", {"type": "ping"})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self._done or not isinstance(chunk, dict):
            return b""
        raise_chunk_error(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = b""
        choice = first_choice(chunk)
        delta = choice.get("delta") or {}
        thinking = reasoning_text(delta)
        if thinking:
            out += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta({"type": "thinking_delta", "thinking": thinking})
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._block("text", {"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": text})
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool_delta(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
            self._matched_stop = choice.get("stop_reason")
        return out

    def _block(self, kind: str, start: dict[str, Any]) -> bytes:
        if self._open == kind:
            return b""
        out = self._close()
        self._index += 1
        self._open = kind
        return out + sse(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": start},
        )

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        idx = self._index if index is None else index
        return sse("content_block_delta", {"type": "content_block_delta", "index": idx, "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        n = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        fn = call.get("function") or {}
        state = self._tools.setdefault(n, {"block": None, "id": "", "name": "", "args": ""})
        state["id"] = state["id"] or call.get("id") or ""
        args = fn.get("arguments") or ""
        if state["block"] is None:
            state["name"] += fn.get("name") or ""
            state["args"] += args
            if not state["name"]:
                return b""  # wait for the name: a tool_use block starts with it
            out = self._block(
                f"tool:{n}",
                {
                    "type": "tool_use",
                    "id": state["id"] or new_id("toolu"),
                    "name": state["name"],
                    "input": {},
                },
            )
            state["block"] = self._index
            if state["args"]:
                out += self._delta({"type": "input_json_delta", "partial_json": state["args"]})
            return out
        if not args:
            return b""
        # backends stream one call after the other; a late piece still goes to its own block
        return self._delta({"type": "input_json_delta", "partial_json": args}, state["block"])

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        out = self._close()
        started_tools = any(t["block"] is not None for t in self._tools.values())
        stop_reason, stop_sequence = _stop_reason(self._finish_reason, started_tools, self._matched_stop)
        usage = _usage(self._usage, self.input_estimate)
        out += sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": usage,
            },
        )
        return out + sse("message_stop", {"type": "message_stop"})

    def error(self, message: str, status: int = 502) -> bytes:
        """The last event of a stream the backend broke off (``event: error``; the SDK raises it)."""
        if self._done:
            return b""
        self._done = True
        return sse("error", error_body("anthropic", _ServiceError(message, status)))


__all__ = [
    "ContentBlock",
    "Message",
    "MessagesStream",
    "StopReason",
    "TextBlock",
    "ThinkingBlock",
    "ToolUseBlock",
    "Usage",
    "chat_to_message",
    "estimate_input_tokens",
    "messages_to_chat",
]
