"""Pure converters between client APIs and the OpenAI chat-completions API that every backend speaks.

Imports nothing from Jupyter and does no I/O. Each module turns one client API's request into a
``/v1/chat/completions`` request, and the backend's answer (a ``chat.completion`` document or a
stream of ``chat.completion.chunk`` documents) back into that API's wire format:

* :mod:`.anthropic`  Anthropic Messages (``POST /v1/messages``; Claude Code, the ``anthropic`` SDK)
* :mod:`.responses`  OpenAI Responses (``POST /v1/responses``, stateless; Codex, ``openai`` SDK)

Wrong input raises :class:`jupyter_llm_af.errors.BadRequest` with a message that names the field.
A chunk that carries the backend's own error raises :class:`jupyter_llm_af.errors.UpstreamError`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Literal, TypedDict

from ..errors import BadRequest, UpstreamError

# -- OpenAI chat.completions wire structs (what the converters send and read) ----------------


class ChatFunctionCall(TypedDict, total=False):
    name: str
    arguments: str  # JSON text


class ChatToolCall(TypedDict, total=False):
    index: int  # only in stream deltas
    id: str
    type: Literal["function"]
    function: ChatFunctionCall


class ChatContentPart(TypedDict, total=False):
    type: Literal["text", "image_url"]
    text: str
    image_url: dict[str, str]


class ChatMessage(TypedDict, total=False):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ChatContentPart] | None
    tool_calls: list[ChatToolCall]
    tool_call_id: str
    reasoning_content: str  # llama.cpp / vLLM: the assistant's earlier reasoning


class ChatFunction(TypedDict, total=False):
    name: str
    description: str
    parameters: dict[str, Any]


class ChatTool(TypedDict):
    type: Literal["function"]
    function: ChatFunction


class ChatRequest(TypedDict, total=False):
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    stream: bool
    stream_options: dict[str, bool]
    tools: list[ChatTool]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    response_format: dict[str, Any]
    reasoning_effort: str  # OpenAI / vLLM / llama.cpp (passed to the chat template)
    chat_template_kwargs: dict[str, Any]  # llama.cpp / vLLM / SGLang: {"enable_thinking": bool}
    thinking_budget_tokens: int  # llama.cpp


class ChatUsage(TypedDict, total=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int]
    completion_tokens_details: dict[str, int]


# -- helpers shared by the converters ------------------------------------------------------------


def new_id(prefix: str) -> str:
    """An id in the style of the API it belongs to: ``msg_…``, ``resp_…``, ``toolu_…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with a named type, as both Anthropic and the Responses API frame them."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def tool_input(arguments: Any) -> dict[str, Any]:
    """Tool-call arguments (JSON text from the backend) as the object Anthropic/Ollama clients expect.
    Text that is not a JSON object is kept, not dropped, so the client can see what the model sent."""
    if isinstance(arguments, dict):
        return arguments
    if arguments in (None, ""):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        return {"raw": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning of a chat message or delta: llama.cpp and older vLLM say ``reasoning_content``,
    newer vLLM and OpenRouter say ``reasoning``."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def first_choice(doc: dict[str, Any]) -> dict[str, Any]:
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def usage_counts(usage: Any) -> tuple[int, int, int]:
    """(prompt_tokens, completion_tokens, cached prompt tokens) of an OpenAI ``usage`` object."""
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0)


def reasoning_tokens(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    details = usage.get("completion_tokens_details")
    return int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0


def raise_chunk_error(chunk: dict[str, Any]) -> None:
    """A backend that fails mid-stream sends ``data: {"error": …}`` (llama.cpp, vLLM)."""
    err = chunk.get("error")
    if err:
        message = err.get("message") if isinstance(err, dict) else err
        raise UpstreamError(f"the backend failed while streaming: {message}")


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: Input should be an object")
    return value


def optional_number(req: dict[str, Any], key: str, where: str = "") -> float | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{where}{key}: Input should be a valid number")
    return value


def optional_int(req: dict[str, Any], key: str, where: str = "", minimum: int | None = None) -> int | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{where}{key}: Input should be a valid integer")
    if minimum is not None and value < minimum:
        raise BadRequest(f"{where}{key}: Input should be greater than or equal to {minimum}")
    return value


def optional_bool(req: dict[str, Any], key: str, where: str = "") -> bool | None:
    value = req.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"{where}{key}: Input should be a valid boolean")
    return value


def optional_str(req: dict[str, Any], key: str, where: str = "") -> str | None:
    value = req.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key}: Input should be a valid string")
    return value


__all__ = [
    "ChatContentPart",
    "ChatFunction",
    "ChatFunctionCall",
    "ChatMessage",
    "ChatRequest",
    "ChatTool",
    "ChatToolCall",
    "ChatUsage",
    "new_id",
    "reasoning_text",
    "sse",
    "tool_input",
]
