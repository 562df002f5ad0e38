"""OpenAI Responses API (``POST /v1/responses``), stateless as Ollama's, on top of chat completions.
Pure, no I/O.

* :func:`responses_to_chat`  a Responses request -> a ``/v1/chat/completions`` request
* :func:`chat_to_response`   a ``chat.completion`` -> a ``response`` object
* :class:`ResponsesStream`   ``chat.completion.chunk`` dicts -> Responses SSE bytes, each event with
  its ``sequence_number``: ``response.created``, ``response.in_progress``, then per output item
  ``response.output_item.added`` … ``response.output_item.done`` (text: ``content_part.added``,
  ``output_text.delta``/``.done``, ``content_part.done``; calls: ``function_call_arguments.delta``/
  ``.done``; reasoning: ``reasoning_text.delta``/``.done``), and last ``response.completed`` (or
  ``response.incomplete`` when ``max_output_tokens`` cut it short); ``error`` + ``response.failed``
  for a stream the backend broke off.

Stateless: nothing is stored, so ``previous_response_id``, ``conversation`` and ``item_reference``
inputs are refused with a 400 that says so (the client must send the whole conversation, as Codex
does); ``store`` is ignored and answered ``false`` (Ollama ignores it too). ``output_text`` is not
sent: the SDKs compute it from ``output``. Tools other than ``function`` (Codex's ``namespace``,
``web_search``, …) are left out, as llama.cpp does, since no backend can run them.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, TypedDict

from ..errors import BadRequest
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
    optional_str,
    raise_chunk_error,
    reasoning_text,
    reasoning_tokens,
    sse,
    usage_counts,
)

# -- wire structs ------------------------------------------------------------------------------
Status = Literal["completed", "incomplete", "in_progress", "failed"]


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class ReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


class MessageItem(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: Status
    content: list[OutputText]


class FunctionCallItem(TypedDict):
    id: str
    type: Literal["function_call"]
    status: Status
    call_id: str
    name: str
    arguments: str


class ReasoningItem(TypedDict):
    id: str
    type: Literal["reasoning"]
    status: Status
    summary: list[Any]
    content: list[ReasoningText]


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class Response(TypedDict, total=False):
    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Status
    error: dict[str, Any] | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: None
    reasoning: dict[str, Any]
    store: bool
    background: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: Any
    tools: list[Any]
    top_p: float
    truncation: str
    usage: ResponseUsage | None
    metadata: dict[str, Any]
    service_tier: str
    user: str | None


_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"}
_STATELESS = (
    "this service is stateless (responses are not stored): send the whole conversation in `input` "
    "instead of {what}"
)


# -- request -------------------------------------------------------------------------------------
def responses_to_chat(req: Any) -> ChatRequest:
    """A Responses request as an OpenAI chat-completions request (``model`` unchanged)."""
    if not isinstance(req, dict):
        raise BadRequest("The request body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("Missing required parameter: 'model'.", param="model")
    if req.get("previous_response_id") is not None:
        raise BadRequest(_STATELESS.format(what="`previous_response_id`"), param="previous_response_id")
    if req.get("conversation") is not None:
        raise BadRequest(_STATELESS.format(what="`conversation`"), param="conversation")
    if req.get("background"):
        raise BadRequest(
            "background responses are not supported: this service is stateless", param="background"
        )
    messages: list[ChatMessage] = []
    instructions = optional_str(req, "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages += _input_messages(req.get("input"))
    out: ChatRequest = {"model": model, "messages": messages}
    max_tokens = optional_int(req, "max_output_tokens", minimum=1)
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        value = optional_number(req, key)
        if value is not None:
            out[key] = float(value)
    tools = _tools(req.get("tools"))
    if tools:
        out["tools"] = tools
    if req.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(req["tool_choice"])
    parallel = optional_bool(req, "parallel_tool_calls")
    if parallel is not None:
        out["parallel_tool_calls"] = parallel
    _reasoning(req.get("reasoning"), out)
    _text_format(req.get("text"), out)
    if optional_bool(req, "stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _input_messages(value: Any) -> list[ChatMessage]:
    if value is None:
        raise BadRequest("Missing required parameter: 'input'.", param="input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequest(
            "Invalid type for 'input': expected a string or an array of input items.", param="input"
        )
    messages: list[ChatMessage] = []
    pending_reasoning = ""
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid type for '{where}': expected an object.", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            msg = _input_message(item, where)
            if msg["role"] == "assistant" and pending_reasoning:
                msg["reasoning_content"], pending_reasoning = pending_reasoning, ""
            messages.append(msg)
        elif kind in ("function_call", "custom_tool_call", "local_shell_call"):
            call = _call(item, kind, where)
            last = messages[-1] if messages else None
            # consecutive calls (and the text just before them) are one assistant turn in chat
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                last = {"role": "assistant", "content": "", "tool_calls": [call]}
                messages.append(last)
            if pending_reasoning:
                last["reasoning_content"], pending_reasoning = pending_reasoning, ""
        elif kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            call_id = item.get("call_id") or item.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"Missing required parameter: '{where}.call_id'.", param=f"{where}.call_id")
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": _output_text(item.get("output"), where)}
            )
        elif kind == "reasoning":
            pending_reasoning += _reasoning_input(item)
        elif kind == "item_reference":
            raise BadRequest(_STATELESS.format(what="`item_reference` items"), param=where)
        elif kind == "web_search_call":
            continue  # history of a hosted tool: the assistant message after it carries the result
        else:
            raise BadRequest(
                f"Invalid value for '{where}.type': {kind!r} is not supported here.", param=f"{where}.type"
            )
    return messages


def _input_message(item: dict[str, Any], where: str) -> ChatMessage:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise BadRequest(
            f"Invalid value for '{where}.role': expected 'user', 'system', 'developer' or 'assistant'.",
            param=f"{where}.role",
        )
    chat_role: Literal["system", "user", "assistant"] = (
        "system" if role in ("system", "developer") else role  # chat templates know "system"
    )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise BadRequest(
            f"Invalid type for '{where}.content': expected a string or an array.", param=f"{where}.content"
        )
    parts: list[ChatContentPart] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise BadRequest(f"Invalid type for '{at}': expected an object.", param=at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"Invalid type for '{at}.text': expected a string.", param=f"{at}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise BadRequest(
                    f"'{at}': only images given by image_url (a URL or a data: URL) are supported, "
                    "not file_id.",
                    param=at,
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "input_file":
            raise BadRequest(f"'{at}': file inputs are not supported by this service.", param=at)
        else:
            raise BadRequest(
                f"Invalid value for '{at}.type': {kind!r} is not a supported content type.", param=at
            )
    if all(p["type"] == "text" for p in parts):
        return {"role": chat_role, "content": "".join(p["text"] for p in parts)}
    return {"role": chat_role, "content": parts}


def _call(item: dict[str, Any], kind: str, where: str) -> ChatToolCall:
    call_id = item.get("call_id") or item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"Missing required parameter: '{where}.call_id'.", param=f"{where}.call_id")
    if kind == "local_shell_call":
        name, arguments = "local_shell", json.dumps(item.get("action") or {})
    else:
        name = item.get("name") or ""
        if not isinstance(name, str) or not name:
            raise BadRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")
        if kind == "custom_tool_call":
            arguments = json.dumps({"input": item.get("input", "")})
        else:
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                raise BadRequest(
                    f"Invalid type for '{where}.arguments': expected a JSON string.", param=where
                )
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}


def _output_text(output: Any, where: str) -> str:
    if output is None or isinstance(output, str):
        return output or ""
    if isinstance(output, list):  # content items; only their text reaches a chat backend
        return "".join(str(p.get("text") or "") for p in output if isinstance(p, dict))
    if isinstance(output, dict):
        return json.dumps(output)
    raise BadRequest(f"Invalid type for '{where}.output': expected a string.", param=f"{where}.output")


def _reasoning_input(item: dict[str, Any]) -> str:
    texts = [p.get("text") for p in item.get("content") or [] if isinstance(p, dict)]
    if not any(texts):
        texts = [p.get("text") for p in item.get("summary") or [] if isinstance(p, dict)]
    return "".join(t for t in texts if isinstance(t, str))


def _tools(tools: Any) -> list[ChatTool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise BadRequest("Invalid type for 'tools': expected an array.", param="tools")
    out: list[ChatTool] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"Invalid type for '{where}': expected an object.", param=where)
        if tool.get("type") != "function":
            continue  # hosted/namespace tools: no backend runs them (llama.cpp skips them as well)
        spec = _obj(tool.get("function")) or tool  # the chat-style nested form, tolerated
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")
        params = spec.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise BadRequest(f"Invalid type for '{where}.parameters': expected an object.", param=where)
        function: dict[str, Any] = {"name": name, "parameters": params}
        if isinstance(spec.get("description"), str):
            function["description"] = spec["description"]
        if isinstance(spec.get("strict"), bool):
            function["strict"] = spec["strict"]
        out.append({"type": "function", "function": function})  # type: ignore[typeddict-item]
    return out


def _tool_choice(choice: Any) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict):
        if choice.get("type") == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}
        if choice.get("type") == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            return str(choice["mode"])
    raise BadRequest(
        "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or {\"type\": \"function\", "
        '"name": …}.',
        param="tool_choice",
    )


def _reasoning(reasoning: Any, out: ChatRequest) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise BadRequest("Invalid type for 'reasoning': expected an object.", param="reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return
    if effort == "none":
        out["chat_template_kwargs"] = {"enable_thinking": False}
    elif effort in _EFFORTS:
        out["reasoning_effort"] = _EFFORTS[effort]
        out["chat_template_kwargs"] = {"enable_thinking": True}
    else:
        raise BadRequest(
            "Invalid value for 'reasoning.effort': expected 'none', 'minimal', 'low', 'medium', 'high' "
            "or 'xhigh'.",
            param="reasoning.effort",
        )


def _text_format(text: Any, out: ChatRequest) -> None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return
    fmt = text["format"]
    kind = fmt.get("type")
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("Missing required parameter: 'text.format.schema'.", param="text.format.schema")
        spec: dict[str, Any] = {"name": fmt.get("name") or "output", "schema": schema}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind not in (None, "text"):
        raise BadRequest(f"Invalid value for 'text.format.type': {kind!r}.", param="text.format.type")


# -- answer --------------------------------------------------------------------------------------
def _usage(usage: Any) -> ResponseUsage:
    prompt, completion, cached = usage_counts(usage)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens(usage)},
        "total_tokens": prompt + completion,
    }


def _incomplete(finish_reason: Any) -> dict[str, str] | None:
    if finish_reason == "length":
        return {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return {"reason": "content_filter"}
    return None


def _envelope(
    req: dict[str, Any],
    response_id: str,
    created_at: int,
    status: Status,
    output: list[OutputItem],
    usage: ResponseUsage | None,
    incomplete: dict[str, str] | None = None,
    error: dict[str, Any] | None = None,
) -> Response:
    """The response object, echoing the request's settings as the real API does."""
    reasoning, text = _obj(req.get("reasoning")), _obj(req.get("text"))
    fmt = _obj(text.get("format")) or {"type": "text"}
    tools = req.get("tools")
    instructions = req.get("instructions")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": req.get("max_output_tokens"),
        "model": str(req.get("model") or ""),
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,  # nothing is kept, whatever the client asked
        "background": False,
        "temperature": _number(req.get("temperature"), 1.0),
        "text": {"format": fmt},
        "tool_choice": req.get("tool_choice") or "auto",
        "tools": tools if isinstance(tools, list) else [],
        "top_p": _number(req.get("top_p"), 1.0),
        "truncation": "disabled",
        "usage": usage,
        "metadata": _obj(req.get("metadata")),
        "service_tier": "default",
        "user": None,
    }


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _text_part(text: str) -> OutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_id(call: dict[str, Any]) -> str:
    return str(call.get("id") or new_id("call"))


