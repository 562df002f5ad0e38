"""Property-based input tests over the route table (issue 14), with ``hypothesis``.

Random methods, paths, headers and bodies, driven (1) in process through
``LLMCore.pipeline.handle`` for each backend protocol, and (2) over HTTP against the real standalone
service, both in front of ``tests/resources/hostile_backend.py`` (no faults: it answers every request
properly and records what reached it). Whatever the input:

* never a 5xx from the service itself (the backend is up the whole time; 501 "not supported" is an
  answer, not a failure),
* never an HTML page,
* never a traceback (in process: nothing but ``ServiceError`` escapes the pipeline; the logs hold
  no exception),
* nothing outside the allow-lists reaches the backend (paths from the route table and the
  translation's own targets; only allow-listed headers, printable ASCII),
* never a token in a log line.

Bounded: 200 examples per protocol in process, 50 over HTTP; each test prints a one-line summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_llm_af.config import LLMService
from jupyter_llm_af.errors import ServiceError, render_error
from jupyter_llm_af.pipeline import Identity, Request
from jupyter_llm_af.routes import BLOB_DIGEST, MODEL_ID, ROUTES, Route, allowed_backend_paths
from jupyter_llm_af.service import LLMCore

from .conftest import TOKEN, Proc, start_jupyter_server, start_standalone
from .resources.hostile_backend import MODEL, HostileBackend
from .test_hostile import full_log, parse_response, raw_exchange, recorded, start_hostile, url_host

SECRET = "sk-secret-" + os.urandom(8).hex()  # a credential a client sends: must never leak

# Paths the service itself may ask of a backend besides the routes' own (translation targets,
# capability probes, health checks).
TRANSLATION_PATHS = frozenset(
    {
        "/",
        "/health",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/props",
        "/tokenize",
        "/detokenize",
        "/infill",
        "/models/load",
        "/models/unload",
    }
)
ALLOWED_PATHS = allowed_backend_paths() | TRANSLATION_PATHS
PARAM_PATHS = (
    re.compile(r"^/v1/models/[A-Za-z0-9][A-Za-z0-9._:@+%-]*$"),
    re.compile(r"^/api/blobs/sha256[:-][0-9a-f]{64}$"),
)
# Headers a backend request may carry: the forwarding allow-list plus what the HTTP clients add.
ALLOWED_HEADERS = frozenset(
    {
        "content-type",
        "accept",
        "user-agent",
        "openai-organization",
        "openai-project",
        "host",
        "content-length",
        "accept-encoding",
        "connection",
        "transfer-encoding",
    }
)


def check_backend_saw(
    records: list[dict[str, Any]], backend_host: str, secrets: tuple[str, ...] = (SECRET, TOKEN)
) -> None:
    for rec in records:
        hosts = [v for k, v in rec["headers"] if k.lower() == "host"]
        assert hosts == [backend_host], (rec["target"], hosts)  # never the client's Host
        path, _, query = rec["target"].partition("?")
        assert path in ALLOWED_PATHS or any(p.match(path) for p in PARAM_PATHS), rec["target"]
        assert query in ("", f"model={MODEL}"), rec["target"]
        for name, value in rec["headers"]:
            assert name.lower() in ALLOWED_HEADERS, (rec["target"], name, value)
            assert value.isascii() and value.isprintable(), (rec["target"], name, value)
            assert not any(s in value for s in secrets), (rec["target"], name)
        if rec["target"].startswith("/api/blobs/"):
            assert BLOB_DIGEST.match(rec["target"].split("/")[-1])


# -- strategies -------------------------------------------------------------------------------------
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
any_json = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
model_name = st.sampled_from([MODEL, "nope:1b", "", "echo", "../../etc", "a" * 300]) | st.text(max_size=20)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | any_json,
        "content": st.text(max_size=30)
        | any_json
        | st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["text", "image", "image_url", "tool_result", "input_text"]),
                    "text": st.text(max_size=10) | any_json,
                }
            )
        ),
        "images": st.lists(st.text(max_size=12) | any_json, max_size=2) | any_json,
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "function": st.fixed_dictionaries(
                        {}, optional={"name": st.text(max_size=8) | any_json, "arguments": any_json}
                    )
                },
            )
            | any_json,
            max_size=2,
        )
        | any_json,
        "tool_call_id": st.text(max_size=8) | any_json,
    },
)
FIELDS = {
    "model": model_name | any_json,
    "messages": st.lists(message | any_json, max_size=3) | any_json,
    "stream": st.booleans() | any_json,
    "options": st.dictionaries(
        st.sampled_from(["num_predict", "temperature", "stop", "seed", "top_k", "num_ctx"]),
        any_json,
        max_size=3,
    )
    | any_json,
    "prompt": st.text(max_size=30) | any_json,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=10) | message, max_size=3) | any_json,
    "max_tokens": st.integers(-5, 100) | any_json,
    "tools": st.lists(
        st.fixed_dictionaries({"type": st.just("function"), "function": any_json}) | any_json, max_size=2
    )
    | any_json,
    "images": any_json,
    "format": st.sampled_from(["json", ""]) | any_json,
    "think": any_json,
    "keep_alive": st.sampled_from(["5m", 0, -1, "0"]) | any_json,
    "system": st.text(max_size=20) | any_json,
    "name": model_name,
    "raw": any_json,
    "suffix": any_json,
    "tool_choice": any_json,
    "stop": any_json,
}
structured_body = st.fixed_dictionaries({}, optional=FIELDS).map(lambda d: json.dumps(d).encode())
body_bytes = st.one_of(
    st.just(b""),
    structured_body,
    structured_body,
    structured_body,
    any_json.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda n: b'{"model":"echo:1b","x":' + b"[" * n + b"]" * n + b"}"),
)
# Credentials go only in credential headers (a client's secret in, say, its User-Agent would be
# forwarded as sent: that is the allow-list working, not a leak).
CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-Api-Key", "Proxy-Authorization", "X-XSRFToken")
credential_value = st.sampled_from([SECRET, f"Bearer {SECRET}", f"token {SECRET}", f"session={SECRET}"])
header_names = st.sampled_from(
    [
        "Content-Type",
        "Accept",
        "User-Agent",
        "OpenAI-Organization",
        "OpenAI-Project",
        "X-Forwarded-For",
        "Forwarded",
        "Host",
        "Connection",
        "Transfer-Encoding",
        "Content-Length",
        "Upgrade",
        "TE",
        "X-Real-IP",
        "Anthropic-Version",
    ]
) | st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
    lambda n: n.lower() not in {c.lower() for c in CREDENTIAL_HEADERS}
)
header_value = st.sampled_from(["application/json", "text/html", "close", "keep-alive", "chunked"]) | st.text(
    max_size=30
)
headers_st = st.builds(
    lambda creds, others: {**others, **creds},
    st.dictionaries(st.sampled_from(CREDENTIAL_HEADERS), credential_value, max_size=3),
    st.dictionaries(header_names, header_value, max_size=5),
)


def route_arg(route: Route) -> st.SearchStrategy[str | None]:
    if "{}" not in route.path:
        return st.none()
    if route.path == "/backend/{}":
        return st.sampled_from(["start", "stop"])
    hostile = st.sampled_from(
        [
            "..",
            "../api/tags",
            "..%2f..%2fapi",
            "http://evil.example/x",
            "%2F%2Fevil",
            "a/../../b",
            "sha256-" + "0" * 64,
        ]
    )
    if route.param is BLOB_DIGEST:
        return st.sampled_from(["sha256-" + "a" * 64, "sha256:" + "0" * 64]) | hostile | st.text(max_size=70)
    return (
        st.from_regex(MODEL_ID, fullmatch=True).map(lambda s: s[:40])
        | hostile
        | st.text(min_size=1, max_size=20)
    )


@st.composite
def pipeline_requests(draw: st.DrawFn) -> Request:
    route = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from(sorted(route.methods)))
    return Request(
        route=route,
        method="GET" if method == "HEAD" else method,  # as the handler passes it
        identity=Identity(draw(st.sampled_from(["alice", "bob", "admin"])), admin=draw(st.booleans())),
        body=draw(body_bytes) if method in ("POST", "PUT", "DELETE") else b"",
        headers=draw(headers_st),
        arg=draw(route_arg(route)),
    )


# -- in process ---------------------------------------------------------------------------------------
class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class InProcess:
    """A hostile backend and one LLMCore per protocol, on an event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = HostileBackend()
        self.run(self.backend.start())
        self.cores = {p: self.run(self._core(p)) for p in ("ollama", "openai")}

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _core(self, protocol: str) -> LLMCore:
        cfg = LLMService(
            backend="upstream",
            upstream_url=self.backend.url,
            backend_protocol=protocol,
            allow_model_management=True,  # so /api/pull etc. reach the forwarding step too
            admin_users=["admin"],
            max_wait=5.0,
        )
        core = LLMCore(cfg)
        await core.start()
        return core

    async def handle(self, core: LLMCore, req: Request) -> tuple[int, str, bytes]:
        """Status, content type and body as the handler would write them."""
        try:
            reply = await core.pipeline.handle(req)
        except ServiceError as e:
            status, headers, body = render_error(req.route.api.value, e)
            return status, headers["Content-Type"], body
        body = reply.body
        if reply.stream is not None:
            chunks = []
            try:
                async for chunk in reply.stream:
                    chunks.append(chunk)
            finally:
                await reply.stream.aclose()  # type: ignore[attr-defined]
            body = b"".join(chunks)
        return reply.status, reply.headers.get("Content-Type", ""), body

    def close(self) -> None:
        for core in self.cores.values():
            with contextlib.suppress(Exception):
                self.run(core.stop())
        self.run(self.backend.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def in_process() -> Iterator[tuple[InProcess, LogCapture]]:
    capture = LogCapture()
    root, ours = logging.getLogger(), logging.getLogger("jupyter_llm_af")
    old = (root.level, ours.level)
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.DEBUG)
    harness = InProcess()
    try:
        yield harness, capture
    finally:
        harness.close()
        root.removeHandler(capture)
        root.setLevel(old[0])
        ours.setLevel(old[1])


