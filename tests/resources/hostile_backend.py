"""A backend that misbehaves on purpose, one fault per switch, and records every request it gets.

It speaks enough of both wire formats for the service to use it as an Ollama backend (pass-through:
every ``/api/*`` route answers a JSON echo of what arrived) or as an OpenAI-protocol backend
(``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` with SSE streaming, ``/v1/embeddings``,
as llama-server answers them; other paths 404 as llama-server's do). Faults:

* ``set_cookie``: every answer carries ``Set-Cookie: backend_session=<n>`` (a shared HTTP client that
  stores it would send it back on the next request, whoever makes it).
* ``idle_close``: a request that arrives on a keep-alive connection idle for longer than this many
  seconds is met with a close and no answer. That is the race a client loses when a backend
  closes idle connections: its request is already on the wire when the close arrives. (A close that
  arrives first is seen by the client's pool; only the race reaches the application.)
* ``die_after``: a streamed chat completion breaks off after this many SSE events (the connection is
  aborted: no end chunk, no ``[DONE]``).
* ``bad_input_500``: a chat completion whose message ``content`` is neither text nor a list of parts
  gets llama.cpp's answer to a JSON type error, as a 500.

Raw asyncio streams (no framework) so that a fault happens exactly where it is wanted. Usable in
process (:class:`HostileBackend`) or as a process::

    python -m tests.resources.hostile_backend --port 0 [--set-cookie] [--idle-close 1.0]
        [--die-after 3] [--bad-input-500] [--record FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

MODEL = "echo:1b"
WORDS = "The quick brown fox jumps over the lazy dog near the river bank today".split()
# llama.cpp's answer when a field of the request has the wrong JSON type (nlohmann::json)
TYPE_ERROR_500 = {
    "error": {
        "code": 500,
        "message": "[json.exception.type_error.302] type must be string, but is number",
        "type": "server_error",
    }
}


class Recorded(TypedDict):
    method: str
    target: str  # the request target as sent (path and query)
    headers: list[tuple[str, str]]  # as received, raw names, values decoded as latin-1
    body: str
    answered: bool  # False: dropped by the idle-close fault


@dataclass
class Faults:
    set_cookie: bool = False
    idle_close: float | None = None
    die_after: int | None = None
    bad_input_500: bool = False


@dataclass
class HostileBackend:
    faults: Faults = field(default_factory=Faults)
    record_file: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0
    dropped: int = 0  # requests met with a close (idle_close)
    _server: asyncio.base_events.Server | None = None
    _cookie_n: int = 0
    _head: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._connection, host, port, limit=1 << 24)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- one connection: keep-alive requests until the client or a fault closes it ------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        last_answer: float | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                method, target, headers = _parse_head(head)
                body = await _read_body(reader, headers)
                idle = None if last_answer is None else time.monotonic() - last_answer
                limit = self.faults.idle_close
                dropped = limit is not None and idle is not None and idle > limit
                self._record(method, target, headers, body, answered=not dropped)
                if dropped:
                    self.dropped += 1
                    return  # the close "crossed" the request: no answer at all
                keep_alive = await self._answer(writer, method, target, headers, body)
                last_answer = time.monotonic()
                if not keep_alive:
                    return
        except ConnectionError:
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _record(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, answered: bool
    ) -> None:
        rec = Recorded(
            method=method,
            target=target,
            headers=headers,
            body=body.decode("utf-8", errors="replace")[:2000],
            answered=answered,
        )
        self.requests.append(rec)
        if self.record_file:
            with open(self.record_file, "a") as f:  # noqa: ASYNC230 - a test double's small log
                f.write(json.dumps(rec) + "\n")

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> bool:
        path = target.split("?", 1)[0]
        self._head = method == "HEAD"  # headers only (a body would corrupt the next answer)
        echo = {"method": method, "path": target, "headers": dict(headers)}
        doc: Any = _json(body)
        if method in ("GET", "HEAD") and path == "/":
            await self._send(writer, 200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/tags":
            await self._send_json(writer, 200, {"models": [_ollama_model()], "echo": echo})
        elif path == "/api/version":
            await self._send_json(writer, 200, {"version": "0.12.6"})
        elif path == "/v1/models":
            await self._send_json(writer, 200, {"object": "list", "data": [_openai_model()]})
        elif path.startswith("/v1/models/"):
            await self._send_json(writer, 200, _openai_model())
        elif (
            path in ("/v1/chat/completions", "/v1/completions") and method == "POST" and isinstance(doc, dict)
        ):
            return await self._completion(writer, doc, echo, chat=path == "/v1/chat/completions")
        elif path == "/v1/embeddings" and method == "POST" and isinstance(doc, dict):
            await self._send_json(writer, 200, _embeddings(doc))
        elif not path.startswith("/api/"):
            # what llama-server answers for a path it lacks (e.g. /v1/messages: translated instead)
            await self._send_json(
                writer, 404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}
            )
        else:
            model = doc.get("model") if isinstance(doc, dict) else None
            answer = {
                "model": model or MODEL,
                "message": {"role": "assistant", "content": "echo"},
                "response": "echo",
                "done": True,
                "echo": echo,
            }
            await self._send_json(writer, 200, answer)
        return True

    async def _completion(self, writer: asyncio.StreamWriter, doc: dict, echo: dict, chat: bool) -> bool:
        """A chat completion (or a legacy text completion), whole or as SSE events."""
        required = "messages" if chat else "prompt"
        given = doc.get(required)
        if not given or not isinstance(given, (list, str) if not chat else list):
            missing = {"code": 400, "message": f"'{required}' is required", "type": "invalid_request_error"}
            await self._send_json(writer, 400, {"error": missing})
            return True
        if self.faults.bad_input_500 and _wrong_types(doc):
            await self._send_json(writer, 500, TYPE_ERROR_500)
            return True
        n = doc.get("max_tokens") or doc.get("max_completion_tokens") or 8
        n = max(1, min(int(n) if isinstance(n, int) else 8, 64))
        words = [WORDS[i % len(WORDS)] + " " for i in range(n)]
        model = str(doc.get("model") or MODEL)
        kind = "chat.completion" if chat else "text_completion"
        if doc.get("stream") is not True:
            text = "".join(words)
            answer = {
                "id": "chatcmpl-hostile",
                "object": kind,
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        **({"message": {"role": "assistant", "content": text}} if chat else {"text": text}),
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n},
                "echo": echo,
            }
            await self._send_json(writer, 200, answer)
            return True
        writer.write(self._status_line(200) + b"Content-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n" + self._cookie() + b"\r\n")
        for i, word in enumerate(words):
            if self.faults.die_after is not None and i >= self.faults.die_after:
                await writer.drain()
                writer.transport.abort()  # the backend "dies": no end chunk, no [DONE]
                return False
            piece = {"delta": {"content": word}} if chat else {"text": word}
            chunk = {
                "id": "chatcmpl-hostile",
                "object": kind + (".chunk" if chat else ""),
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, **piece, "finish_reason": None}],
            }
            _write_chunk(writer, f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
            await asyncio.sleep(0.01)
        last: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        end = {
            "id": "chatcmpl-hostile",
            "object": kind + (".chunk" if chat else ""),
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, **last, "finish_reason": "length"}],
        }
        _write_chunk(writer, f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # -- writing -------------------------------------------------------------------------
    def _status_line(self, status: int) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}[status]
        return f"HTTP/1.1 {status} {reason}\r\n".encode()

    def _cookie(self) -> bytes:
        if not self.faults.set_cookie:
            return b""
        self._cookie_n += 1
        return f"Set-Cookie: backend_session=s{self._cookie_n}; Path=/\r\n".encode()

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
        writer.write(
            self._status_line(status)
            + f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n".encode()
            + self._cookie()
            + b"\r\n"
            + (b"" if self._head else body)
        )
        await writer.drain()

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, doc: Any) -> None:
        await self._send(writer, status, json.dumps(doc).encode(), "application/json")


def _parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = []
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return method, target, headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    values = {k.lower(): v for k, v in headers}
    if values.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return body[:-2]
            body = body[:-2]
    length = values.get("content-length", "0")
    return await reader.readexactly(int(length)) if length.isdigit() and int(length) else b""


def _wrong_types(doc: dict) -> bool:
    """What llama.cpp's JSON reader rejects with a 500: a number where text or a list of parts
    belongs, a tool (or a tool's function) that is not an object."""
    contents = [m.get("content") for m in doc.get("messages") or [] if isinstance(m, dict)]
    tools = doc.get("tools") or []
    tools = tools if isinstance(tools, list) else [tools]
    return any(not isinstance(c, (str, list, type(None))) for c in contents) or any(
        not isinstance(t, dict) or not isinstance(t.get("function", {}), dict) for t in tools
    )


def _embeddings(doc: dict) -> dict[str, Any]:
    inputs = doc.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    return {
        "object": "list",
        "model": str(doc.get("model") or MODEL),
        "data": [{"object": "embedding", "index": i, "embedding": [0.5] * 8} for i in range(count)],
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):  # the service may forward an admin's body unparsed
        return None


def _ollama_model() -> dict[str, Any]:
    return {
        "name": MODEL,
        "model": MODEL,
        "modified_at": "2026-01-01T00:00:00Z",
        "size": 1_000_000_000,
        "digest": "0" * 64,
        "details": {"format": "gguf", "family": "echo", "parameter_size": "1B", "quantization_level": "Q4_0"},
    }


def _openai_model() -> dict[str, Any]:
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "hostile"}


async def _serve(args: argparse.Namespace) -> None:
    faults = Faults(args.set_cookie, args.idle_close, args.die_after, args.bad_input_500)
    backend = HostileBackend(faults, record_file=args.record)
    await backend.start(args.host, args.port)
    print(f"hostile backend listening on {args.host}:{backend.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await backend.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--set-cookie", action="store_true")
    p.add_argument("--idle-close", type=float, default=None)
    p.add_argument("--die-after", type=int, default=None)
    p.add_argument("--bad-input-500", action="store_true")
    p.add_argument("--record", default=None, help="append each request as a JSON line to this file")
    asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    main()