def chat_to_response(resp: dict[str, Any], req: dict[str, Any], response_id: str | None = None) -> Response:
    """A non-streamed ``chat.completion`` as a Responses ``response`` (``req``: the client's request,
    whose model name and settings are echoed)."""
    choice = first_choice(resp)
    message = choice.get("message") or {}
    finish_reason = choice.get("finish_reason")
    incomplete = _incomplete(finish_reason)
    status: Status = "incomplete" if incomplete else "completed"
    output: list[OutputItem] = []
    thinking = reasoning_text(message)
    if thinking:
        output.append(
            {
                "id": new_id("rs"),
                "type": "reasoning",
                "status": "completed",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": thinking}],
            }
        )
    calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if text or not calls:
        output.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [_text_part(text)],
            }
        )
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        output.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": _call_id(call),
                "name": str(fn.get("name") or ""),
                "arguments": args if isinstance(args, str) else json.dumps(args or {}),
            }
        )
    created = resp.get("created")
    return _envelope(
        req,
        response_id or new_id("resp"),
        created if isinstance(created, int) else int(time.time()),
        status,
        output,
        _usage(resp.get("usage")),
        incomplete,
    )


class ResponsesStream:
    """Turns the backend's ``chat.completion.chunk`` dicts into Responses SSE events: ``start()``,
    ``feed(chunk)`` per chunk (``[DONE]`` is the caller's to skip), ``finish()`` — or
    ``error(message)`` when the backend broke off. Each returns bytes to write (maybe empty).
    ``feed`` raises :class:`UpstreamError` for a chunk that carries the backend's error."""

    def __init__(self, req: dict[str, Any], response_id: str | None = None):
        self.req = req if isinstance(req, dict) else {}
        self.id = response_id or new_id("resp")
        self.created_at = int(time.time())
        self._seq = 0
        self._output: list[OutputItem] = []  # items already done, in output order
        self._item: dict[str, Any] | None = None  # the open item, with "_kind" and "_text"
        self._calls: dict[int, dict[str, Any]] = {}  # backend tool index -> pending/open call
        self._usage: Any = None
        self._finish_reason: Any = None
        self._done = False

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return sse(kind, payload)

    def start(self) -> bytes:
        shell = _envelope(self.req, self.id, self.created_at, "in_progress", [], None)
        return self._event("response.created", {"response": shell}) + self._event(
            "response.in_progress", {"response": shell}
        )

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if self._done or not isinstance(chunk, dict):
            return b""
        raise_chunk_error(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choice = first_choice(chunk)
        delta = choice.get("delta") or {}
        out = b""
        thinking = reasoning_text(delta)
        if thinking:
            out += self._open("reasoning") + self._text_delta("response.reasoning_text.delta", thinking)
        text = delta.get("content")
        if isinstance(text, str) and text:
            out += self._open("message") + self._text_delta("response.output_text.delta", text)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return out

    @property
    def _output_index(self) -> int:
        return len(self._output)

    def _open(self, kind: str, call: dict[str, Any] | None = None) -> bytes:
        if self._item is not None and self._item["_kind"] == kind and call is None:
            return b""
        out = self._close()
        index = self._output_index
        if kind == "message":
            item: dict[str, Any] = {
                "id": new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part: dict[str, Any] = dict(_text_part(""))
        elif kind == "reasoning":
            item = {
                "id": new_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part = {"type": "reasoning_text", "text": ""}
        else:
            assert call is not None
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "call_id": call["call_id"],
                "name": call["name"],
                "arguments": "",
            }
        out += self._event("response.output_item.added", {"output_index": index, "item": item})
        self._item = {**item, "_kind": kind, "_text": ""}
        if kind != "function_call":
            out += self._event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
        return out

    def _text_delta(self, kind: str, text: str) -> bytes:
        assert self._item is not None
        self._item["_text"] += text
        data: dict[str, Any] = {
            "item_id": self._item["id"],
            "output_index": self._output_index,
            "content_index": 0,
        }
        data["delta"] = text
        if kind == "response.output_text.delta":
            data["logprobs"] = []
        return self._event(kind, data)

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        n = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        fn = call.get("function") or {}
        state = self._calls.setdefault(n, {"call_id": "", "name": "", "args": "", "open": False})
        state["call_id"] = state["call_id"] or call.get("id") or ""
        args = fn.get("arguments") or ""
        if not state["open"]:
            state["name"] += fn.get("name") or ""
            state["args"] += args
            if not state["name"]:
                return b""  # an output item starts with the function's name
            state["call_id"] = state["call_id"] or new_id("call")
            state["open"] = True
            out = self._open("function_call", state)
            if state["args"]:
                out += self._args_delta(state["args"])
            return out
        if self._item is None or self._item.get("call_id") != state["call_id"]:
            return b""  # a piece for a call already closed: backends stream calls one after the other
        return self._args_delta(args) if args else b""

    def _args_delta(self, args: str) -> bytes:
        assert self._item is not None
        self._item["_text"] += args
        return self._event(
            "response.function_call_arguments.delta",
            {"item_id": self._item["id"], "output_index": self._output_index, "delta": args},
        )

    def _close(self, status: Status = "completed") -> bytes:
        if self._item is None:
            return b""
        state, self._item = self._item, None
        kind, text, index = state.pop("_kind"), state.pop("_text"), self._output_index
        item_id = state["id"]
        out = b""
        if kind == "function_call":
            state.update(status="completed", arguments=text)
            out += self._event(
                "response.function_call_arguments.done",
                {"item_id": item_id, "output_index": index, "name": state["name"], "arguments": text},
            )
        elif kind == "message":
            part: dict[str, Any] = dict(_text_part(text))
            state.update(status=status, content=[part])
            out += self._event(
                "response.output_text.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []},
            )
            out += self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            )
        else:
            part = {"type": "reasoning_text", "text": text}
            state.update(status="completed", content=[part])
            out += self._event(
                "response.reasoning_text.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "text": text},
            )
            out += self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": index, "content_index": 0, "part": part},
            )
        out += self._event("response.output_item.done", {"output_index": index, "item": state})
        self._output.append(state)  # type: ignore[arg-type]
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        incomplete = _incomplete(self._finish_reason)
        status: Status = "incomplete" if incomplete else "completed"
        out = self._close(status)
        final = _envelope(
            self.req, self.id, self.created_at, status, self._output, _usage(self._usage), incomplete
        )
        kind = "response.incomplete" if incomplete else "response.completed"
        return out + self._event(kind, {"response": final})

    def error(self, message: str, code: str = "server_error") -> bytes:
        """The end of a stream the backend broke off: an ``error`` event, then ``response.failed``."""
        if self._done:
            return b""
        self._done = True
        err = {"code": code, "message": message}
        failed = _envelope(
            self.req, self.id, self.created_at, "failed", self._output, _usage(self._usage), error=err
        )
        return self._event("error", {**err, "param": None}) + self._event(
            "response.failed", {"response": failed}
        )


__all__ = [
    "FunctionCallItem",
    "MessageItem",
    "OutputItem",
    "ReasoningItem",
    "Response",
    "ResponseUsage",
    "ResponsesStream",
    "chat_to_response",
    "responses_to_chat",
]
