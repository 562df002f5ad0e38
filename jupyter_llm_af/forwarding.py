"""HTTP forwarding to the backend: a fixed route table, header hygiene, streaming.

Imports nothing from Jupyter. The handler layer decides *whether* a request may go upstream;
this module decides *what* goes: only allow-listed paths, only safe headers, never the users'
credentials, and a ``Host`` header the backend accepts (Ollama answers 403 to foreign hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from http.cookiejar import Cookie, CookieJar
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

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


class Upstream:
    """Pooled HTTP clients for backend traffic: aiohttp for the streaming pass-through (one write per
    socket read: about 3x the chunk rate of httpx here, see benchmarks/proxy_overhead.py), httpx for
    the small JSON requests of the translation layer."""

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
        self._session: aiohttp.ClientSession | None = None
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=60.0, pool=None),
            cookies=NoCookieJar(),  # one client for every user: never store a backend's cookie
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # never route backend traffic through a user's proxy settings
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()

    def session(self) -> aiohttp.ClientSession:
        # created lazily: an aiohttp session belongs to the running event loop
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # shared by all users: never store cookies
                trust_env=False,  # never route backend traffic through a user's proxy settings
            )
        return self._session

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        base_url: str,
        path: str,
        body: bytes | None,
        incoming_headers: Mapping[str, str],
        endpoint_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streamed backend response; connection failures become :class:`UpstreamError`
        (``retryable`` when nothing can have been answered yet)."""
        url, headers = self._target(base_url, path, incoming_headers)
        if endpoint_headers:
            headers.update(endpoint_headers)
        try:
            ctx = self.session().request(
                method, url, data=body or None, headers=headers, allow_redirects=False
            )
            resp = await ctx.__aenter__()
        except aiohttp.ClientConnectorError as e:
            raise UpstreamError(
                f"backend at {base_url} refused the connection ({e.os_error})", retryable=True
            ) from e
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            # a pooled keep-alive connection the backend had closed, or a backend that just died
            raise UpstreamError(f"backend at {base_url} closed the connection: {e}", retryable=True) from e
        except asyncio.TimeoutError as e:
            raise UpstreamError(f"backend at {base_url} timed out", 504) from e
        except aiohttp.ClientError as e:
            raise UpstreamError(f"backend at {base_url} failed: {e}") from e
        try:
            yield resp
        finally:
            resp.release()
            await ctx.__aexit__(None, None, None)

    def _target(
        self, base_url: str, path: str, incoming_headers: Mapping[str, str] | None
    ) -> tuple[str, dict[str, str]]:
        """URL and headers of a backend request: allow-listed headers, the backend's own Host."""
        headers = request_headers(incoming_headers or {}, self.extra_headers)
        headers["Host"] = backend_host_header(base_url)
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
