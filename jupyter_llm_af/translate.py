"""Ollama's native API on top of an OpenAI-compatible backend (llama.cpp, vLLM, SGLang).

Imports nothing from Jupyter. Produces Ollama's wire format: NDJSON streams whose final object
carries ``done_reason`` and durations in nanoseconds, ``created_at`` in RFC 3339, tool calls with
their ``id`` and ``function.index`` and arguments as objects, ``thinking`` from the backend's
reasoning, ``logprobs``, and errors as ``{"error": "..."}`` with Ollama's status codes.

Requests follow Ollama's: ``think`` (bool or "low"/"medium"/"high"/"max"), ``logprobs`` and
``top_logprobs``, ``truncate`` (chat history that does not fit is shortened from the oldest turn, as
Ollama does, unless ``truncate: false``), ``dimensions`` on embed, ``suffix`` on generate (llama.cpp's
``/infill``). Wrong types anywhere raise :class:`OllamaError` 400 naming the field.

Streams: the async iterators of :meth:`OpenAIToOllama.chat` and :meth:`~OpenAIToOllama.generate`
raise :class:`UpstreamError` when the backend breaks the stream off (a read error, an error event,
or the connection closing before the answer is complete); the caller writes it as the stream's last
line, ``{"error": "..."}``, so a broken stream never ends silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from .apis import reasoning_text, tool_input
from .catalogue import ModelCatalogue, ModelMeta
from .errors import ServiceError as OllamaError
from .errors import UpstreamError, backend_error_text, backend_failure_status
from .forwarding import Upstream

# The Ollama API level this translation follows (think levels, logprobs, /v1/messages and
# /v1/responses beside it); Codex `--oss` requires >= 0.13.4.
OLLAMA_API_VERSION = "0.14.0"
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
        self,
        upstream: Upstream,
        model_meta: dict[str, ModelMeta] | None = None,
        cache_s: float = 5.0,
        catalogue: ModelCatalogue | None = None,
    ):
        self.upstream = upstream
        self.model_meta = model_meta or {}
        # the backend's model list is remembered in the service's model catalogue (for cache_s)
        self.catalogue = catalogue if catalogue is not None else ModelCatalogue()
        self._cache_s = cache_s

    # -- model list ---------------------------------------------------------------------
    async def models(self, base_url: str, fresh: bool = False) -> list[BackendModel]:
        cached = None if fresh else self.catalogue.backend_models(base_url, self._cache_s)
        if cached is not None:
            return cached
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
        self.catalogue.remember_backend_models(base_url, models)
        return models

    def invalidate(self) -> None:
        self.catalogue.forget_backend_models()

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
        body = _request_body(body)
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
        """Returns (streaming, objects). Errors before the first byte raise OllamaError; a stream the
        backend breaks off raises :class:`UpstreamError` from the iterator (the caller writes it as
        the stream's last line, ``{"error": "..."}``)."""
        body = _request_body(body)
        m = await self.resolve(base_url, body.get("model"))
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            raise OllamaError("messages must be an array", 400)
        if not messages:
            return False, await self._load_or_unload(base_url, m, body, "message")
        payload = self._payload(m, body, "/v1/chat/completions")
        payload["messages"] = _messages_to_openai(messages)
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise OllamaError("tools must be an array of objects", 400)
        if tools:
            payload["tools"] = tools
        return await self._run(base_url, "/v1/chat/completions", m, body, payload, "message")

    async def generate(self, base_url: str, body: dict[str, Any]) -> tuple[bool, AsyncIterator[dict] | dict]:
        body = _request_body(body)
        m = await self.resolve(base_url, body.get("model"))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise OllamaError("prompt must be a string", 400)
        images = _images(body.get("images"), "images")
        if not prompt and not images:
            return False, await self._load_or_unload(base_url, m, body, "response")
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise OllamaError("suffix must be a string", 400)
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise OllamaError("system must be a string", 400)
        if suffix:
            return await self._infill(base_url, m, body, prompt, suffix)
        if body.get("raw"):
            payload = self._payload(m, body, "/v1/completions")
            payload["prompt"] = prompt
            return await self._run(base_url, "/v1/completions", m, body, payload, "response")
        payload = self._payload(m, body, "/v1/chat/completions")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt, "images": images})
        payload["messages"] = _messages_to_openai(messages)
        return await self._run(base_url, "/v1/chat/completions", m, body, payload, "response")

    async def embed(self, base_url: str, body: dict[str, Any], legacy: bool = False) -> dict[str, Any]:
        body = _request_body(body)
        m = await self.resolve(base_url, body.get("model"))
        text = body.get("prompt") if legacy else body.get("input")
        if text is None or text == "" or text == []:
            if legacy:
                return {"embedding": []}
            raise OllamaError("input is required", 400)
        if not isinstance(text, str) and not (
            isinstance(text, list) and all(isinstance(t, str) for t in text)
        ):
            raise OllamaError(
                f"{'prompt' if legacy else 'input'} must be a string or an array of strings", 400
            )
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise OllamaError("dimensions must be an integer", 400)
        if isinstance(dimensions, int) and dimensions < 0:
            raise OllamaError("dimensions must be a positive integer", 400)
        truncate = _optional_bool(body, "truncate") is not False
        start = time.monotonic_ns()
        resp = await self._embeddings(base_url, m, text)
        limit = _embedding_token_limit(resp)
        if limit is not None:
            if not truncate:
                raise OllamaError("the input length exceeds the context length", 400)
            # as Ollama does by default: cut each input to what fits, then embed again
            texts = [text] if isinstance(text, str) else text
            cut = [await self._truncated(base_url, m, t, limit) for t in texts]
            resp = await self._embeddings(base_url, m, cut[0] if isinstance(text, str) else cut)
        doc = _json_or_error(resp)
        vectors = [
            d.get("embedding", []) for d in sorted(doc.get("data", []), key=lambda d: d.get("index", 0))
        ]
        if dimensions:
            # as Ollama does: keep the first n values and scale back to unit length
            vectors = [_normalized(v[:dimensions]) if dimensions < len(v) else v for v in vectors]
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
    async def _embeddings(self, base_url: str, m: BackendModel, text: str | list[str]) -> httpx.Response:
        return await self._post_json(base_url, "/v1/embeddings", {"model": m.backend_id, "input": text})

    async def _post_json(self, base_url: str, path: str, doc: dict[str, Any]) -> httpx.Response:
        headers = {"content-type": "application/json"}
        req = self.upstream.build_request("POST", base_url, path, json.dumps(doc).encode(), headers)
        return await self.upstream.send(req, stream=False)

    async def _truncated(self, base_url: str, m: BackendModel, text: str, limit: int) -> str:
        """``text`` cut to ``limit`` tokens with llama.cpp's tokenizer (``/tokenize``, ``/detokenize``)."""
        resp = await self._post_json(base_url, "/tokenize", {"model": m.backend_id, "content": text})
        tokens = _json_or_error(resp).get("tokens") or []
        if len(tokens) <= limit:
            return text
        resp = await self._post_json(
            base_url, "/detokenize", {"model": m.backend_id, "tokens": tokens[:limit]}
        )
        return str(_json_or_error(resp).get("content") or "")

    def _payload(self, m: BackendModel, body: dict[str, Any], path: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": m.backend_id}
        options = body.get("options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise OllamaError("options must be an object", 400)
        for ollama_key, openai_key in _OPTION_FIELDS.items():
            value = options.get(ollama_key)
            if value is not None:
                payload[openai_key] = _option(ollama_key, value)
        num_predict = options.get("num_predict")
        if num_predict is not None:
            num_predict = _option("num_predict", num_predict)
            if num_predict >= 0:  # Ollama: -1 means "until the model stops"
                payload["max_tokens"] = num_predict
        for key in ("num_ctx", "num_keep", "repeat_last_n"):  # fixed by the backend's launch flags
            if options.get(key) is not None:
                _option(key, options[key])
        payload.update(_format(body.get("format")))
        payload.update(_think(body.get("think")))
        payload.update(_logprobs(body, path))
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

    async def _send(
        self, base_url: str, path: str, payload: dict, stream: bool, truncate: bool
    ) -> httpx.Response:
        """Send; when the chat history does not fit the backend's context and the client allows it
        (Ollama's ``truncate``, default true), drop the oldest turns (system messages and the last
        message stay) and try again, as Ollama does."""
        headers = {"content-type": "application/json"}
        if stream:
            headers["accept"] = "text/event-stream"
        while True:
            req = self.upstream.build_request("POST", base_url, path, json.dumps(payload).encode(), headers)
            resp = await self.upstream.send(req, stream=stream)
            if resp.status_code < 400:
                return resp
            if stream:
                await resp.aread()
                await resp.aclose()
            shorter = _drop_oldest_turns(payload.get("messages"), resp) if truncate else None
            if shorter is None:
                _json_or_error(resp)  # raises OllamaError in Ollama's words
                raise OllamaError(f"backend answered {resp.status_code}", 500)  # not reached
            payload = {**payload, "messages": shorter}

    async def _run(
        self, base_url: str, path: str, m: BackendModel, body: dict, payload: dict, field_name: str
    ) -> tuple[bool, AsyncIterator[dict] | dict]:
        stream = _optional_bool(body, "stream") is not False  # Ollama streams unless told not to
        truncate = _optional_bool(body, "truncate") is not False
        want_thinking = body.get("think") is not False
        top = body.get("top_logprobs") or 0
        want_logprobs = body.get("logprobs") is True  # Ollama sends them only when asked
        start_ns = time.monotonic_ns()
        if not stream:
            resp = await self._send(base_url, path, payload, False, truncate)
            doc = _json_or_error(resp)
            choice = (doc.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            out = self._chunk(
                m,
                field_name,
                _choice_text(choice, path),
                _tool_calls(message.get("tool_calls")),
                reasoning_text(message) if want_thinking else "",
                _ollama_logprobs(choice.get("logprobs"), top) if want_logprobs else None,
            )
            out.update(self._final_stats(doc, choice.get("finish_reason"), start_ns, None))
            return False, out
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        resp = await self._send(base_url, path, payload, True, truncate)
        return True, self._stream(resp, m, field_name, path, start_ns, want_thinking, top, want_logprobs)

    async def _stream(
        self,
        resp: httpx.Response,
        m: BackendModel,
        field_name: str,
        path: str,
        start_ns: int,
        want_thinking: bool = True,
        top_logprobs: int = 0,
        want_logprobs: bool = False,
    ) -> AsyncIterator[dict]:
        """The NDJSON objects of a backend SSE stream. A stream that breaks (read error, the
        connection closed before ``[DONE]``, an error event) raises :class:`UpstreamError`."""
        finish_reason = None
        last: dict[str, Any] = {}
        first_token_ns: int | None = None
        tool_acc: dict[int, dict[str, Any]] = {}
        finished = False
        try:
            async for data in _sse_events(resp):
                if data == "[DONE]":
                    finished = True
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    raise UpstreamError(f"the backend failed while streaming: {backend_error_text(event)}")
                last = {**last, **{k: v for k, v in event.items() if k in ("usage", "timings")}}
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    for call in delta.get("tool_calls") or []:
                        index = call.get("index") if isinstance(call.get("index"), int) else len(tool_acc)
                        acc = tool_acc.setdefault(index, {"id": "", "name": "", "arguments": ""})
                        fn = call.get("function") or {}
                        acc["id"] = acc["id"] or call.get("id") or ""
                        acc["name"] += fn.get("name") or ""
                        acc["arguments"] += fn.get("arguments") or ""
                    text = _choice_text(choice, path, delta=True)
                    thinking = reasoning_text(delta) if want_thinking else ""
                    logprobs = (
                        _ollama_logprobs(choice.get("logprobs"), top_logprobs) if want_logprobs else None
                    )
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
                    if text or thinking or logprobs:
                        if first_token_ns is None:
                            first_token_ns = time.monotonic_ns()
                        yield self._chunk(m, field_name, text, None, thinking, logprobs)
            if not finished and finish_reason is None:
                raise UpstreamError("the backend closed the stream before the answer was complete")
            if tool_acc:
                calls = [
                    {
                        "id": c["id"] or f"call_{i}",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for i, c in sorted(tool_acc.items())
                ]
                yield self._chunk(m, field_name, "", _tool_calls(calls))
            final = self._chunk(m, field_name, "")
            final.update(self._final_stats(last, finish_reason, start_ns, first_token_ns))
            yield final
        except _READ_ERRORS as e:
            raise UpstreamError(f"the backend broke off the stream: {_describe(e)}") from e
        finally:
            await resp.aclose()

    async def _infill(
        self, base_url: str, m: BackendModel, body: dict, prompt: str, suffix: str
    ) -> tuple[bool, AsyncIterator[dict] | dict]:
        """``/api/generate`` with ``suffix`` (fill in the middle): llama.cpp's ``/infill``, which
        needs a model with FIM tokens; anything else is answered as Ollama does for such models."""
        payload = self._payload(m, body, "/infill")
        infill: dict[str, Any] = {"model": m.backend_id, "input_prefix": prompt, "input_suffix": suffix}
        infill["prompt"] = ""
        for key in ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "repeat_penalty"):
            if key in payload:
                infill[key] = payload[key]
        if "max_tokens" in payload:
            infill["n_predict"] = payload["max_tokens"]
        stream = _optional_bool(body, "stream") is not False
        infill["stream"] = stream
        start_ns = time.monotonic_ns()
        headers = {"content-type": "application/json"}
        req = self.upstream.build_request("POST", base_url, "/infill", json.dumps(infill).encode(), headers)
        resp = await self.upstream.send(req, stream=stream)
        if resp.status_code in (404, 405, 501):  # no /infill (vLLM), or a model without FIM tokens
            if stream:
                await resp.aclose()
            raise OllamaError(f'"{m.name}" does not support insert', 400)
        if stream and resp.status_code >= 400:
            await resp.aread()
            await resp.aclose()
        if not stream or resp.status_code >= 400:
            doc = _json_or_error(resp)
            out = self._chunk(m, "response", str(doc.get("content") or ""))
            out.update(self._final_stats(_native_stats(doc), _native_finish(doc), start_ns, None))
            return False, out
        return True, self._native_stream(resp, m, start_ns)

    async def _native_stream(
        self, resp: httpx.Response, m: BackendModel, start_ns: int
    ) -> AsyncIterator[dict]:
        """llama.cpp's own stream format (``/infill``): ``data: {"content": …, "stop": false}``."""
        first_token_ns: int | None = None
        try:
            async for data in _sse_events(resp):
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    raise UpstreamError(f"the backend failed while streaming: {backend_error_text(event)}")
                if event.get("content"):
                    first_token_ns = first_token_ns or time.monotonic_ns()
                    yield self._chunk(m, "response", str(event["content"]))
                if event.get("stop"):
                    final = self._chunk(m, "response", "")
                    final.update(
                        self._final_stats(
                            _native_stats(event), _native_finish(event), start_ns, first_token_ns
                        )
                    )
                    yield final
                    return
            raise UpstreamError("the backend closed the stream before the answer was complete")
        except _READ_ERRORS as e:
            raise UpstreamError(f"the backend broke off the stream: {_describe(e)}") from e
        finally:
            await resp.aclose()

    def _chunk(
        self,
        m: BackendModel,
        field_name: str,
        text: str,
        tool_calls: list | None = None,
        thinking: str = "",
        logprobs: list | None = None,
    ) -> dict:
        out: dict[str, Any] = {"model": m.name, "created_at": now_rfc3339()}
        if field_name == "message":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if tool_calls:
                msg["tool_calls"] = tool_calls
            out["message"] = msg
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        if logprobs:
            out["logprobs"] = logprobs
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


# -- request checks and conversions ---------------------------------------------------------------
_THINK_LEVELS = ("low", "medium", "high", "max")
_INT_OPTIONS = {"top_k", "seed", "num_predict", "num_ctx", "num_keep", "repeat_last_n"}
# Reads that fail mid-stream.
_READ_ERRORS = (httpx.HTTPError, asyncio.TimeoutError)


def _request_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise OllamaError("the request body must be a JSON object", 400)
    return body


def _optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise OllamaError(f"{key} must be true or false", 400)
    return value


def _option(key: str, value: Any) -> Any:
    """An option value of the type Ollama requires (its messages for the wrong ones)."""
    if key == "stop":
        if isinstance(value, str):
            return [value]  # lenient: a single stop string
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OllamaError('option "stop" must be of an array of strings', 400)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "integer" if key in _INT_OPTIONS else "float32"
        raise OllamaError(f"option {key!r} must be of type {kind}".replace("'", '"'), 400)
    return int(value) if key in _INT_OPTIONS else value


def _format(fmt: Any) -> dict[str, Any]:
    if fmt in (None, ""):
        return {}
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}}
    raise OllamaError(f"invalid format: {fmt!r}", 400)


def _think(think: Any) -> dict[str, Any]:
    """Ollama's ``think`` as the backend's reasoning switches: ``chat_template_kwargs.enable_thinking``
    (llama.cpp, vLLM, SGLang: Qwen3-style templates) and ``reasoning_effort`` for a level
    (gpt-oss-style templates; llama.cpp passes it to the template)."""
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    if think in _THINK_LEVELS:
        return {
            "reasoning_effort": "high" if think == "max" else think,
            "chat_template_kwargs": {"enable_thinking": True},
        }
    raise OllamaError(
        f'invalid think value: {think!r} (expected true, false, "low", "medium", "high" or "max")', 400
    )


def _logprobs(body: dict[str, Any], path: str) -> dict[str, Any]:
    wanted = _optional_bool(body, "logprobs")
    top = body.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20):
        raise OllamaError("top_logprobs must be between 0 and 20", 400)
    if not wanted:
        return {}
    if path == "/v1/completions":  # the legacy API: an integer, the number of alternatives
        return {"logprobs": max(1, top or 0)}
    out: dict[str, Any] = {"logprobs": True}
    if top:
        out["top_logprobs"] = top
    return out


