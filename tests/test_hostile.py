"""Hostile and malformed input, and retries before the first byte (issue 14), against the real
standalone service and a real Jupyter server. Backends: ``tests/resources/hostile_backend.py`` (one
switchable fault each: cookies, idle-closed keep-alive connections, a stream that dies, a 500 for
bad input; it records every request it gets), ``tests/resources/ollama_double.py`` as a local launcher's
process, and ``tests/resources/fake_slurm_cli.py`` for the launcher's log events.

Every answer checked here is JSON in the API's own format; no log line holds a token or a
traceback; the figures of the retry tests are printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from jupyter_llm_af.routes import Api, api_of

from .conftest import (
    PY,
    ROOT,
    TOKEN,
    Proc,
    auth,
    free_port,
    start_jupyter_server,
    start_process,
    start_standalone,
)

ALICE, BOB = "alice-" + os.urandom(6).hex(), "bob-" + os.urandom(6).hex()
MODEL = "echo:1b"
HOSTILE = "tests.resources.hostile_backend"
FAKE_SLURM = ROOT / "tests" / "resources" / "fake_slurm_cli.py"


# -- helpers ----------------------------------------------------------------------------------
def start_hostile(tmp_path: Path, *faults: str) -> tuple[Proc, Path]:
    """The hostile backend as a process; returns it and the file where it records each request."""
    record = tmp_path / f"backend-{os.urandom(3).hex()}.jsonl"
    port = free_port()
    proc = start_process(
        [PY, "-m", HOSTILE, "--port", str(port), "--record", str(record), *faults],
        f"http://127.0.0.1:{port}/",
    )
    return proc, record


def recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def service_for(backend: Proc, tmp_path: Path, *extra: str) -> Proc:
    """A standalone service in front of ``backend``; tokens: TOKEN (user), ALICE, BOB."""
    tokens = tmp_path / f"tokens-{os.urandom(3).hex()}"
    tokens.write_text(f"{ALICE} alice\n{BOB} bob\n")
    return start_standalone(
        "--backend", "upstream", "--upstream-url", backend.url, "--token-file", str(tokens), *extra
    )


def full_log(proc: Proc) -> str:
    return Path(proc.log_path).read_text(errors="replace")


def stop_all(*procs: Proc) -> None:
    for p in procs:
        p.stop()


def hostport(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    return host, int(port)


def url_host(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


def raw_exchange(url: str, head: bytes, body_parts: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    """Send raw bytes (a request head, then body parts) and read until the server closes.

    The server may answer and close before the whole body is sent (413): sending stops there."""
    with socket.create_connection(hostport(url), timeout=15) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:
                break
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed with our unread body still in its buffer: the answer came first
    return data


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    while data.startswith(b"HTTP/1.1 100 "):  # an interim answer to "Expect: 100-continue"
        data = data.partition(b"\r\n\r\n")[2]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def assert_api_error(
    path: str, status: int, headers: Any, body: bytes, expected: int | tuple[int, ...]
) -> None:
    """An error answer in the format of the API that ``path`` (service-relative) belongs to."""
    expected = (expected,) if isinstance(expected, int) else expected
    text = body.decode(errors="replace")
    assert status in expected, (path, status, text[:300])
    assert headers.get("content-type", "").startswith("application/json"), (path, headers, text[:200])
    assert "<html" not in text.lower(), (path, text[:200])
    doc = json.loads(body)
    api = api_of(path)
    if api is Api.OPENAI:
        assert set(doc) == {"error"}, doc
        assert isinstance(doc["error"]["message"], str) and doc["error"]["message"], doc
        assert isinstance(doc["error"]["type"], str) and doc["error"]["type"], doc
    elif api is Api.ANTHROPIC:
        assert doc["type"] == "error" and set(doc) == {"type", "error"}, doc
        assert isinstance(doc["error"]["type"], str) and isinstance(doc["error"]["message"], str), doc
    elif api is Api.OLLAMA:
        assert isinstance(doc["error"], str) and doc["error"], doc
    else:
        assert isinstance(doc["error"], str) and doc["status"] == status, doc


def assert_http_error(path: str, r: httpx.Response, expected: int | tuple[int, ...]) -> None:
    assert_api_error(path, r.status_code, r.headers, r.content, expected)


def assert_clean_log(log: str, *secrets: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert "Uncaught exception" not in log, log[-3000:]
    for secret in secrets:
        assert secret not in log, (
            f"a token is in the log: {[line for line in log.splitlines() if secret in line]}"
        )


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sse_data(text: str) -> list[str]:
    return [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]


# -- tokens never logged ------------------------------------------------------------------------
def test_token_in_query_string_never_logged_standalone(tmp_path):
    backend, record = start_hostile(tmp_path)
    service = service_for(backend, tmp_path)
    try:
        u = service.url
        cases = [
            ("GET", f"/api/tags?token={ALICE}", auth(ALICE)),
            ("GET", f"/api/tags?token={ALICE}", {}),  # the query string is no credential here: 401
            ("GET", f"/v1/models?api_key={ALICE}&token={ALICE}", auth(ALICE)),
            ("GET", f"/no/such/path?token={ALICE}", auth(ALICE)),
            ("POST", f"/api/chat?token={ALICE}", auth(ALICE)),  # no body: 400
            ("DELETE", f"/api/tags?token={ALICE}", auth(ALICE)),  # 405
            ("POST", f"/v1/messages?key={ALICE}", {"x-api-key": ALICE}),
        ]
        statuses = []
        for method, path, headers in cases:
            r = httpx.request(method, u + path, headers=headers, timeout=15)
            statuses.append(r.status_code)
            assert r.status_code < 500, (path, r.status_code, r.text)
        assert statuses[:2] == [200, 401], statuses
    finally:
        stop_all(service, backend)
    log = full_log(service)
    assert_clean_log(log, ALICE)
    # the lines were written (so the token's absence means something), each without its query
    assert log.count(" GET /api/tags (") == 2 and " GET /no/such/path (" in log, log
    # the backend never saw the query string either
    assert all("?" not in r["target"] for r in recorded(record)), recorded(record)


def test_token_in_query_string_never_logged_jupyter(tmp_path):
    backend, _ = start_hostile(tmp_path)
    server = start_jupyter_server(
        "--LLMService.backend=upstream", f"--LLMService.upstream_url={backend.url}", "--log-level=DEBUG"
    )
    try:
        start_of_requests = len(full_log(server))  # Jupyter echoes its own command line at DEBUG
        base = server.extra["base"].rstrip("/")
        for method, path in (
            ("GET", f"/llm/api/tags?token={TOKEN}"),  # Jupyter takes a token from the URL
            ("GET", f"/llm/v1/nothing?token={TOKEN}"),
            ("POST", f"/llm/api/chat?token={TOKEN}"),
            ("GET", f"/llm/backend/state?token={TOKEN}"),
        ):
            r = httpx.request(method, base + path, timeout=15)
            assert r.status_code < 500, (path, r.status_code, r.text)
        time.sleep(0.3)
    finally:
        stop_all(server, backend)
    log = full_log(server)[start_of_requests:]
    assert_clean_log(log, TOKEN)
    assert "GET /llm/api/tags?token=[secret]" in log, log[-3000:]


@pytest.mark.hub
def test_hub_service_logs_start_and_requests_without_tokens(tmp_path):
    from . import hub_helpers as hh

    missing = hh.chp_missing()
    if missing:
        pytest.fail(missing)
    (tmp_path / "hub").mkdir()
    hub = hh.start_hub(tmp_path / "hub")
    try:
        alice = hub.tokens["alice"]
        r = hub.svc("GET", "api/tags", user="alice")
        assert r.status_code == 200, r.text
        r = httpx.get(f"{hub.url}/services/llm/api/tags?token={alice}", timeout=30)
        assert r.status_code in (200, 401), r.text  # whether the hub takes URL tokens is its choice
        r = hub.svc("GET", f"no/such/path?token={alice}", user="alice")
        assert r.status_code == 404, r.text
        time.sleep(0.5)
        log = hub.log(10**7)
    finally:
        hub.stop()
    assert_clean_log(log, alice)
    assert "jupyter-llm-af" in log and "upstream backend" in log, log[-3000:]  # its start-up line
    assert " 200 GET /services/llm/api/tags (" in log, log[-3000:]  # a successful request


# -- cookies --------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_backend_cookie_never_sent_back_for_another_user(tmp_path, protocol):
    """The backend sets a cookie on every answer; the shared clients (aiohttp for pass-through,
    httpx for translation) must never send one back, for the same user or another."""
    backend, record = start_hostile(tmp_path, "--set-cookie")
    service = service_for(backend, tmp_path, "--protocol", protocol)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
    try:
        for user in (ALICE, BOB, ALICE):
            h = auth(user)
            for method, path, body in (
                ("GET", "/api/tags", None),
                ("POST", "/api/chat", chat),
                ("POST", "/v1/chat/completions", chat),
                ("GET", "/v1/models", None),
                ("POST", "/api/show", {"model": MODEL}),
            ):
                r = httpx.request(method, service.url + path, json=body, headers=h, timeout=15)
                assert r.status_code < 500, (path, r.status_code, r.text)
                assert "set-cookie" not in r.headers, (path, r.headers)  # never passed to the client
    finally:
        stop_all(service, backend)
    seen = recorded(record)
    assert len(seen) >= 10, seen  # both clients were used, many times
    cookies = [(r["target"], v) for r in seen for k, v in r["headers"] if k.lower() == "cookie"]
    assert cookies == [], f"the backend's cookie came back: {cookies}"
    assert_clean_log(full_log(service))


# -- malformed bodies -------------------------------------------------------------------------------
INFERENCE_PATHS = (
    "/api/chat",
    "/api/generate",
    "/api/show",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
)


@pytest.fixture(scope="module")
def translated(tmp_path_factory) -> Any:
    """A service with backend_protocol=openai (translation) and one with ollama (pass-through),
    in front of one hostile backend that answers a type error with a 500."""
    tmp = tmp_path_factory.mktemp("hostile")
    backend, record = start_hostile(tmp, "--bad-input-500")
    openai_svc = service_for(backend, tmp, "--protocol", "openai")
    ollama_svc = service_for(backend, tmp, "--protocol", "ollama")
    yield {"openai": openai_svc, "ollama": ollama_svc, "backend": backend, "record": record}
    stop_all(openai_svc, ollama_svc, backend)
    for svc in (openai_svc, ollama_svc):
        assert_clean_log(full_log(svc), TOKEN, ALICE, BOB)


def test_deeply_nested_json_is_a_400_in_each_apis_format(translated):
    deep_bodies = {
        "arrays": b"[" * 100_000 + b"]" * 100_000,
        "objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "inside a message": b'{"model":"echo:1b","messages":[{"role":"user","content":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}",
        "just over the limit": b'{"model":"echo:1b","x":' + b"[" * 70 + b"]" * 70 + b"}",
    }
    for protocol in ("openai", "ollama"):
        u = translated[protocol].url
        for name, body in deep_bodies.items():
            for path in INFERENCE_PATHS:
                r = httpx.post(u + path, content=body, headers=auth(), timeout=30)
                assert_http_error(path, r, 400)
                assert "nested" in r.text or "JSON" in r.text, (name, path, r.text)
    record = recorded(translated["record"])
    assert not [r for r in record if len(r["body"]) > 1000], "a nested body reached the backend"


WRONG_TYPES: list[tuple[str, dict[str, Any]]] = [
    # the common fields every API agrees on
    ("/api/chat", {"model": MODEL, "messages": "x"}),
    ("/api/chat", {"model": MODEL, "messages": [1]}),
    ("/api/chat", {"model": MODEL, "messages": [], "options": []}),
    ("/api/generate", {"model": MODEL, "prompt": "x", "options": []}),
    ("/api/chat", {"model": [1], "messages": []}),
    ("/api/chat", {"model": MODEL, "messages": [], "stream": "yes"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": "x"}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [None]}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": "x"}),
    ("/v1/responses", {"model": MODEL, "input": "x", "tools": {"a": 1}}),
]
WRONG_TYPES_TRANSLATED: list[tuple[str, dict[str, Any]]] = [
    # fields inside messages, which only the translation reads
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [1, {"a": 1}]}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": "abc"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [None]}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "assistant", "content": "", "tool_calls": "zz"}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "assistant", "content": "", "tool_calls": [1]}]}),
    (
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": 1}]}]},
    ),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": {"a": 1}}]}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": 1, "content": "x"}]}),
    ("/api/generate", {"model": MODEL, "prompt": "x", "images": [1]}),
    ("/api/generate", {"model": MODEL, "prompt": [1]}),
    ("/api/embed", {"model": MODEL, "input": [1, {}]}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [1]}]}),
    (
        "/v1/messages",
        {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "image", "source": 1}]}],
        },
    ),
    ("/v1/messages", {"model": MODEL, "max_tokens": "x", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/responses", {"model": MODEL, "input": [1]}),
    ("/v1/responses", {"model": MODEL, "input": [{"type": "message", "role": "user", "content": 3}]}),
]


@pytest.mark.parametrize("protocol", ["ollama", "openai"])
def test_wrong_types_are_a_400_in_the_apis_format(translated, protocol):
    cases = WRONG_TYPES + (WRONG_TYPES_TRANSLATED if protocol == "openai" else [])
    for stream in (False, True):
        for path, body in cases:
            body = {**body, "stream": body.get("stream", stream)}
            r = httpx.post(translated[protocol].url + path, json=body, headers=auth(), timeout=30)
            assert_http_error(path, r, 400)


def test_backend_500_for_bad_input_is_a_400(translated):
    """llama.cpp answers a JSON type error in a field it reads with 500; that is the client's
    mistake, so the client gets 400 in its API's format with the backend's sentence."""
    u = translated["openai"].url
    bad = [
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [1]},
        ),
        (
            "/v1/chat/completions",
            {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": 5}]},
        ),
    ]
    for path, body in bad:
        r = httpx.post(u + path, json=body, headers=auth(), timeout=30)
        assert_http_error(path, r, 400)
        assert "type must be string" in r.json()["error"]["message"], r.text
    bodies = [
        json.loads(r["body"]) for r in recorded(translated["record"]) if r["target"] == "/v1/chat/completions"
    ]
    sent = [m for b in bodies for m in b.get("messages", [])]
    assert {"role": "user", "content": 5} in sent  # so the backend did answer those with 500


def test_backend_500_for_bad_input_is_a_400_when_translated(translated):
    u = translated["openai"].url
    tools = [{"type": "function", "function": 3}]  # passed on by the translation; the backend 500s
    for stream in (False, True):
        body = {
            "model": MODEL,
            "stream": stream,
            "messages": [{"role": "user", "content": "x"}],
            "tools": tools,
        }
        r = httpx.post(u + "/api/chat", json=body, headers=auth(), timeout=30)
        assert_http_error("/api/chat", r, 400)
        assert "type must be string" in r.json()["error"], r.text


def test_non_ascii_header_values_are_dropped_not_a_500(tmp_path):
    backend, record = start_hostile(tmp_path)
    services = [service_for(backend, tmp_path, "--protocol", p) for p in ("ollama", "openai")]
    try:
        body = json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}
        ).encode()
        for service in services:
            for path in ("/api/chat", "/v1/chat/completions", "/api/show"):
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
                    + b"User-Agent: caf\xc3\xa9 \xff\xfe\x80\r\n"
                    + b"Accept: text/\xe9, */*\r\n"
                    + b"OpenAI-Organization: org-\xe2\x80\xae\r\n"
                    + b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                )
                status, headers, answer = parse_response(raw_exchange(service.url, head, [body]))
                assert status == 200, (path, status, answer[:300])
            # control characters make the request malformed HTTP: Tornado itself answers a bare 400
            # before any handler runs (nothing reaches the backend; see the check at the end)
            head = b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: \x01\x7f\r\n"
            status, _, _ = parse_response(raw_exchange(service.url, head + b"Connection: close\r\n\r\n"))
            assert status == 400
            # a credential that is not ASCII is just a wrong credential
            for value in (b"Bearer \xff\xfe x", b"Bearer caf\xc3\xa9", b"\xe9\xe9"):
                head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + value
                status, headers, answer = parse_response(
                    raw_exchange(service.url, head + b"\r\nConnection: close\r\n\r\n")
                )
                assert_api_error("/v1/models", status, headers, answer, 401)
    finally:
        stop_all(*services, backend)
    for service in services:
        assert_clean_log(full_log(service), TOKEN)
    seen = recorded(record)
    assert seen
    for r in seen:
        for k, v in r["headers"]:
            assert v.isascii() and v.isprintable(), (r["target"], k, v)


# -- request targets and methods ------------------------------------------------------------------
def test_absolute_form_targets_and_connect_get_json(tmp_path):
    backend, record = start_hostile(tmp_path)
    service = service_for(backend, tmp_path)
    port = hostport(service.url)[1]
    try:
        before = len(recorded(record))
        for with_auth in (True, False):
            cred = f"Authorization: Bearer {TOKEN}\r\n" if with_auth else ""
            for target in (
                "GET http://evil.example/api/tags",
                "GET http://evil.example/v1/models",
                f"POST http://127.0.0.1:{port}/api/chat",
                f"GET {backend.url}/api/tags",
                "GET https://evil.example:443/v1/messages/x",
                "CONNECT evil.example:443",
                f"CONNECT 127.0.0.1:{hostport(backend.url)[1]}",
                "CONNECT /api/tags",
                "TRACE /api/tags",
                "TRACE /v1/models",
                "OPTIONS *",
                "PROPFIND /api/tags",
            ):
                head = f"{target} HTTP/1.1\r\nHost: evil.example\r\n{cred}"
                head += "Content-Length: 0\r\nConnection: close\r\n\r\n"
                status, headers, body = parse_response(raw_exchange(service.url, head.encode()))
                # the error format follows the target as the service sees it (absolute-form: unknown)
                assert_api_error(target.split(" ", 1)[1], status, headers, body, (400, 401, 404, 405))
                if not with_auth:  # an unknown method is refused before authentication
                    assert status == (405 if target.startswith("PROPFIND") else 401), (target, status)
        assert len(recorded(record)) == before, "a request reached the backend"
    finally:
        stop_all(service, backend)
    assert_clean_log(full_log(service), TOKEN)


def test_connect_and_trace_get_json_in_jupyter(tmp_path):
    backend, record = start_hostile(tmp_path)
    server = start_jupyter_server("--LLMService.backend=upstream", f"--LLMService.upstream_url={backend.url}")
    before = len(recorded(record))
    try:
        host = url_host(server.url)
        for method in ("CONNECT", "TRACE", "PROPFIND"):
            for path in ("/llm/api/tags", "/llm/v1/messages", "/llm/v1/nothing"):
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {TOKEN}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                status, headers, body = parse_response(raw_exchange(server.url, head.encode()))
                assert_api_error(path[len("/llm") :], status, headers, body, (404, 405))
        assert len(recorded(record)) == before, "a request reached the backend"
    finally:
        stop_all(server, backend)


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory) -> Any:
    """The standalone service and a Jupyter server with a 64 KiB body limit."""
    tmp = tmp_path_factory.mktemp("limit")
    backend, record = start_hostile(tmp)
    service = service_for(backend, tmp, "--LLMService.max_body_size=65536")
    server = start_jupyter_server(
        "--LLMService.backend=upstream",
        f"--LLMService.upstream_url={backend.url}",
        "--LLMService.max_body_size=65536",
    )
    yield {"standalone": service, "jupyter": server, "record": record}
    stop_all(service, server, backend)


LIMIT = 65536


@pytest.mark.parametrize("entry", ["standalone", "jupyter"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_over_the_limit_is_413_in_the_apis_format(small_limit, entry, framing):
    proc = small_limit[entry]
    prefix = "" if entry == "standalone" else "/llm"
    host = url_host(proc.url)
    log_start = len(full_log(proc))
    statuses = []
    for size in (LIMIT + 1, 2 * LIMIT + 1, 20 * LIMIT):
        for path in ("/api/chat", "/v1/chat/completions", "/v1/messages"):
            payload = b'{"model": "echo:1b", "prompt": "' + b"x" * size + b'"}'
            head = f"POST {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: token {TOKEN}\r\n"
            head += "Content-Type: application/json\r\nConnection: close\r\n"
            if framing == "content-length":
                head += f"Content-Length: {len(payload)}\r\n\r\n"
                parts = [payload[i : i + 16384] for i in range(0, len(payload), 16384)]
            else:
                head += "Transfer-Encoding: chunked\r\n\r\n"
                parts = [
                    f"{len(payload[i : i + 16384]):x}\r\n".encode() + payload[i : i + 16384] + b"\r\n"
                    for i in range(0, len(payload), 16384)
                ] + [b"0\r\n\r\n"]
            status, headers, body = parse_response(raw_exchange(proc.url, head.encode(), parts))
            assert_api_error(path, status, headers, body, 413)
            assert "exceeds the limit" in body.decode(), body
            statuses.append(status)
    time.sleep(0.3)
    assert_clean_log(full_log(proc)[log_start:], TOKEN)
    assert not [r for r in recorded(small_limit["record"]) if len(r["body"]) > 1000]


def test_unknown_paths_get_errors_in_their_apis_format(tmp_path):
    backend, _ = start_hostile(tmp_path)
    service = service_for(backend, tmp_path)
    server = start_jupyter_server("--LLMService.backend=upstream", f"--LLMService.upstream_url={backend.url}")
    try:
        for base, h in ((service.url, auth()), (server.url, {"Authorization": f"token {TOKEN}"})):
            for method, path, expected in (
                ("GET", "/v1/nothing", 404),
                ("POST", "/v1/chat/nothing", 404),
                ("GET", "/v1", 404),
                ("GET", "/v1/messages/nothing", 404),
                ("POST", "/v1/messages/batches", 404),
                ("GET", "/v1/messages", 405),
                ("GET", "/v1/messages/count_tokens", 405),
                ("GET", "/api/nothing", 404),
                ("GET", "/nothing", 404),
            ):
                r = httpx.request(method, base + path, headers=h, timeout=15)
                assert_http_error(path, r, expected)
                r = httpx.request(method, base + path, timeout=15)  # unauthenticated: same format
                assert_http_error(path, r, (401, 403))
    finally:
        stop_all(service, server, backend)


# -- the service's log --------------------------------------------------------------------------------
def slurm_config(tmp_path: Path, job_name: str) -> Path:
    state = tmp_path / "fake-slurm.json"
    cli = f"{PY} {FAKE_SLURM} {state}"
    lines = [
        "c.LLMService.backend = 'slurm'",
        f"c.LLMService.slurm_job_name = {job_name!r}",
        f"c.LLMService.slurm_state_dir = {str(tmp_path / 'state')!r}",
        f"c.LLMService.slurm_submit_command = {cli + ' sbatch --parsable'!r}",
        f"c.LLMService.slurm_query_command = {cli + ' squeue -h -o %i|%j|%T|%r|%N|%L|%l|%S|%e|%V'!r}",
        f"c.LLMService.slurm_start_command = {cli + ' squeue --start -h -o %i|%S'!r}",
        f"c.LLMService.slurm_cancel_command = {cli + ' scancel'!r}",
        f"c.LLMService.slurm_ping_command = {cli + ' scontrol ping'!r}",
        "c.LLMService.max_wait = 1.5",
        "c.LLMService.cancel_on_shutdown = False",  # the second service adopts the job
    ]
    cfg = tmp_path / "slurm_cfg.py"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_standalone_log_has_launcher_events_and_one_access_line_per_request(tmp_path):
    job_name = "llmaf-log-" + os.urandom(3).hex()
    cfg = slurm_config(tmp_path, job_name)
    requests = [
        ("GET", "/backend/state"),
        ("POST", "/api/chat"),  # submits a job, waits max_wait, 503
        ("GET", "/queue"),
        ("GET", "/api/version"),
        ("GET", "/v1/nothing"),
        ("DELETE", "/api/tags"),
    ]
    first = start_standalone("--config", str(cfg), "--log-level", "INFO")
    try:
        for method, path in requests:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": False}
            r = httpx.request(
                method, first.url + path, headers=auth(), json=body if method == "POST" else None, timeout=30
            )
            assert r.status_code in (200, 404, 405, 503), (path, r.status_code, r.text)
    finally:
        first.stop()
    second = start_standalone("--config", str(cfg), "--log-level", "INFO")
    try:  # the adoption runs while the service already answers: wait for it
        deadline = time.monotonic() + 20
        while "Slurm: adopting job" not in full_log(second) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.stop()
    log, log2 = full_log(first), full_log(second)
    assert "Slurm: submitted job 1" in log, log
    assert "Slurm: adopting job 1" in log2, log2
    for method, path in requests:
        lines = [line for line in log.splitlines() if f" {method} {path} (" in line]
        assert len(lines) == 1, (method, path, lines)
    assert_clean_log(log + log2, TOKEN)


# -- retries before the first byte ---------------------------------------------------------------
def test_request_right_after_the_backend_died_is_answered(tmp_path):
    """backend=local: kill the backend process, send a request at once: it is retried and answered
    by the restarted backend (never a 502)."""
    cfg = tmp_path / "local_cfg.py"
    cfg.write_text(
        "c.LLMService.backend = 'local'\n"
        f"c.LLMService.local_command = [{PY!r}, '-m', 'tests.resources.ollama_double', '--port', '{{port}}', "
        "'--delay', '0.005']\n"
        "c.LLMService.admin_users = ['user']\n"
        "c.LLMService.max_wait = 30\n"
    )
    service = start_standalone("--config", str(cfg))
    kills, answered, failures = 0, 0, []
    chat = {"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": 3}}
    try:
        with httpx.Client(base_url=service.url, headers=auth(), timeout=60) as client:
            for i in range(5):
                assert client.post("/api/chat", json={**chat, "stream": False}).status_code == 200
                pid = client.get("/backend/state").json()["pid"]
                assert pid, "no backend pid in the admin's state"
                os.kill(pid, signal.SIGKILL)  # the backend dies; the service has not noticed yet
                kills += 1
                r = client.post("/api/chat", json={**chat, "stream": i % 2 == 1})
                if r.status_code == 200 and ndjson(r.text)[-1].get("done") is True:
                    answered += 1
                else:
                    failures.append((r.status_code, r.text[:200]))
                new_pid = client.get("/backend/state").json()["pid"]
                assert new_pid and new_pid != pid
    finally:
        service.stop()
    print(
        f"\nFIGURE retries: backend killed {kills} times, request sent at once: "
        f"{answered} answered, {len(failures)} failed"
    )
    assert failures == [] and answered == kills
    assert_clean_log(full_log(service), TOKEN)


def test_backend_that_idle_closes_keep_alive_connections_fails_nothing(tmp_path):
    """The backend drops a request arriving on a connection idle for over 1 s (the race a client
    loses against an idle timeout). Requests 1.5 s apart, so every pooled connection is stale:
    retried on a fresh connection, none fails."""
    backend, record = start_hostile(tmp_path, "--idle-close", "1.0")
    native = service_for(backend, tmp_path, "--protocol", "ollama")
    translated = service_for(backend, tmp_path, "--protocol", "openai")
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": False}

    def client(service: Proc, paths: tuple[str, ...], n: int) -> None:
        with httpx.Client(base_url=service.url, headers=auth(), timeout=30) as c:
            for i in range(n):
                path = paths[i % len(paths)]
                try:
                    r = c.post(path, json=chat)
                    outcome = (path, r.status_code, r.text[:200])
                except httpx.HTTPError as e:
                    outcome = (path, 0, repr(e))
                with lock:
                    results.append(outcome)
                time.sleep(1.5)

    started = time.monotonic()
    threads = [
        threading.Thread(target=client, args=(svc, paths, 10))
        for svc, paths in ((native, ("/api/chat", "/v1/chat/completions")),) * 3
        + ((translated, ("/api/chat", "/v1/chat/completions")),) * 2
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        stop_all(native, translated, backend)
    elapsed = time.monotonic() - started
    failed = [r for r in results if r[1] != 200]
    dropped = [r for r in recorded(record) if not r["answered"]]
    print(
        f"\nFIGURE retries: idle-closing backend: {len(results)} requests in {elapsed:.1f} s, "
        f"{len(failed)} failed, "
        f"{len(dropped)} stale connections met (each retried)"
    )
    assert len(results) == 50 and failed == [], failed[:5]
    assert len(dropped) >= 10, "the fault did not happen: the test proves nothing"
    for svc in (native, translated):
        assert_clean_log(full_log(svc), TOKEN)


def test_broken_stream_ends_with_an_error_in_each_apis_format(tmp_path):
    """The backend (OpenAI SSE) dies after 3 events; every API's stream ends with its own error."""
    backend, _ = start_hostile(tmp_path, "--die-after", "3")
    service = service_for(backend, tmp_path, "--protocol", "openai")
    msgs = [{"role": "user", "content": "x"}]
    try:
        u, h = service.url, auth()
        # Ollama's API, translated: NDJSON lines, then an error line; never "done"
        for path, body in (
            ("/api/chat", {"model": MODEL, "messages": msgs, "options": {"num_predict": 10}}),
            ("/api/generate", {"model": MODEL, "prompt": "x", "options": {"num_predict": 10}}),
        ):
            r = httpx.post(u + path, json=body, headers=h, timeout=30)
            lines = ndjson(r.text)
            assert r.status_code == 200 and len(lines) >= 2, (path, r.text)
            assert "error" in lines[-1] and not any(x.get("done") for x in lines), (path, lines)
        # OpenAI's, passed through: an error event, never [DONE]
        r = httpx.post(
            u + "/v1/chat/completions",
            json={"model": MODEL, "messages": msgs, "max_tokens": 10, "stream": True},
            headers=h,
            timeout=30,
        )
        events = sse_data(r.text)
        assert "[DONE]" not in events and "error" in json.loads(events[-1]), events
        # Anthropic's, translated: an "error" event
        r = httpx.post(
            u + "/v1/messages",
            json={"model": MODEL, "messages": msgs, "max_tokens": 10, "stream": True},
            headers=h,
            timeout=30,
        )
        assert "event: error" in r.text and "message_stop" not in r.text, r.text
        last = json.loads(sse_data(r.text)[-1])
        assert last["type"] == "error", last
        # OpenAI Responses, translated: response.failed (or error), never response.completed
        r = httpx.post(
            u + "/v1/responses", json={"model": MODEL, "input": "x", "stream": True}, headers=h, timeout=30
        )
        kinds = [json.loads(e).get("type") for e in sse_data(r.text) if e.startswith("{")]
        assert kinds and kinds[-1] in ("response.failed", "error") and "response.completed" not in kinds, (
            kinds
        )
    finally:
        stop_all(service, backend)
    assert_clean_log(full_log(service), TOKEN)
