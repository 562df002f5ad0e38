"""Ollama's native API on top of an OpenAI-compatible backend (llama.cpp, vLLM, SGLang).

Imports nothing from Jupyter. Produces Ollama's wire format: NDJSON streams whose final object
carries ``done_reason`` and durations in nanoseconds, ``created_at`` in RFC 3339, tool-call
arguments as objects, and errors as ``{"error": "..."}`` with Ollama's status codes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from .catalogue import ModelMeta
from .errors import ServiceError as OllamaError
from .errors import UpstreamError
from .forwarding import Upstream

OLLAMA_API_VERSION = "0.12.6"  # the Ollama API level this translation follows
_FAR_FUTURE = "2318-08-06T00:00:00Z"  # what Ollama reports for models kept loaded forever

# Ollama `options` that map 1:1 onto OpenAI / llama.cpp sampling fields.
_OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "typical_p": "typical_p",
}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class BackendModel:
    name: str  # the public (Ollama-style) name
    backend_id: str  # what the backend calls it
    loaded: bool = True
    meta: dict[str, Any] = field(default_factory=dict)  # llama.cpp's /v1/models "meta"
    router: bool = False


def _digest(name: str, size: int) -> str:
    return hashlib.sha256(f"{name}:{size}".encode()).hexdigest()


class OpenAIToOllama:
    """Answers Ollama's ``/api/*`` by calling an OpenAI-compatible backend."""

    def __init__(
        self, upstream: Upstream, model_meta: dict[str, ModelMeta] | None = None, cache_s: float = 5.0
    ):
        self.upstream = upstream
        self.model_meta = model_meta or {}
        self._cache: tuple[float, str, list[BackendModel]] | None = None
        self._cache_s = cache_s

    # -- model list ---------------------------------------------------------------------
    async def models(self, base_url: str, fresh: bool = False) -> list[BackendModel]:
        cached = self._cache
        if not fresh and cached and cached[1] == base_url and time.monotonic() - cached[0] < self._cache_s:
            return cached[2]
        doc = await self.upstream.get_json(base_url, "/v1/models", timeout=30)
        models: list[BackendModel] = []
        for entry in (doc or {}).get("data", []) if isinstance(doc, dict) else []:
            backend_id = str(entry.get("id", ""))
            aliases = [a for a in entry.get("aliases") or [] if isinstance(a, str)]
            status = entry.get("status")
            router = isinstance(status, dict)
            loaded = (status.get("value") == "loaded") if router else True
            # Prefer an Ollama-style alias ("smollm2:135m") as the public name.
            name = next((a for a in aliases if ":" in a), aliases[0] if aliases else backend_id)
            models.append(BackendModel(name, backend_id, loaded, entry.get("meta") or {}, router))
        self._cache = (time.monotonic(), base_url, models)
        return models

    def invalidate(self) -> None:
        self._cache = None

    async def resolve(self, base_url: str, name: Any) -> BackendModel:
        """The backend model for a requested name; 404 in Ollama's words when there is none."""
        if not isinstance(name, str) or not name:
            raise OllamaError("model is required", 400)
        for fresh in (False, True):
            for m in await self.models(base_url, fresh=fresh):
                if name in (m.name, m.backend_id) or (":" not in name and m.name == f"{name}:latest"):
                    return m
        raise OllamaError(f"model '{name}' not found", 404)

    def _meta(self, m: BackendModel) -> ModelMeta:
        meta = self.model_meta.get(m.name) or self.model_meta.get(m.backend_id) or ModelMeta()
        if not meta.size and m.meta.get("size"):
            meta = ModelMeta(**{**meta.__dict__, "size": int(m.meta["size"])})
        return meta

    def _details(self, m: BackendModel) -> dict[str, Any]:
        meta = self._meta(m)
        params = meta.parameter_size or _param_size(m.meta.get("n_params"))
        family = meta.family
        return {
            "parent_model": "",
            "format": meta.format,
            "family": family,
            "families": [family] if family else None,
            "parameter_size": params,
            "quantization_level": meta.quantization_level or str(m.meta.get("ftype") or ""),
        }

    async def tags(self, base_url: str) -> dict[str, Any]:
        out = []
        for m in await self.models(base_url, fresh=True):
            meta = self._meta(m)
            out.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": meta.modified_at or now_rfc3339(),
                    "size": meta.size,
                    "digest": meta.digest or _digest(m.name, meta.size),
                    "details": self._details(m),
                }
            )
        return {"models": out}

    async def ps(self, base_url: str) -> dict[str, Any]:
        out = []
        for m in await self.models(base_url, fresh=True):
            if not m.loaded:
                continue
            meta = self._meta(m)
            out.append(
                {
                    "name": m.name,
                    "model": m.name,
                    "size": meta.size,
                    "digest": meta.digest or _digest(m.name, meta.size),
                    "details": self._details(m),
                    "expires_at": _FAR_FUTURE,
                    "size_vram": 0,  # CPU inference: nothing in GPU memory
                    "context_length": int(m.meta.get("n_ctx") or 0),
                }
            )
        return {"models": out}

    async def show(self, base_url: str, body: dict[str, Any]) -> dict[str, Any]:
        m = await self.resolve(base_url, body.get("model") or body.get("name"))
        props: dict[str, Any] = {}
        try:
            path = f"/props?model={m.backend_id}" if m.router else "/props"
            got = await self.upstream.get_json(base_url, path, timeout=30)
            props = got if isinstance(got, dict) else {}
        except UpstreamError:
            props = {}  # vLLM has no /props; show what we know
        meta = self._meta(m)
        info = {f"general.{k}": v for k, v in m.meta.items() if isinstance(v, (int, float, str))}
        info["general.architecture"] = meta.family or info.get("general.architecture", "")
        return {
            "license": "",
            "modelfile": f"# Modelfile generated by jupyter_llm_af\nFROM {m.name}\n",
            "parameters": "",
            "template": str(props.get("chat_template") or ""),
            "details": self._details(m),
            "model_info": info,
            "capabilities": list(meta.capabilities),
            "modified_at": meta.modified_at or now_rfc3339(),
        }

    # -- inference ------------------------------------------------------------------------
    async def chat(self, base_url: str, body: dict[str, Any]) -> tuple[bool, AsyncIterator[dict] | dict]:
        """Returns (streaming, objects). Errors before the first byte raise OllamaError."""
        m = await self.resolve(base_url, body.get("model"))
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            raise OllamaError("messages must be an array", 400)
        if not messages:
            return False, await self._load_or_unload(base_url, m, body, "message")
        payload = self._payload(m, body)
        payload["messages"] = [_message_to_openai(msg) for msg in messages]
        if body.get("tools"):
            payload["tools"] = body["tools"]
        return await self._run(base_url, "/v1/chat/completions", m, body, payload, "message")

    async def generate(self, base_url: str, body: dict[str, Any]) -> tuple[bool, AsyncIterator[dict] | dict]:
        m = await self.resolve(base_url, body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise OllamaError("prompt must be a string", 400)
        if not prompt and not body.get("images"):
            return False, await self._load_or_unload(base_url, m, body, "response")
        payload = self._payload(m, body)
        if body.get("raw"):
            payload["prompt"] = prompt
            return await self._run(base_url, "/v1/completions", m, body, payload, "response")
        messages: list[dict[str, Any]] = []
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        messages.append(_message_to_openai({"role": "user", "content": prompt, "images": body.get("images")}))
        payload["messages"] = messages
        return await self._run(base_url, "/v1/chat/completions", m, body, payload, "response")

    async def embed(self, base_url: str, body: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
        m = await self.resolve(base_url, body.get("model"))
        text = body.get("prompt") if legacy else body.get("input")
        if text is None or text == "" or text == []:
            if legacy:
                return {"embedding": []}
            raise OllamaError("input is required", 400)
        start = time.monotonic_ns()
        req = self.upstream.build_request(
            "POST",
            base_url,
            "/v1/embeddings",
            json.dumps({"model": m.backend_id, "input": text}).encode(),
            {"content-type": "application/json"},
        )
        resp = await self.upstream.send(req, stream=False)
        doc = _json_or_error(resp)
        vectors = [
            d.get("embedding", []) for d in sorted(doc.get("data", []), key=lambda d: d.get("index", 0))
        ]
        if legacy:
            return {"embedding": vectors[0] if vectors else []}
        total = time.monotonic_ns() - start
        return {
            "model": m.name,
            "embeddings": vectors,
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_count": int((doc.get("usage") or {}).get("prompt_tokens", 0)),
        }

    # -- helpers ------------------------------------------------------------------------
    def _payload(self, m: BackendModel, body: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": m.backend_id}
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise OllamaError("options must be an object", 400)
        for ollama_key, openai_key in _OPTION_FIELDS.items():
            if options.get(ollama_key) is not None:
                payload[openai_key] = options[ollama_key]
        num_predict = options.get("num_predict")
        if isinstance(num_predict, int) and num_predict >= 0:
            payload["max_tokens"] = num_predict
        fmt = body.get("format")
        if fmt == "json":
            payload["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": fmt},
            }
        elif fmt not in (None, ""):
            raise OllamaError(f"invalid format: {fmt!r}", 400)
        return payload

    async def _load_or_unload(self, base_url: str, m: BackendModel, body: dict, field_name: str) -> dict:
        """Empty prompt/messages: Ollama loads the model (or unloads it with keep_alive 0)."""
        unload = body.get("keep_alive") in (0, "0", "0s", "0m")
        if m.router:
            action = "/models/unload" if unload else "/models/load"
            req = self.upstream.build_request(
                "POST",
                base_url,
                action,
                json.dumps({"model": m.backend_id}).encode(),
                {"content-type": "application/json"},
            )
            resp = await self.upstream.send(req, stream=False)
            # "already loaded"/"not loaded" answers are fine: the end state is what was asked
            if resp.status_code >= 500:
                raise OllamaError(
                    f"could not {'unload' if unload else 'load'} {m.name}: {resp.text[:200]}", 500
                )
            self.invalidate()
        out: dict[str, Any] = {"model": m.name, "created_at": now_rfc3339()}
        if field_name == "message":
            out["message"] = {"role": "assistant", "content": ""}
        else:
            out["response"] = ""
        out.update({"done_reason": "unload" if unload else "load", "done": True})
        return out

    async def _run(
        self, base_url: str, path: str, m: BackendModel, body: dict, payload: dict, field_name: str
    ) -> tuple[bool, AsyncIterator[dict] | dict]:
        stream = body.get("stream", True) is not False  # Ollama streams unless told not to
        start_ns = time.monotonic_ns()
        if not stream:
            req = self.upstream.build_request(
                "POST", base_url, path, json.dumps(payload).encode(), {"content-type": "application/json"}
            )
            resp = await self.upstream.send(req, stream=False)
            doc = _json_or_error(resp)
            choice = (doc.get("choices") or [{}])[0]
            out = self._chunk(
                m, field_name, _choice_text(choice, path), _tool_calls(choice.get("message") or {})
            )
            out.update(self._final_stats(doc, choice.get("finish_reason"), start_ns, None))
            return False, out
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        req = self.upstream.build_request(
            "POST",
            base_url,
            path,
            json.dumps(payload).encode(),
            {"content-type": "application/json", "accept": "text/event-stream"},
        )
        resp = await self.upstream.send(req, stream=True)
        if resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
            _json_or_error(resp)  # raises OllamaError in Ollama's words
        return True, self._stream(resp, m, field_name, path, start_ns)

    async def _stream(
        self, resp: httpx.Response, m: BackendModel, field_name: str, path: str, start_ns: int
    ) -> AsyncIterator[dict]:
        finish_reason = None
        last: dict[str, Any] = {}
        first_token_ns: int | None = None
        tool_acc: dict[int, dict[str, Any]] = {}
        try:
            async for data in _sse_events(resp):
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if "error" in event:
                    raise OllamaError(_error_text(event), 500)
                last = {**last, **{k: v for k, v in event.items() if k in ("usage", "timings")}}
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    for call in delta.get("tool_calls") or []:
                        acc = tool_acc.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                        fn = call.get("function") or {}
                        acc["name"] += fn.get("name") or ""
                        acc["arguments"] += fn.get("arguments") or ""
                    text = _choice_text(choice, path, delta=True)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if text:
                        if first_token_ns is None:
                            first_token_ns = time.monotonic_ns()
                        yield self._chunk(m, field_name, text)
            if tool_acc:
                calls = [
                    {"function": {"name": c["name"], "arguments": _parse_args(c["arguments"])}}
                    for _, c in sorted(tool_acc.items())
                ]
                yield self._chunk(m, field_name, "", calls)
            final = self._chunk(m, field_name, "")
            final.update(self._final_stats(last, finish_reason, start_ns, first_token_ns))
            yield final
        finally:
            await resp.aclose()

    def _chunk(self, m: BackendModel, field_name: str, text: str, tool_calls: list | None = None) -> dict:
        out: dict[str, Any] = {"model": m.name, "created_at": now_rfc3339()}
        if field_name == "message":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                msg["tool_calls"] = tool_calls
            out["message"] = msg
        else:
            out["response"] = text
        out["done"] = False
        return out

    @staticmethod
    def _final_stats(doc: dict, finish_reason: str | None, start_ns: int, first_token_ns: int | None) -> dict:
        total = time.monotonic_ns() - start_ns
        timings = doc.get("timings") or {}
        usage = doc.get("usage") or {}
        prompt_n = int(timings.get("prompt_n", usage.get("prompt_tokens", 0)) or 0)
        eval_n = int(timings.get("predicted_n", usage.get("completion_tokens", 0)) or 0)
        if timings:
            prompt_ns = int(float(timings.get("prompt_ms", 0)) * 1e6)
            eval_ns = int(float(timings.get("predicted_ms", 0)) * 1e6)
        else:  # backends without timings (vLLM): split the wall time at the first token
            prompt_ns = (first_token_ns - start_ns) if first_token_ns else 0
            eval_ns = total - prompt_ns
        return {
            "done": True,
            "done_reason": "length" if finish_reason == "length" else "stop",
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_count": prompt_n,
            "prompt_eval_duration": prompt_ns,
            "eval_count": eval_n,
            "eval_duration": eval_ns,
        }


# -- format conversions -------------------------------------------------------------------
def _message_to_openai(msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict) or "role" not in msg:
        raise OllamaError("each message needs a role and content", 400)
    out: dict[str, Any] = {"role": msg["role"]}
    content = msg.get("content") or ""
    images = msg.get("images") or []
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
        for img in images:
            parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}})
        out["content"] = parts
    else:
        out["content"] = content
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": (c.get("function") or {}).get("name", ""),
                    "arguments": json.dumps((c.get("function") or {}).get("arguments") or {}),
                },
            }
            for i, c in enumerate(msg["tool_calls"])
        ]
    if msg["role"] == "tool":
        out["tool_call_id"] = msg.get("tool_call_id") or msg.get("tool_name") or "call_0"
    return out


