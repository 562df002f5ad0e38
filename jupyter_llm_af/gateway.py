"""A Slurm job's one door: forwards to the job's backend only requests that carry the job's secret.

Runs on the GPU node as ``python3 gateway.py`` (standard library only, Python 3.7+: the batch script
feeds this file to ``python3 -`` on stdin, so the node needs nothing of this package). The backend
listens on 127.0.0.1 only; the gateway listens on the port the job advertises and forwards a
request only if its :data:`SECRET_HEADER` equals the secret in ``--secret-file`` (written 0600 into
the service's state dir at submit time, read once here). Without it: 401 and the connection closes.

Everything else passes unchanged and promptly: the secret header is removed, then the response is
written on as its bytes arrive (no buffering, so streams keep their pace). Each client connection
is kept alive and has its own loopback connection to the backend, reused while it was idle less
than :data:`UPSTREAM_IDLE` (shorter than the backends' own keep-alive timeouts, llama-server's
and uvicorn's 5 s); a request that finds that connection closed before any answer byte is sent
again on a fresh one (small bodies are held for that; larger ones always get a fresh connection).
When the backend does not accept a connection, the client's connection is closed without an
answer, as the dead backend's own socket would.

    python3 gateway.py --listen 0.0.0.0:PORT --upstream 127.0.0.1:PORT --secret-file FILE
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import sys
import time
from typing import TYPE_CHECKING

SECRET_HEADER = "X-LLM-AF-Job-Secret"
_SECRET_NAME = SECRET_HEADER.lower().encode()
HEAD_LIMIT = 64 * 1024  # request/response head size; also the read buffer's limit
READ_SIZE = 64 * 1024
FIRST_REQUEST_TIMEOUT = 30.0  # a connection that has not shown the secret may not linger
IDLE_TIMEOUT = 300.0  # longer than clients keep idle pooled connections (aiohttp 15 s, httpx 5 s)
UPSTREAM_IDLE = 2.0  # reuse a backend connection idle at most this long (theirs close after ~5 s)
REPLAY_LIMIT = 1024 * 1024  # request bodies up to this size are held, to be sent again if needed
CRLF = b"\r\n"

if TYPE_CHECKING:  # annotations are never evaluated (the node's python3 may be 3.7)
    Headers = list[tuple[bytes, bytes]]


class BadMessage(Exception):
    """A request or response this gateway cannot frame safely."""


def parse_head(head: bytes) -> tuple[bytes, Headers]:
    """Start line and ``(name, value)`` pairs of an HTTP/1.x head (ending in an empty line)."""
    lines = head.rstrip(CRLF).split(CRLF)
    headers: Headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadMessage("obsolete line folding")
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip() != name:
            raise BadMessage("malformed header line")
        headers.append((name, value.strip()))
    return lines[0], headers


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def tokens(headers: Headers, name: bytes) -> list[bytes]:
    """Comma-separated tokens of every ``name`` header, lower-cased (Connection, Transfer-Encoding)."""
    return [t.strip().lower() for v in values(headers, name) for t in v.split(b",") if t.strip()]


def content_length(headers: Headers) -> int | None:
    found = {v.strip() for v in values(headers, b"content-length")}
    if not found:
        return None
    if len(found) > 1 or not all(v.isdigit() for v in found):
        raise BadMessage("bad Content-Length")
    return int(found.pop())


def render_head(start: bytes, headers: Headers) -> bytes:
    return start + CRLF + b"".join(n + b": " + v + CRLF for n, v in headers) + CRLF


class ChunkedEnd:
    """Finds where a chunked body ends in bytes passing through, without changing or holding them."""

    SIZE, DATA, TRAILER = range(3)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.remaining = 0  # DATA: bytes left of this chunk, its CRLF included
        self.line = b""

    def feed(self, data: bytes) -> int:
        """Index just past the body's end within ``data``, or -1 if the body goes on."""
        i, n = 0, len(data)
        while i < n:
            if self.state == self.DATA:
                take = min(self.remaining, n - i)
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = self.SIZE
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > HEAD_LIMIT:
                    raise BadMessage("chunk header too long")
                return -1
            text, self.line, i = (self.line + data[i:j]).rstrip(b"\r"), b"", j + 1
            if self.state == self.TRAILER:
                if not text:
                    return i
                continue
            try:
                size = int(text.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadMessage("bad chunk size") from None
            if size == 0:
                self.state = self.TRAILER
            else:
                self.state, self.remaining = self.DATA, size + 2
        return -1


async def _reply(writer: asyncio.StreamWriter, status: int, reason: str, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    writer.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
    )
    try:
        await writer.drain()
    except ConnectionError:
        pass


class _Upstream:
    """One loopback connection to the backend, owned by one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()

    def reusable(self) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and time.monotonic() - self.idle_since < UPSTREAM_IDLE
        )

    def close(self) -> None:
        self.writer.close()


class Gateway:
    """Forwards authorized requests from clients to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the job secret is too short")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.secret = secret

    def authorized(self, headers: Headers) -> bool:
        given = values(headers, _SECRET_NAME)
        return len(given) == 1 and hmac.compare_digest(given[0], self.secret)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests one after the other while it stays alive."""
        timeout = FIRST_REQUEST_TIMEOUT
        upstream: list[_Upstream] = []  # at most one: the connection kept for the next request
        try:
            while True:
                # a timer, not wait_for: that would cost a task (an event-loop turn) per request
                idle = asyncio.get_running_loop().call_later(timeout, writer.close)
                try:
                    head = await reader.readuntil(CRLF + CRLF)
                except asyncio.LimitOverrunError:
                    await _reply(writer, 431, "Request Header Fields Too Large", "request head too large")
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # closed, or idle too long (the timer closed it): nothing half-done
                finally:
                    idle.cancel()
                try:
                    start, headers = parse_head(head)
                    method, _target, version = start.split(b" ")
                except (BadMessage, ValueError):
                    await _reply(writer, 400, "Bad Request", "malformed request")
                    return
                if not self.authorized(headers):
                    await _reply(writer, 401, "Unauthorized", "this port only serves the LLM service")
                    return
                timeout = IDLE_TIMEOUT
                headers = [(n, v) for n, v in headers if n.lower() != _SECRET_NAME]
                if not await self.forward(method, start, version, headers, reader, writer, upstream):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, BadMessage):
            return  # one side broke the exchange off: so does the gateway
        except Exception as e:  # never let one connection take the gateway down
            print(f"gateway: {e!r}", file=sys.stderr, flush=True)
        finally:
            for kept in upstream:
                kept.close()
            writer.close()

    async def _connect(self) -> _Upstream:
        reader, writer = await asyncio.open_connection(
            self.upstream_host, self.upstream_port, limit=HEAD_LIMIT
        )
        return _Upstream(reader, writer)

    async def forward(
        self,
        method: bytes,
        start: bytes,
        version: bytes,
        headers: Headers,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kept: list[_Upstream],
    ) -> bool:
        """Forward one request and its response; True if the client connection may be reused.

        ``kept`` holds the backend connection of the previous request, if it may serve this one.
        """
        if method == b"CONNECT" or values(headers, b"upgrade"):
            await _reply(writer, 501, "Not Implemented", "no tunnels or upgrades")
            return False
        if b"100-continue" in tokens(headers, b"expect"):
            # answer it here: the backend's 100 would only arrive after we had sent the body
            headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunked = b"chunked" in tokens(headers, b"transfer-encoding")
        try:
            length = None if chunked else content_length(headers)
        except BadMessage:
            await _reply(writer, 400, "Bad Request", "bad Content-Length")
            return False
        connection = tokens(headers, b"connection")
        keep_alive = b"close" not in connection and (version != b"HTTP/1.0" or b"keep-alive" in connection)
        head = render_head(start, headers)
        body = b""
        replayable = not chunked and (length or 0) <= REPLAY_LIMIT
        if replayable and length:
            body = await reader.readexactly(length)
        up = kept.pop() if kept else None
        if up is not None and not (replayable and up.reusable()):
            up.close()
            up = None
        while True:
            fresh = up is None
            if up is None:
                try:
                    up = await self._connect()
                except OSError:
                    return False  # the backend is gone: close, as its own socket would have
            try:
                up.writer.write(head + body)
                if chunked:
                    await _copy_chunked_request(reader, up.writer)
                elif not replayable and length:
                    await _copy_exactly(reader, up.writer, length)
                await up.writer.drain()
                response_head, rest = await read_head(up.reader)
                break
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                up.close()
                up = None
                if fresh or isinstance(e, asyncio.IncompleteReadError) and e.partial:
                    return False  # a fresh connection failing is the backend failing
                # the kept connection was closed by the backend while idle: send it again, fresh
        try:
            reusable = await self._relay_response(method, response_head, rest, up.reader, writer)
        except BaseException:
            up.close()
            raise
        if reusable:
            up.idle_since = time.monotonic()
            kept.append(up)
        else:
            up.close()
        return reusable and keep_alive

    async def _relay_response(
        self,
        method: bytes,
        head: bytes,
        rest: bytes,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Write the response on as it arrives (``head`` and the bytes read after it, ``rest``, in one
        write: the client gets the first token with the head); True if both sides may go on."""
        while True:
            status_line, headers = parse_head(head)
            try:
                status = int(status_line[9:12])
            except ValueError:
                raise BadMessage("bad status line") from None
            if not 100 <= status < 200:
                break
            writer.write(head)  # informational: the real answer follows
            try:
                head, rest = await read_head(up_reader, rest)
            except asyncio.IncompleteReadError:
                return False
        connection = tokens(headers, b"connection")
        keep_alive = b"close" not in connection and (
            not status_line.startswith(b"HTTP/1.0") or b"keep-alive" in connection
        )
        if method == b"HEAD" or status in (204, 304):
            writer.write(head)
            await writer.drain()
            return keep_alive
        if b"chunked" in tokens(headers, b"transfer-encoding"):
            end = ChunkedEnd()
            writer.write(head + rest)
            await writer.drain()
            if rest and end.feed(rest) >= 0:
                return keep_alive
            while True:
                data = await up_reader.read(READ_SIZE)
                if not data:
                    return False  # cut off mid-body: the client sees it cut off too
                writer.write(data)
                await writer.drain()
                if end.feed(data) >= 0:
                    return keep_alive
        length = content_length(headers)
        if length is not None:
            if len(rest) > length:
                raise BadMessage("more bytes than Content-Length")
            writer.write(head + rest)
            await writer.drain()
            await _copy_exactly(up_reader, writer, length - len(rest))
            return keep_alive
        writer.write(head + rest)
        while True:  # delimited by the backend closing the connection
            await writer.drain()
            data = await up_reader.read(READ_SIZE)
            if not data:
                return False
            writer.write(data)


async def read_head(reader: asyncio.StreamReader, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """A message head and the bytes that came with it (``read`` calls, not ``readuntil``: the body
    bytes that arrived in the same packet go on with the head instead of in a second write)."""
    buf = buffered
    while True:
        end = buf.find(CRLF + CRLF)
        if end >= 0:
            return buf[: end + 4], buf[end + 4 :]
        if len(buf) > HEAD_LIMIT:
            raise BadMessage("response head too large")
        data = await reader.read(READ_SIZE)
        if not data:
            raise asyncio.IncompleteReadError(buf, None)
        buf += data


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        writer.write(data)
        await writer.drain()


async def _copy_chunked_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A chunked request body, read exactly to its end (the next request may follow it)."""
    while True:
        size_line = await reader.readuntil(CRLF)
        writer.write(size_line)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadMessage("bad chunk size") from None
        if size == 0:
            break
        await _copy_exactly(reader, writer, size + 2)
    while True:  # trailers, then the empty line
        line = await reader.readuntil(CRLF)
        writer.write(line)
        if line == CRLF:
            return


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def run(listen: str, upstream: str, secret: bytes) -> None:
    up_host, up_port = _host_port(upstream)
    gateway = Gateway(up_host, up_port, secret)
    host, port = _host_port(listen)
    server = await asyncio.start_server(gateway.serve, host, port, limit=HEAD_LIMIT)
    bound = ", ".join(str(s.getsockname()[:2]) for s in server.sockets)
    print(f"gateway listening on {bound}, forwarding to {up_host}:{up_port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on (the advertised port)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the backend (loopback)")
    parser.add_argument("--secret-file", required=True, help="file holding the job's secret (0600)")
    args = parser.parse_args(argv)
    try:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        print(f"gateway: cannot read the job secret: {e}", file=sys.stderr)
        return 1
    try:
        asyncio.run(run(args.listen, args.upstream, secret))
    except (OSError, ValueError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
