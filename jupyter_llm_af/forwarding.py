"""HTTP forwarding to the backend: a fixed route table, header hygiene, streaming.

Imports nothing from Jupyter. The handler layer decides *whether* a request may go upstream;
this module decides *what* goes: only allow-listed paths, only safe headers, never the users'
credentials, and a ``Host`` header the backend accepts (Ollama answers 403 to foreign hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from http.cookiejar import Cookie, CookieJar
from typing import Any
from urllib.parse import urlsplit

import httpx
from multidict import CIMultiDict

from .errors import UpstreamError

# Which paths a client may reach on the backend is the route table's business
# (routes.backend_target); this module only sends what it is given.

# Request headers passed to the backend. An allow-list: cookies, Authorization, X-XSRFToken,
# Forwarded/X-Forwarded-* and hop-by-hop headers never reach it.
_FORWARD_REQUEST_HEADERS = {"content-type", "accept", "user-agent", "openai-organization", "openai-project"}
# Response headers passed back to the client (hop-by-hop and length/encoding are ours to set).
_FORWARD_RESPONSE_HEADERS = {"content-type", "retry-after", "x-request-id", "openai-processing-ms"}


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


def request_headers(incoming: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """Headers for the backend request: allow-listed ones (printable ASCII only: anything else is
    a client's mistake or an attack, and would not encode), the site's extra ones, identity
    encoding."""
    headers = {k: v for k, v in incoming.items() if k.lower() in _FORWARD_REQUEST_HEADERS and _printable(v)}
    headers.update(extra)
    # We stream raw bytes through; a compressed body would need its Content-Encoding kept in sync.
    headers["Accept-Encoding"] = "identity"
    return headers


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in upstream.items() if k.lower() in _FORWARD_RESPONSE_HEADERS}


def backend_host_header(base_url: str) -> str:
    """A Host header the backend accepts: Ollama only serves loopback/its own names by default."""
    parts = urlsplit(base_url)
    return parts.netloc


class NoCookieJar(CookieJar):
    """A jar that never keeps a cookie: the clients are shared by every user, so a backend's
    ``Set-Cookie`` for one must never be sent back for another. (Passed to httpx as a jar: an
    ``httpx.Cookies`` wrapper would be copied into a default jar, policy and all lost.)"""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: Cookie) -> None:
        return None


# -- the streaming client -----------------------------------------------------------------------
# The pass-through relays every answer, so its client is the hot path: a small HTTP/1.1 client on
# asyncio streams that hands over everything one socket read brought (chunk framing undone in one
# pass), instead of a general client's per-HTTP-chunk bookkeeping (aiohttp: four Python calls per
# chunk, ~20 % of the service's CPU on a token stream; see benchmarks/README.md, issue 12).
HEAD_LIMIT = 64 * 1024  # a response head larger than this is not a backend we can talk to
READ_SIZE = 64 * 1024
KEEPALIVE_S = 15.0  # reuse an idle backend connection this long (aiohttp's default)
MAX_IDLE_PER_BACKEND = 64


class BackendBroke(Exception):
    """The backend's answer broke off or could not be read (after its head: never retried)."""


class _Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        # a close the backend sent while the connection was idle is seen here (EOF); a close
        # that crosses our request on the wire is the retry's business
        return (
            not self.reader.at_eof() and not self.writer.is_closing() and now - self.idle_since < KEEPALIVE_S
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Pool:
    """Idle keep-alive connections per backend (scheme, host, port)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}

    def take(self, key: tuple[str, str, int]) -> _Conn | None:
        conns = self.idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def give(self, key: tuple[str, str, int], conn: _Conn) -> None:
        conns = self.idle.setdefault(key, [])
        if len(conns) >= MAX_IDLE_PER_BACKEND:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


class _Dechunker:
    """Undoes chunked transfer coding over bytes split anywhere; ``feed`` returns the data of all
    chunks (or parts of chunks) in what it is given, in one piece."""

    __slots__ = ("left", "skip", "line", "trailer", "done")

    def __init__(self) -> None:
        self.left = 0  # bytes of chunk data still to come
        self.skip = 0  # bytes of the CRLF after chunk data still to drop
        self.line = b""  # an incomplete size (or trailer) line
        self.trailer = False
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(body data, bytes after the end of the body)."""
        out: list[bytes] = []
        i, n = 0, len(data)
        find = data.find
        while i < n:
            if not (self.left or self.skip or self.line or self.trailer):
                # the common case, a whole chunk (size line, data, CRLF) in what was read: one
                # find, one int, one slice (a token stream is ~100 chunks per read at full speed)
                j = find(b"\r\n", i)
                if j > i:
                    try:
                        size = int(data[i:j], 16)
                    except ValueError:
                        size = -1  # extensions, or garbage: the general path below decides
                    end = j + 2 + size
                    if size > 0 and end + 2 <= n:
                        out.append(data[j + 2 : end])
                        i = end + 2
                        continue
            if self.left:
                take = min(self.left, n - i)
                out.append(data[i : i + take])
                i += take
                self.left -= take
                if not self.left:
                    self.skip = 2
                continue
            if self.skip:
                take = min(self.skip, n - i)
                i += take
                self.skip -= take
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > 4096:
                    raise BackendBroke("chunk header too long")
                break
            text = data[i:j]
            if self.line:
                text, self.line = self.line + text, b""
            i = j + 1
            text = text.rstrip(b"\r")
            if self.trailer:
                if not text:
                    self.done = True
                    return b"".join(out), data[i:]
                continue
            try:
                size = int(text.split(b";", 1)[0], 16)
            except ValueError:
                raise BackendBroke("bad chunk size") from None
            if size < 0:
                raise BackendBroke("bad chunk size")
            if size == 0:
                self.trailer = True
            else:
                self.left = size
        return b"".join(out), b""


class BackendResponse:
    """A backend's answer: status, headers, and its body as it arrives (:meth:`iter_any`) or whole
    (:meth:`read`). The connection goes back to the pool only when the body was read to its end."""

    def __init__(
        self,
        status: int,
        headers: CIMultiDict[str],
        conn: _Conn,
        rest: bytes,
        framing: str,
        length: int,
        keep_alive: bool,
        read_timeout: float,
    ):
        self.status = status
        self.headers = headers
        self._conn: _Conn | None = conn
        self._rest = rest  # body bytes that came with the head
        self._framing = framing  # "chunked", "length", "eof" or "none"
        self._left = length  # "length": bytes still to come
        self._dechunk = _Dechunker() if framing == "chunked" else None
        self._keep_alive = keep_alive
        self._read_timeout = read_timeout
        self.complete = framing == "none" or (framing == "length" and length == 0)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body, one piece per socket read (never empty pieces)."""
        data, self._rest = self._rest, b""
        while not self.complete:
            if not data:
                data = await self._read()
                if not data:
                    if self._framing == "eof":
                        self.complete = True
                        break
                    raise BackendBroke("the backend closed the connection mid-answer")
            piece = self._take(data)
            data = b""
            if piece:
                yield piece

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.iter_any()])

    def _take(self, data: bytes) -> bytes:
        if self._dechunk is not None:
            piece, extra = self._dechunk.feed(data)
            if self._dechunk.done:
                self.complete = True
                if extra:  # bytes beyond the answer: the connection is out of step
                    self._keep_alive = False
            return piece
        if self._framing == "length":
            if len(data) >= self._left:
                if len(data) > self._left:
                    self._keep_alive = False
                data, self._left = data[: self._left], 0
                self.complete = True
            else:
                self._left -= len(data)
        return data

    async def _read(self) -> bytes:
        assert self._conn is not None
        try:
            return await _read_within(self._conn, self._read_timeout)
        except asyncio.TimeoutError:
            raise BackendBroke("the backend sent nothing for too long") from None
        except OSError as e:
            raise BackendBroke(f"the backend connection failed ({type(e).__name__})") from None

    def release(self, pool: _Pool, key: tuple[str, str, int]) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.complete and self._keep_alive and not self._rest:
            pool.give(key, conn)
        else:  # a stream the client left (or a broken one): closing it stops the backend's work
            conn.close()


async def _read_within(conn: _Conn, timeout: float) -> bytes:
    """One read of what the backend sent, ``asyncio.TimeoutError`` after ``timeout`` seconds of
    silence (a timer that aborts the connection: no task per read, as ``wait_for`` costs)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        conn.writer.transport.abort()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        data = await conn.reader.read(READ_SIZE)
    finally:
        timer.cancel()
    if expired:
        raise asyncio.TimeoutError
    return data


def _parse_head(head: bytes) -> tuple[int, bytes, CIMultiDict[str]]:
    lines = head.split(b"\r\n")
    start = lines[0]
    if not start.startswith(b"HTTP/1.") or len(start) < 12:
        raise BackendBroke("the backend's answer is not HTTP/1.x")
    try:
        status = int(start[9:12])
    except ValueError:
        raise BackendBroke("bad status line from the backend") from None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip() != name:
            raise BackendBroke("malformed header line from the backend")
        headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
    return status, start[:8], headers


def _framing(method: str, status: int, version: bytes, headers: CIMultiDict[str]) -> tuple[str, int, bool]:
    """How the body is delimited ("chunked", "length" + its length, "eof", "none"), and whether
    the connection may be reused after it."""
    connection = ",".join(headers.getall("Connection", [])).lower()
    keep_alive = "close" not in connection and (version != b"HTTP/1.0" or "keep-alive" in connection)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return "none", 0, keep_alive
    if "chunked" in ",".join(headers.getall("Transfer-Encoding", [])).lower():
        return "chunked", 0, keep_alive
    lengths = {v.strip() for v in headers.getall("Content-Length", [])}
    if lengths:
        value = lengths.pop()
        if lengths or not value.isdigit():
            raise BackendBroke("bad Content-Length from the backend")
        return "length", int(value), keep_alive
    return "eof", 0, False


def _encode_head(method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    for k, v in headers.items():
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
            raise UpstreamError(f"invalid header for the backend: {k!r}")
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH", "DELETE"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Stale(Exception):
    """The connection ended before any byte of an answer (a stale keep-alive connection, or a
    backend that just died)."""


class Upstream:
    """HTTP clients for backend traffic: our own small streaming client for the pass-through (the
    hot path, see above), httpx for the small JSON requests of the translation layer."""

    def __init__(
        self,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        extra_headers: Mapping[str, str] | None = None,
    ):
        self.extra_headers = dict(extra_headers or {})
        self.endpoint_headers: dict[str, dict[str, str]] = {}
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pool = _Pool()
        self._parsed: dict[str, tuple[tuple[str, str, int], str]] = {}
        self._hosts: dict[str, str] = {}  # base URL -> its Host header
        self._ssl: ssl.SSLContext | None = None
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=60.0, pool=None),
            cookies=NoCookieJar(),  # one client for every user: never store a backend's cookie
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # never route backend traffic through a user's proxy settings
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        self._pool.close()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes | None,
        incoming_headers: Mapping[str, str],
        endpoint_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[BackendResponse]:
        """A streamed backend response; failures before its head become :class:`UpstreamError`
        (``retryable``: nothing can have been answered yet), after it :class:`BackendBroke`.
        Cookies are never kept (there is no jar), redirects never followed, proxies never used."""
        _, headers = self._target(base_url, path, incoming_headers)
        if endpoint_headers:
            headers.update(endpoint_headers)
        key, prefix = self._where(base_url)
        headers.setdefault("Accept", "*/*")
        request = _encode_head(method, prefix + path, headers, body) + (body or b"")
        resp = await self._send(key, base_url, method, request)
        try:
            yield resp
        finally:
            resp.release(self._pool, key)

    def _where(self, base_url: str) -> tuple[tuple[str, str, int], str]:
        """(scheme, host, port) and path prefix of a backend URL (parsed once per URL)."""
        where = self._parsed.get(base_url)
        if where is None:
            parts = urlsplit(base_url)
            scheme = parts.scheme.lower()
            try:
                port = parts.port or (443 if scheme == "https" else 80)
            except ValueError:
                port = 0
            if scheme not in ("http", "https") or not parts.hostname or not port or parts.query:
                raise UpstreamError(f"backend URL {base_url} is not http(s)://host[:port][/path]")
            if len(self._parsed) > 256:
                self._parsed.clear()
            where = self._parsed[base_url] = ((scheme, parts.hostname, port), parts.path.rstrip("/"))
        return where

    async def _send(
        self, key: tuple[str, str, int], base_url: str, method: str, request: bytes
    ) -> BackendResponse:
        conn = self._pool.take(key)
        if conn is not None:
            try:
                return await self._exchange(conn, base_url, method, request)
            except _Stale:
                conn.close()  # the backend closed it as we sent: once more on a new connection
            except BaseException:
                conn.close()
                raise
        conn = await self._connect(key, base_url)
        try:
            return await self._exchange(conn, base_url, method, request)
        except _Stale as e:
            conn.close()
            raise UpstreamError(
                f"backend at {base_url} closed the connection ({e})", retryable=True
            ) from None
        except BaseException:
            conn.close()
            raise

    async def _connect(self, key: tuple[str, str, int], base_url: str) -> _Conn:
        scheme, host, port = key
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=tls, limit=HEAD_LIMIT), self.connect_timeout
            )
        except asyncio.TimeoutError as e:
            raise UpstreamError(f"backend at {base_url} timed out (connecting)", 504) from e
        except (OSError, ssl.SSLError) as e:
            raise UpstreamError(f"backend at {base_url} refused the connection ({e})", retryable=True) from e
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, base_url: str, method: str, request: bytes) -> BackendResponse:
        """Send the request, read the head (``_Stale`` if the connection ends before any byte of
        an answer); 1xx answers are skipped."""
        try:
            conn.writer.write(request)
            if len(request) > READ_SIZE:
                await conn.writer.drain()
            buf = b""
            while True:
                data = await _read_within(conn, self.read_timeout)
                if not data:
                    if buf:
                        raise BackendBroke("the backend closed the connection inside its answer's head")
                    raise _Stale("no answer")
                buf += data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > HEAD_LIMIT:
                        raise BackendBroke("the backend's answer head is too large")
                    continue
                status, version, headers = _parse_head(buf[:end])
                buf = buf[end + 4 :]
                if 100 <= status < 200 and status != 101:
                    continue  # informational (100 Continue): the answer follows
                framing, length, keep_alive = _framing(method, status, version, headers)
                return BackendResponse(
                    status, headers, conn, buf, framing, length, keep_alive, self.read_timeout
                )
        except asyncio.TimeoutError:
            raise UpstreamError(f"backend at {base_url} timed out", 504) from None
        except BackendBroke as e:
            raise UpstreamError(f"backend at {base_url} failed: {e}") from None
        except (ConnectionError, OSError) as e:
            raise _Stale(type(e).__name__) from None

    def _target(
        self, base_url: str, path: str, incoming_headers: Mapping[str, str] | None
    ) -> tuple[str, dict[str, str]]:
        """URL and headers of a backend request: allow-listed headers, the backend's own Host."""
        headers = request_headers(incoming_headers or {}, self.extra_headers)
        host = self._hosts.get(base_url)
        if host is None:
            if len(self._hosts) > 256:  # many ended jobs' URLs
                self._hosts.clear()
            host = self._hosts[base_url] = backend_host_header(base_url)
        headers["Host"] = host
        own = self.endpoint_headers.get(base_url)
        if own:  # e.g. a Slurm job's gateway secret, for every request to that job
            headers.update(own)
        return base_url.rstrip("/") + path, headers

    def remember_endpoint(self, url: str, headers: Mapping[str, str]) -> None:
        """Headers every request to ``url`` must carry (translation and state calls included)."""
        if headers:
            if len(self.endpoint_headers) > 64:  # ended jobs: forget the oldest
                self.endpoint_headers.pop(next(iter(self.endpoint_headers)))
            self.endpoint_headers[url] = dict(headers)

    def build_request(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes | None = None,
        incoming_headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        url, headers = self._target(base_url, path, incoming_headers)
        return self.client.build_request(method, url, content=body if body else None, headers=headers)

    async def send(self, request: httpx.Request, stream: bool = True) -> httpx.Response:
        """Send; connection problems become :class:`UpstreamError` naming what is down."""
        try:
            return await self.client.send(request, stream=stream)
        except httpx.ConnectError as e:
            raise UpstreamError(
                f"backend at {_where(request)} refused the connection ({e})", retryable=True
            ) from e
        except (httpx.RemoteProtocolError, httpx.ReadError) as e:
            # "Server disconnected without sending a response": a stale pooled connection
            raise UpstreamError(
                f"backend at {_where(request)} closed the connection ({e})", retryable=True
            ) from e
        except httpx.TimeoutException as e:
            raise UpstreamError(f"backend at {_where(request)} timed out ({type(e).__name__})", 504) from e
        except httpx.HTTPError as e:
            raise UpstreamError(f"backend at {_where(request)} failed: {e}") from e

    async def get_json(self, base_url: str, path: str, timeout: float | None = None) -> object:
        """GET a JSON document from the backend (for translation and state)."""
        req = self.build_request("GET", base_url, path)
        if timeout is not None:
            req.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        resp = await self.send(req, stream=False)
        if resp.status_code >= 400:
            raise UpstreamError(f"backend answered {resp.status_code} to GET {path}: {resp.text[:200]}", 502)
        return resp.json()


def _where(request: httpx.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode()}"