def _choice_text(choice: dict, path: str, delta: bool = False) -> str:
    if path == "/v1/completions":
        return choice.get("text") or ""
    src = choice.get("delta" if delta else "message") or {}
    return src.get("content") or ""


def _tool_calls(message: dict) -> list | None:
    calls = message.get("tool_calls") or []
    if not calls:
        return None
    return [
        {
            "function": {
                "name": (c.get("function") or {}).get("name", ""),
                "arguments": _parse_args((c.get("function") or {}).get("arguments")),
            }
        }
        for c in calls
    ]


def _parse_args(args: Any) -> dict:
    if isinstance(args, dict):
        return args
    try:
        parsed = json.loads(args or "{}")
        return parsed if isinstance(parsed, dict) else {"value": parsed}
    except ValueError:
        return {"raw": args}


def _param_size(n_params: Any) -> str:
    if not isinstance(n_params, (int, float)) or n_params <= 0:
        return ""
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{round(n_params / 1e6)}M"


def _error_text(doc: Any) -> str:
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(doc)


def _json_or_error(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        doc = {"error": resp.text[:500]}
    if resp.status_code >= 400:
        message = _error_text(doc)
        if "not found" in message and "model" in message:
            raise OllamaError(message, 404)
        raise OllamaError(message, resp.status_code if resp.status_code < 500 else 500)
    return doc if isinstance(doc, dict) else {}


async def _sse_events(resp: httpx.Response) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent-event stream, as they arrive."""
    buf = ""
    async for text in resp.aiter_text():
        buf += text
        if "\n" not in text:
            continue
        *lines, buf = buf.split("\n")  # one split per read, not one copy of the rest per event
        for line in lines:
            line = line.rstrip("\r")
            if line.startswith("data:"):
                yield line[5:].lstrip()
    if buf.startswith("data:"):
        yield buf[5:].lstrip()