def is_html(ctype: str, body: bytes) -> bool:
    return "html" in ctype.lower() or body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))


def check_logs(records: list[logging.LogRecord]) -> None:
    for r in records:
        text = r.getMessage()
        assert r.exc_info is None and "Traceback" not in text, (r.name, text, r.exc_info)
        assert SECRET not in text and TOKEN not in text, (r.name, text)


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_pipeline_never_fails_on_random_input(in_process, protocol):
    harness, capture = in_process
    core = harness.cores[protocol]
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    @settings(
        max_examples=int(os.environ.get("LLM_AF_PROPERTY_EXAMPLES", "200")),
        deadline=10_000,  # ms: one example is milliseconds; this only bounds a hang
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    @given(req=pipeline_requests())
    def one(req: Request) -> None:
        seen_before, logs_before = len(harness.backend.requests), len(capture.records)
        try:
            status, ctype, body = harness.run(harness.handle(core, req))
        except Exception as e:  # noqa: BLE001 - what escapes is the finding
            failures.append(f"{req.method} {req.service_path}: {type(e).__name__}: {e}")
            raise
        statuses[status] += 1
        assert status < 500 or status == 501, (
            req.method,
            req.service_path,
            req.body[:200],
            status,
            body[:300],
        )
        assert not is_html(ctype, body), (req.service_path, ctype, body[:200])
        if status >= 400:
            json.loads(body)  # errors are JSON documents
        check_backend_saw(harness.backend.requests[seen_before:], url_host(harness.backend.url))
        check_logs(capture.records[logs_before:])

    started = time.monotonic()
    one()
    elapsed = time.monotonic() - started
    print(
        f"\nFIGURE properties in process ({protocol}): {sum(statuses.values())} examples in {elapsed:.1f} s, "
        f"statuses {dict(sorted(statuses.items()))}, backend requests {len(harness.backend.requests)}"
    )
    assert not failures, failures


# -- over HTTP -----------------------------------------------------------------------------------------
def concrete(route: Route) -> str:
    if route.path == "/backend/{}":
        return "/backend/start"
    if "blobs" in route.path:
        return route.path.replace("{}", "sha256-" + "0" * 64)
    return route.path.replace("{}", MODEL)


path_st = st.one_of(
    st.sampled_from([concrete(r) for r in ROUTES]),
    st.sampled_from([concrete(r) for r in ROUTES]).map(lambda p: p.rstrip("/") + "/"),
    st.sampled_from(
        [
            "/v1/nothing",
            "/v1/messages/x",
            "/api/../api/tags",
            "//api/tags",
            "/api/%2e%2e/x",
            "/v1/models/..%2f..",
            "/%00",
            "/api/tags%20",
            "*",
        ]
    ),
    st.from_regex(r"\A/[A-Za-z0-9/._%~-]{0,40}\Z"),
)
method_st = st.sampled_from(
    ["GET", "POST", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get"]
)
# header values as bytes on the wire: latin-1 beyond ASCII included; no CR/LF (that would be another
# header), no other control characters (Tornado rejects the message itself: a bare 400, checked apart)
wire_value = st.binary(max_size=24).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F))
wire_headers = st.lists(
    st.tuples(header_names, wire_value | header_value.map(lambda v: v.encode("utf-8")))
    | st.tuples(
        st.sampled_from(["Cookie", "Proxy-Authorization", "X-XSRFToken"]), credential_value.map(str.encode)
    ),
    max_size=5,
)
auth_st = st.sampled_from(["valid", "valid", "valid", "api-key", "wrong", "none"])