def _images(images: Any, where: str) -> list[str]:
    if images is None:
        return []
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise OllamaError(f"{where} must be an array of base64-encoded strings", 400)
    return images


_IMAGE_TYPES = {"/9j/": "image/jpeg", "iVBOR": "image/png", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def _image_url(data: str) -> dict[str, Any]:
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    media = next((t for prefix, t in _IMAGE_TYPES.items() if data.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _messages_to_openai(messages: list[Any]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones. Tool calls keep their ``id``; a tool answer without
    ``tool_call_id`` is paired with the unanswered call of its ``tool_name`` (or the oldest)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, function name) not answered yet
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise OllamaError(f"{where} must be an object with a role and content", 400)
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise OllamaError(f"{where}.role must be a string", 400)
        role = role.lower()
        content = msg.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise OllamaError(f"{where}.content must be a string", 400)
        converted: dict[str, Any] = {"role": role}
        images = _images(msg.get("images"), f"{where}.images")
        if images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            converted["content"] = parts + [_image_url(img) for img in images]
        else:
            converted["content"] = content
        thinking = msg.get("thinking")
        if isinstance(thinking, str) and thinking and role == "assistant":
            converted["reasoning_content"] = thinking  # llama.cpp / vLLM accept earlier reasoning
        calls = msg.get("tool_calls")
        if calls:
            converted["tool_calls"] = _openai_tool_calls(calls, where, i)
            pending = [(c["id"], c["function"]["name"]) for c in converted["tool_calls"]]
        if role == "tool":
            converted["tool_call_id"] = _answered_call(msg, pending, i)
        out.append(converted)
    return out


def _openai_tool_calls(calls: Any, where: str, msg_index: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise OllamaError(f"{where}.tool_calls must be an array", 400)
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise OllamaError(f"{at} must be an object with a function", 400)
        name, args = fn.get("name"), fn.get("arguments")
        if not isinstance(name, str) or not name:
            raise OllamaError(f"{at}.function.name must be a string", 400)
        if args is None:
            args = {}
        if not isinstance(args, (dict, str)):
            raise OllamaError(f"{at}.function.arguments must be an object", 400)
        call_id = call.get("id")
        out.append(
            {
                "id": call_id if isinstance(call_id, str) and call_id else f"call_{msg_index}_{j}",
                "type": "function",
                "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
            }
        )
    return out


def _answered_call(msg: dict[str, Any], pending: list[tuple[str, str]], msg_index: int) -> str:
    call_id = msg.get("tool_call_id")
    if isinstance(call_id, str) and call_id:
        match = next((p for p in pending if p[0] == call_id), None)
    else:
        name = msg.get("tool_name")
        match = next((p for p in pending if p[1] == name), pending[0] if pending else None)
        call_id = match[0] if match else f"call_{msg_index}"
    if match:
        pending.remove(match)
    return call_id


def _drop_oldest_turns(messages: Any, resp: httpx.Response) -> list[dict[str, Any]] | None:
    """A shorter history when ``resp`` says the prompt is too long for the context, else None."""
    if not isinstance(messages, list) or not _is_context_error(resp):
        return None
    droppable = [i for i, msg in enumerate(messages[:-1]) if msg.get("role") != "system"]
    if not droppable:
        return None
    err = _error_doc(resp)
    n_prompt, n_ctx = err.get("n_prompt_tokens"), err.get("n_ctx")  # llama.cpp says both
    sizes = {i: len(json.dumps(messages[i])) for i in droppable}
    excess = 1
    if isinstance(n_prompt, int) and isinstance(n_ctx, int) and n_prompt > 0:
        # drop about the share of the conversation that is too much, plus a margin for the answer
        excess = int(sum(len(json.dumps(msg)) for msg in messages) * (1 - 0.9 * n_ctx / n_prompt))
    dropped: set[int] = set()
    for i in droppable:
        dropped.add(i)
        excess -= sizes[i]
        if excess <= 0:
            break
    kept = [msg for i, msg in enumerate(messages) if i not in dropped]
    # a tool answer whose call was dropped would confuse the template
    while len(kept) > 1 and kept[0].get("role") == "tool":
        kept.pop(0)
    first_other = next((i for i, msg in enumerate(kept) if msg.get("role") != "system"), None)
    while first_other is not None and first_other < len(kept) - 1 and kept[first_other].get("role") == "tool":
        kept.pop(first_other)
    return kept


def _error_doc(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        return {}
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else {}


def _embedding_token_limit(resp: httpx.Response) -> int | None:
    """How many tokens an embedding input may have, when ``resp`` says one had too many (llama.cpp:
    "input (701 tokens) is too large to process. increase the physical batch size (current batch
    size: 512)"); None for any other answer."""
    if resp.status_code < 400:
        return None
    match = re.search(r"too large to process.*batch size: (\d+)", str(_error_doc(resp).get("message", "")))
    if match:
        return max(1, int(match.group(1)) - 2)  # room for the BOS/EOS tokens the server adds
    return None


def _is_context_error(resp: httpx.Response) -> bool:
    if resp.status_code != 400:
        return False
    err = _error_doc(resp)
    text = f"{err.get('type', '')} {err.get('message', '')} {err.get('code', '')}".lower()
    return any(
        s in text
        for s in ("exceed_context_size", "context size", "context length", "context_length_exceeded")
    )


# -- answer conversions ---------------------------------------------------------------------------
def _choice_text(choice: dict, path: str, delta: bool = False) -> str:
    if path == "/v1/completions":
        return choice.get("text") or ""
    src = choice.get("delta" if delta else "message") or {}
    return src.get("content") or ""


def _tool_calls(calls: Any) -> list | None:
    """OpenAI tool calls as Ollama's: ``{"id", "function": {"index", "name", "arguments": {…}}}``."""
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for i, c in enumerate(calls):
        if not isinstance(c, dict):
            continue
        fn = c.get("function") or {}
        entry: dict[str, Any] = {
            "function": {"index": i, "name": fn.get("name", ""), "arguments": tool_input(fn.get("arguments"))}
        }
        if c.get("id"):
            entry = {"id": c["id"], **entry}
        out.append(entry)
    return out or None


def _ollama_logprobs(logprobs: Any, top: int = 0) -> list[dict[str, Any]] | None:
    """OpenAI ``logprobs`` (chat and llama.cpp: ``content`` entries; legacy completions: parallel
    arrays) as Ollama's ``[{"token", "logprob", "bytes", "top_logprobs": […]}]``, with at most
    ``top`` alternatives (llama.cpp sends some even when none were asked for)."""
    if not isinstance(logprobs, dict):
        return None
    out: list[dict[str, Any]] = []
    if isinstance(logprobs.get("content"), list):
        for entry in logprobs["content"]:
            if not isinstance(entry, dict):
                continue
            item = _token_logprob(entry)
            tops = [_token_logprob(t) for t in entry.get("top_logprobs") or [] if isinstance(t, dict)][:top]
            if tops:
                item["top_logprobs"] = tops
            out.append(item)
    elif isinstance(logprobs.get("tokens"), list):
        values = logprobs.get("token_logprobs") or []
        tops_list = logprobs.get("top_logprobs") or []
        for k, token in enumerate(logprobs["tokens"]):
            item = {"token": token, "logprob": values[k] if k < len(values) else 0.0}
            tops = tops_list[k] if k < len(tops_list) and isinstance(tops_list[k], dict) else {}
            if tops and top:
                item["top_logprobs"] = [{"token": t, "logprob": lp} for t, lp in tops.items()][:top]
            out.append(item)
    return out or None


def _token_logprob(entry: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0)}
    if isinstance(entry.get("bytes"), list):
        item["bytes"] = entry["bytes"]
    return item


def _normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _native_stats(doc: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp's native answer (``/infill``) in the shape ``_final_stats`` reads."""
    usage = {
        "prompt_tokens": doc.get("tokens_evaluated", 0),
        "completion_tokens": doc.get("tokens_predicted", 0),
    }
    return {"timings": doc.get("timings") or {}, "usage": usage}


def _native_finish(doc: dict[str, Any]) -> str:
    return "length" if doc.get("stop_type") == "limit" or doc.get("truncated") else "stop"


def _param_size(n_params: Any) -> str:
    if not isinstance(n_params, (int, float)) or n_params <= 0:
        return ""
    if n_params >= 1e9:
        return f"{n_params / 1e9:.1f}B"
    return f"{round(n_params / 1e6)}M"


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _json_or_error(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        doc = {"error": resp.text[:500]}
    if resp.status_code >= 400:
        message = backend_error_text(doc)
        if "not found" in message and "model" in message:
            raise OllamaError(message, 404)
        raise OllamaError(message, backend_failure_status(resp.status_code, message))
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
