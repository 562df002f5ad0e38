"""A test double of Ollama's HTTP API, following Ollama's documented wire format (docs/api.md).

Used for the native pass-through path (``backend_protocol = "ollama"``) and as the command of test
Slurm jobs. Deterministic text, real timing fields (nanoseconds), NDJSON streaming with one line per
token flushed as it is produced, ``done_reason``, ``{"error": ...}`` bodies and 404 for unknown models.
It also serves a minimal OpenAI ``/v1`` (Ollama has one too).

    python -m tests.resources.ollama_double --host 127.0.0.1 --port 11500 [--models a:1b,b:2b] [--delay 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from datetime import datetime, timezone

from tornado import web
from tornado.iostream import StreamClosedError

WORDS = "The quick brown fox jumps over the lazy dog near the river bank today".split()


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Base(web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    @property
    def models(self) -> dict[str, int]:
        return self.settings["models"]

    def body_json(self) -> dict | None:
        try:
            doc = json.loads(self.request.body or b"{}")
        except ValueError as e:
            self.set_status(400)
            self.finish(json.dumps({"error": f"invalid character in JSON: {e}"}))
            return None
        return doc

    def check_model(self, doc: dict) -> str | None:
        name = doc.get("model") or doc.get("name") or ""
        if name not in self.models:
            self.set_status(404)
            self.finish(json.dumps({"error": f"model '{name}' not found"}))
            return None
        self.settings["loaded"][name] = time.time()
        return name

    def write_error(self, status_code: int, **kwargs: object) -> None:
        self.finish(json.dumps({"error": self._reason}))


class Root(Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Ollama is running")

    head = get


def model_entry(name: str, size: int) -> dict:
    family = name.split(":")[0]
    return {
        "name": name,
        "model": name,
        "modified_at": now(),
        "size": size,
        "digest": f"{abs(hash(name)) % (1 << 64):064x}",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": name.split(":")[-1].upper(),
            "quantization_level": "Q4_K_M",
        },
    }


class Tags(Base):
    def get(self) -> None:
        self.finish({"models": [model_entry(n, s) for n, s in self.models.items()]})


class Ps(Base):
    def get(self) -> None:
        out = []
        for name, at in self.settings["loaded"].items():
            e = model_entry(name, self.models[name])
            e.update(
                {
                    "expires_at": datetime.fromtimestamp(at + 300, timezone.utc)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "size_vram": self.models[name],
                    "context_length": 4096,
                }
            )
            out.append(e)
        self.finish({"models": out})


class Version(Base):
    def get(self) -> None:
        self.finish({"version": "0.12.6"})


class Show(Base):
    def post(self) -> None:
        doc = self.body_json()
        if doc is None or (name := self.check_model(doc)) is None:
            return
        e = model_entry(name, self.models[name])
        self.finish(
            {
                "modelfile": f"FROM {name}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": e["details"],
                "model_info": {"general.architecture": e["details"]["family"]},
                "capabilities": ["completion"],
                "modified_at": e["modified_at"],
            }
        )


class Generate(Base):
    field = "response"

    async def post(self) -> None:
        doc = self.body_json()
        if doc is None or (name := self.check_model(doc)) is None:
            return
        start = time.monotonic_ns()
        n = int((doc.get("options") or {}).get("num_predict", 8))
        n = max(1, min(n if n > 0 else 8, 64))
        delay = self.settings["delay"]
        prompt_text = json.dumps(doc.get("messages") or doc.get("prompt") or "")
        prompt_tokens = max(1, len(prompt_text.split()))
        stream = doc.get("stream", True) is not False
        tokens = [WORDS[i % len(WORDS)] + " " for i in range(n)]
        first = None
        if stream:
            self.set_header("Content-Type", "application/x-ndjson")
            try:
                for tok in tokens:
                    await asyncio.sleep(delay)
                    first = first or time.monotonic_ns()
                    self.write(json.dumps(self.piece(name, tok)) + "\n")
                    await self.flush()
                self.finish(json.dumps(self.final(name, start, first, prompt_tokens, n)) + "\n")
            except StreamClosedError:
                self.settings["cancelled"].append(name)
            return
        await asyncio.sleep(delay * n)
        out = self.final(name, start, start + 1000, prompt_tokens, n)
        out.update({k: v for k, v in self.piece(name, "".join(tokens)).items() if k not in ("done",)})
        out["done"] = True
        self.finish(json.dumps(out))

    def on_connection_close(self) -> None:
        self.settings["cancelled"].append("connection")

    def piece(self, name: str, text: str) -> dict:
        if self.field == "message":
            return {
                "model": name,
                "created_at": now(),
                "message": {"role": "assistant", "content": text},
                "done": False,
            }
        return {"model": name, "created_at": now(), "response": text, "done": False}

    def final(self, name: str, start: int, first: int | None, prompt_n: int, n: int) -> dict:
        total = time.monotonic_ns() - start
        prompt_ns = (first or start) - start
        out = self.piece(name, "")
        out.update(
            {
                "done": True,
                "done_reason": "length" if n >= 8 else "stop",
                "total_duration": total,
                "load_duration": 1000,
                "prompt_eval_count": prompt_n,
                "prompt_eval_duration": prompt_ns,
                "eval_count": n,
                "eval_duration": total - prompt_ns,
            }
        )
        if self.field == "response":
            out["context"] = [1, 2, 3]
        return out


class Chat(Generate):
    field = "message"


class Embed(Base):
    def post(self) -> None:
        doc = self.body_json()
        if doc is None or (name := self.check_model(doc)) is None:
            return
        inputs = doc.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        vecs = [[((len(t) + i) % 7) / 7.0 for i in range(8)] for t in inputs]
        self.finish(
            {
                "model": name,
                "embeddings": vecs,
                "total_duration": 1000,
                "load_duration": 0,
                "prompt_eval_count": sum(len(t.split()) for t in inputs),
            }
        )


class Embeddings(Base):
    def post(self) -> None:
        doc = self.body_json()
        if doc is None or self.check_model(doc) is None:
            return
        self.finish({"embedding": [0.1] * 8})


class OpenAIChat(Base):
    async def post(self) -> None:
        doc = self.body_json()
        if doc is None:
            return
        name = doc.get("model", "")
        if name not in self.models:
            self.set_status(404)
            self.finish(
                {
                    "error": {
                        "message": f"model '{name}' not found",
                        "type": "api_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            return
        n = int(doc.get("max_tokens") or 8)
        tokens = [WORDS[i % len(WORDS)] + " " for i in range(max(1, min(n, 64)))]
        if doc.get("stream"):
            self.set_header("Content-Type", "text/event-stream")
            for i, tok in enumerate(tokens):
                await asyncio.sleep(self.settings["delay"])
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": tok} if i == 0 else {"content": tok},
                            "finish_reason": None,
                        }
                    ],
                }
                self.write(f"data: {json.dumps(chunk)}\n\n")
                await self.flush()
            end = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            }
            self.finish(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n")
            return
        self.finish(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(tokens),
                    "total_tokens": 5 + len(tokens),
                },
            }
        )


class OpenAIModels(Base):
    def get(self) -> None:
        self.finish(
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": 0, "owned_by": "library"} for n in self.models
                ],
            }
        )


def make_app(models: dict[str, int], delay: float) -> web.Application:
    return web.Application(
        [
            (r"/", Root),
            (r"/api/tags", Tags),
            (r"/api/ps", Ps),
            (r"/api/version", Version),
            (r"/api/show", Show),
            (r"/api/generate", Generate),
            (r"/api/chat", Chat),
            (r"/api/embed", Embed),
            (r"/api/embeddings", Embeddings),
            (r"/v1/chat/completions", OpenAIChat),
            (r"/v1/models", OpenAIModels),
        ],
        models=models,
        delay=delay,
        loaded={},
        cancelled=[],
    )


async def serve(host: str, port: int, models: dict[str, int], delay: float, port_file: str | None) -> None:
    app = make_app(models, delay)
    server = app.listen(port, host)
    real_port = next(iter(server._sockets.values())).getsockname()[1]
    if port_file:
        with open(port_file + ".tmp", "w") as f:  # noqa: ASYNC230 - once, at start
            f.write(str(real_port))
        os.replace(port_file + ".tmp", port_file)
    print(f"ollama double listening on {host}:{real_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    host_env = os.environ.get("OLLAMA_HOST", "")
    env_host, _, env_port = host_env.rpartition(":") if host_env else ("", "", "")
    if not env_port.isdigit() or "/" in env_host:  # a URL (e.g. a kernel's zero-config value): ignore
        env_host, env_port = "", ""
    p.add_argument("--host", default=env_host or "127.0.0.1")
    p.add_argument("--port", type=int, default=int(env_port or 0))
    p.add_argument("--models", default="tiny:1b,small:3b")
    p.add_argument("--delay", type=float, default=0.01, help="seconds between streamed tokens")
    p.add_argument("--port-file", default=None)
    a = p.parse_args()
    sizes = {m: (i + 1) * 1_000_000_000 for i, m in enumerate(a.models.split(","))}
    asyncio.run(serve(a.host, a.port, sizes, a.delay, a.port_file))


if __name__ == "__main__":
    main()