@st.composite
def http_requests(draw: st.DrawFn, prefix: str, host: str) -> tuple[bytes, list[bytes], str, str]:
    if draw(st.integers(0, 3)):  # mostly a real route with one of its methods: the backend is reached
        route = draw(st.sampled_from(ROUTES))
        method = draw(st.sampled_from(sorted(route.methods)))
        path = concrete(route) + draw(st.sampled_from(["", "", "/"]))
    else:
        method, path = draw(method_st), draw(path_st)
    if prefix:  # under Jupyter only its mount is ours ("*" and the like are Jupyter's own business)
        path = prefix + path if path.startswith("/") else prefix + "/"
    query = draw(
        st.sampled_from(["", f"?token={SECRET}", f"?token={TOKEN}", "?a=1&b=%ff", f"?key={SECRET}&x"])
    )
    body = draw(body_bytes) if method in ("POST", "PUT", "PATCH", "DELETE") or draw(st.booleans()) else b""
    chunked = bool(body) and draw(st.booleans())
    lines = [f"{method} {path}{query} HTTP/1.1".encode(), f"Host: {host}".encode()]
    how = draw(auth_st)
    if how == "valid":
        lines.append(f"Authorization: Bearer {TOKEN}".encode())
    elif how == "api-key":
        lines.append(f"x-api-key: {TOKEN}".encode())
    elif how == "wrong":
        lines.append(f"Authorization: Bearer {SECRET}".encode())
    for name, value in draw(wire_headers):
        if name.lower() not in (
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "authorization",
            "x-api-key",
        ):
            lines.append(name.encode() + b": " + value)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        parts = [f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"]
    else:
        lines.append(f"Content-Length: {len(body)}".encode())
        parts = [body] if body else []
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n", parts, method, path


@pytest.fixture(scope="module", params=["standalone", "jupyter"])
def over_http(request, tmp_path_factory) -> Iterator[tuple[Proc, Path, str, str]]:
    """The service (standalone, or mounted in a Jupyter server) in front of a recording backend."""
    tmp = tmp_path_factory.mktemp("props")
    backend, record = start_hostile(tmp)
    if request.param == "standalone":
        service = start_standalone(
            "--backend", "upstream", "--upstream-url", backend.url, "--LLMService.allow_model_management=True"
        )
        prefix = ""
    else:
        service = start_jupyter_server(
            "--LLMService.backend=upstream",
            f"--LLMService.upstream_url={backend.url}",
            "--LLMService.allow_model_management=True",
        )
        prefix = "/llm"
    yield service, record, prefix, url_host(backend.url)
    service.stop()
    backend.stop()


def test_http_never_fails_on_random_requests(over_http):
    service, record, prefix, backend_host = over_http
    log_start = len(full_log(service))  # Jupyter's start-up lines are its own
    statuses: Counter[int] = Counter()
    bare_400 = 0

    @settings(
        max_examples=int(os.environ.get("LLM_AF_PROPERTY_HTTP_EXAMPLES", "50")),
        deadline=10_000,  # ms: one example is milliseconds; this only bounds a hang
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )
    @given(req=http_requests(prefix, url_host(service.url)))
    def one(req: tuple[bytes, list[bytes], str, str]) -> None:
        nonlocal bare_400
        head, parts, method, path = req
        seen_before = len(recorded(record))
        status, headers, body = parse_response(raw_exchange(service.url, head, parts))
        statuses[status] += 1
        ctype = headers.get("content-type", "")
        assert status < 500 or status == 501, (head[:300], status, body[:300])
        assert not is_html(ctype, body), (head[:200], ctype, body[:200])
        if not ctype and status == 400:
            # Tornado's own answer to a message that is not HTTP (a control character in a header)
            assert re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", head.split(b"\r\n", 1)[1].replace(b"\r\n", b"")), (
                head
            )
            bare_400 += 1
        elif method != "HEAD" and status >= 400:
            assert ctype.startswith("application/json"), (head[:200], status, ctype, body[:200])
            json.loads(body)
        check_backend_saw(recorded(record)[seen_before:], backend_host)

    started = time.monotonic()
    one()
    time.sleep(0.3)
    log = full_log(service)[log_start:]
    entry, elapsed = "jupyter" if prefix else "standalone", time.monotonic() - started
    print(
        f"\nFIGURE properties over HTTP ({entry}): {sum(statuses.values())} examples in {elapsed:.1f} s, "
        f"statuses {dict(sorted(statuses.items()))}, Tornado's bare 400s {bare_400}, "
        f"backend requests {len(recorded(record))}"
    )
    assert "Traceback" not in log and "Uncaught exception" not in log, log[-3000:]
    assert SECRET not in log and TOKEN not in log, [
        line for line in log.splitlines() if SECRET in line or TOKEN in line
    ]
