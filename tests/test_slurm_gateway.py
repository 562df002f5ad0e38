"""The per-job gateway (``jupyter_llm_af/gateway.py``) in front of a real HTTP backend on loopback.

In-process (the gateway's own asyncio server) plus one run as a plain ``python3 -I gateway.py``
without this package, as on a GPU node. The real-cluster tests (``tests/test_slurm.py``) run it in
Slurm jobs in front of the Ollama double and llama-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from jupyter_llm_af import gateway
from jupyter_llm_af.gateway import SECRET_HEADER, ChunkedEnd, Gateway

SECRET = "s" * 43
GATEWAY_SOURCE = Path(gateway.__file__).read_bytes()


class Backend:
    """A loopback HTTP/1.1 backend: ``/stream`` sends chunks with pauses, anything else echoes."""

    def __init__(self) -> None:
        self.seen: list[dict] = []  # per request: method, path, headers, body
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []
        self.sent_at: list[float] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # kept-alive connections too
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)
        self.writers.clear()
        self.tasks.clear()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.append(task)
        drop_next = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                start, headers = gateway.parse_head(head)
                method, path, _ = start.decode().split(" ")
                names = {n.decode().lower(): v.decode() for n, v in headers}
                if "chunked" in names.get("transfer-encoding", ""):
                    body = b""
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        body += (await reader.readexactly(size + 2))[:-2]
                        if size == 0:
                            break
                else:
                    body = await reader.readexactly(int(names.get("content-length", "0")))
                self.seen.append({"method": method, "path": path, "headers": names, "body": body})
                if drop_next:  # closes, as a backend does with an idle connection, without answering
                    return
                drop_next = path == "/drop-next"
                if path.startswith("/stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
                    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
                    for i in range(5):
                        line = json.dumps({"i": i}).encode() + b"\n"
                        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                        await writer.drain()
                        self.sent_at.append(time.monotonic())
                        await asyncio.sleep(0.2)
                    writer.write(b"0\r\n\r\n")
                else:
                    doc = json.dumps({"path": path, "body": body.decode(), "headers": names}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(doc), doc))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


ACCEPTED: list[int] = []  # client connections the gateway accepted (per test)


@pytest_asyncio.fixture
async def door(backend: Backend) -> AsyncIterator[str]:
    gw = Gateway("127.0.0.1", backend.port, SECRET.encode())
    ACCEPTED.clear()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ACCEPTED.append(1)
        await gw.serve(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=gateway.HEAD_LIMIT)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


def ok() -> dict[str, str]:
    return {SECRET_HEADER: SECRET}


@pytest.mark.asyncio
async def test_without_the_secret_nothing_reaches_the_backend(backend: Backend, door: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        for headers in ({}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET[:-1]}):
            r = await http.post(door + "/api/chat", headers=headers, content=b'{"model": "x"}')
            assert r.status_code == 401 and r.json() == {"error": "this port only serves the LLM service"}
        # two secret headers (one right) are refused too
        r = await http.get(door + "/", headers=[(SECRET_HEADER, "wrong"), (SECRET_HEADER, SECRET)])
        assert r.status_code == 401
    assert backend.seen == [] and backend.connections == 0


@pytest.mark.asyncio
async def test_with_it_the_request_flows_and_the_secret_is_stripped(backend: Backend, door: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.post(
            door + "/v1/chat/completions?x=1",
            headers={**ok(), "Content-Type": "application/json", "X-Other": "kept"},
            content=b'{"model": "m"}',
        )
    assert r.status_code == 200
    doc = r.json()
    assert doc["path"] == "/v1/chat/completions?x=1" and doc["body"] == '{"model": "m"}'
    assert SECRET_HEADER.lower() not in doc["headers"] and doc["headers"]["x-other"] == "kept"
    assert all(SECRET.encode() not in repr(seen).encode() for seen in backend.seen)


@pytest.mark.asyncio
async def test_streams_pass_through_as_they_are_produced(backend: Backend, door: str) -> None:
    received: list[float] = []
    lines: list[dict] = []
    async with httpx.AsyncClient(trust_env=False) as http:
        async with http.stream("GET", door + "/stream", headers=ok()) as r:
            async for line in r.aiter_lines():
                if line:
                    received.append(time.monotonic())
                    lines.append(json.loads(line))
    assert lines == [{"i": i} for i in range(5)]
    delays = [got - sent for got, sent in zip(received, backend.sent_at, strict=True)]
    assert max(delays) < 0.05, f"chunks held back: {delays}"


@pytest.mark.asyncio
async def test_keep_alive_and_chunked_request_bodies(backend: Backend, door: str) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"a": ', b"1}"):
            yield part

    async with httpx.AsyncClient(trust_env=False, headers=ok()) as http:
        first = await http.post(door + "/echo", content=body())  # no length: chunked
        second = await http.get(door + "/again")
        streamed = await http.get(door + "/stream")
        third = await http.get(door + "/last")
    assert first.json()["body"] == '{"a": 1}' and second.json()["path"] == "/again"
    assert streamed.text.count("\n") == 5 and third.json()["path"] == "/last"
    # one client connection kept alive, and one backend connection behind it
    assert len(ACCEPTED) == 1 and backend.connections == 1


@pytest.mark.asyncio
async def test_a_backend_connection_closed_under_a_request_is_retried_fresh(
    backend: Backend, door: str
) -> None:
    async with httpx.AsyncClient(trust_env=False, headers=ok()) as http:
        assert (await http.get(door + "/drop-next")).status_code == 200
        r = await http.post(door + "/after", content=b'{"messages": []}')  # lands on the dropped one
        assert r.status_code == 200 and r.json()["body"] == '{"messages": []}'
    assert [seen["path"] for seen in backend.seen] == ["/drop-next", "/after", "/after"]
    assert backend.connections == 2 and len(ACCEPTED) == 1


@pytest.mark.asyncio
async def test_idle_backend_connections_are_not_reused(
    backend: Backend, door: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "UPSTREAM_IDLE", 0.0)  # older than the backend's keep-alive timeout
    async with httpx.AsyncClient(trust_env=False, headers=ok()) as http:
        for i in range(3):
            assert (await http.get(door + f"/{i}")).status_code == 200
    assert backend.connections == 3 and len(ACCEPTED) == 1


@pytest.mark.asyncio
async def test_a_dead_backend_closes_the_connection_like_its_own_socket(backend: Backend, door: str) -> None:
    await backend.stop()
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(door + "/", headers=ok())
    await backend.start()  # the fixture stops it again


def test_chunked_end_finds_the_end_in_any_split() -> None:
    body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n"
    for cut in range(1, len(body)):
        end = ChunkedEnd()
        assert end.feed(body[:cut]) == -1
        assert end.feed(body[cut:] + b"EXTRA") == len(body) - cut
    assert ChunkedEnd().feed(b"0\r\n\r\n") == 5


@pytest.mark.asyncio
async def test_runs_as_a_plain_script_without_the_package(backend: Backend, tmp_path: Path) -> None:
    """As on a GPU node: ``python3 -I -`` (no site-packages, no cwd on sys.path) fed the file."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    listen = free_port()
    argv = ["--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{backend.port}"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-",
        *argv,
        "--secret-file",
        str(secret_file),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(GATEWAY_SOURCE)
        proc.stdin.close()
        started = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert started.startswith(f"gateway listening on ('127.0.0.1', {listen})"), started
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.get(f"http://127.0.0.1:{listen}/hello", headers=ok())
            assert r.status_code == 200 and r.json()["path"] == "/hello"
            assert (await http.get(f"http://127.0.0.1:{listen}/hello")).status_code == 401
    finally:
        proc.terminate()
        await proc.wait()


def test_a_missing_secret_file_stops_it_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            gateway.__file__,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
            "--secret-file",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "gateway: cannot read the job secret" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_a_silent_connection_is_closed(door: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "FIRST_REQUEST_TIMEOUT", 0.2)  # read when the connection arrives
    host, port = door.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the gateway, nothing sent
    assert 0.15 < time.monotonic() - started < 2
    writer.close()
