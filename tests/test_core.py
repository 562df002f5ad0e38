"""Core service (issue 3): routes, auth, streaming, errors, never an open proxy — with real clients
(`ollama`, `openai`, curl) against the standalone service and a real Jupyter server, backend = the
Ollama wire-format double (native pass-through)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import ollama
import openai
import pytest

from jupyter_llm_af.routes import ROUTES

from .conftest import TOKEN, auth, start_double, start_standalone


def route_paths() -> list[str]:
    """One concrete path per route of the table."""
    out = ["/no/such/route"]
    for route in ROUTES:
        path = route.path.replace("{}", "x" if "blobs" not in route.path else "sha256-" + "0" * 64)
        if "backend/{}" in route.path:
            path = "/backend/stop"
        out.append(path)
    return out


# -- authentication -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "DELETE"])
def test_standalone_refuses_every_route_unauthenticated(native_service, method):
    for path in route_paths():
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "token " + TOKEN[:-1]},
            {"Cookie": "session=1"},
        ):
            r = httpx.request(
                method,
                native_service.url + path,
                headers=headers,
                content=b"{}" if method == "POST" else None,
                timeout=10,
            )
            assert r.status_code == 401, (method, path, headers, r.status_code)
            if method != "HEAD":
                body = r.json()
                assert "error" in body  # the API's own format, never an HTML page
                if path.startswith("/v1/"):
                    assert body["error"]["type"] == "authentication_error"
                text = json.dumps(body)
                # the message says what is wrong: no token at all, or the token sent
                if "Authorization" in headers:
                    assert "invalid token" in text, text
                else:
                    assert "authentication required" in text, text


def test_jupyter_refuses_every_route_unauthenticated(native_jupyter):
    for path in route_paths():
        for method in ("GET", "POST", "DELETE", "HEAD"):
            for headers in ({}, {"Authorization": "token wrong"}, {"Cookie": "username-127-0-0-1=x"}):
                r = httpx.request(
                    method,
                    native_jupyter.url + path,
                    headers=headers,
                    timeout=10,
                    content=b"{}" if method == "POST" else None,
                    follow_redirects=False,
                )
                assert r.status_code in (401, 403), (method, path, r.status_code)
                assert "<html" not in r.text.lower()


async def test_jupyter_mounted_routes_with_token(jp_fetch):
    r = await jp_fetch("llm", "", method="GET")
    assert r.body == b"Ollama is running"
    r = await jp_fetch("llm", "api", "tags")
    assert [m["name"] for m in json.loads(r.body)["models"]] == ["tiny:1b", "small:3b"]
    state = json.loads((await jp_fetch("llm", "backend", "state")).body)
    assert state["kind"] == "upstream" and state["healthy"] is True
    assert state["user"]["admin"] is True  # the server owner administers its own service


def test_cookie_post_without_xsrf_is_refused(native_jupyter):
    # a browser session: log in with the token, then POST with the cookie but no XSRF header
    with httpx.Client(base_url=native_jupyter.extra["base"], timeout=10) as c:
        c.get("/login", params={"token": TOKEN}, follow_redirects=True)
        r = c.post("/llm/api/chat", json={"model": "tiny:1b", "messages": [], "stream": False})
        assert r.status_code == 403 and "XSRF" in r.json()["error"]
        xsrf = c.cookies.get("_xsrf")
        r = c.post(
            "/llm/api/chat",
            json={"model": "tiny:1b", "messages": [{"role": "user", "content": "hi"}], "stream": False},
            headers={"X-XSRFToken": xsrf},
        )
        assert r.status_code == 200 and r.json()["done"] is True


def test_standalone_refuses_to_start_without_tokens(ollama_double, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_llm_af",
            "serve",
            "--port",
            "1",
            "--backend",
            "upstream",
            "--upstream-url",
            ollama_double.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "JUPYTER_LLM_AF_TOKEN"},
    )
    assert r.returncode == 2 and "No API token" in r.stderr


# -- real clients ---------------------------------------------------------------------------
@pytest.fixture(params=["standalone", "jupyter"])
def service_url(request, native_service, native_jupyter) -> str:
    return native_service.url if request.param == "standalone" else native_jupyter.url


def test_ollama_client(service_url):
    client = ollama.Client(host=service_url, headers=auth())
    names = [m.model for m in client.list().models]
    assert names == ["tiny:1b", "small:3b"]
    reply = client.chat(
        model="tiny:1b", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4}
    )
    assert reply.message.content.split() == ["The", "quick", "brown", "fox"] and reply.done_reason == "stop"
    parts = [
        c.message.content
        for c in client.chat(
            model="tiny:1b",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            options={"num_predict": 5},
        )
    ]
    assert len(parts) == 6 and "".join(parts).split() == ["The", "quick", "brown", "fox", "jumps"]
    gen = client.generate(model="small:3b", prompt="hello", options={"num_predict": 2})
    assert gen.response.strip() == "The quick" and gen.eval_count == 2
    emb = client.embed(model="tiny:1b", input=["a", "bb"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 8
    assert client.show("tiny:1b").details.family == "tiny"
    assert [m.model for m in client.ps().models]  # loaded by the chat above
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "not found" in e.value.error


def test_openai_client(service_url):
    client = openai.OpenAI(base_url=service_url + "/v1", api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny:1b", "small:3b"]
    r = client.chat.completions.create(
        model="tiny:1b", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert r.choices[0].message.content.split() == ["The", "quick", "brown"]
    chunks = list(
        client.chat.completions.create(
            model="tiny:1b", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split() == [
        "The",
        "quick",
        "brown",
        "fox",
    ]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(
        openai.AuthenticationError if "/llm" not in service_url else openai.PermissionDeniedError
    ):
        openai.OpenAI(base_url=service_url + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.skipif(
    not shutil.which("curl") or not shutil.which("jq"), reason="curl and jq are installed by CI"
)
def test_curl_commands_from_the_docs(service_url):
    for path in ("api/tags", "api/ps"):
        out = subprocess.run(
            f"curl -s -H 'Authorization: Bearer {TOKEN}' {service_url}/{path}"
            ' | jq \'.["models"][]["name"]\'',
            shell=True,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        if path == "api/tags":
            assert out == ['"tiny:1b"', '"small:3b"']
    out = subprocess.run(
        [
            "curl",
            "-sN",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            service_url + "/api/generate",
            "-d",
            '{"model": "tiny:1b", "prompt": "Why is the sky blue?", "options": {"num_predict": 3}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["done"] for x in lines] == [False, False, False, True] and lines[-1]["eval_count"] == 3


# -- streaming ------------------------------------------------------------------------------
def test_streaming_is_chunk_by_chunk(service_url):
    """Each token line arrives when the backend produces it (20 ms apart), not all at the end."""
    arrivals = []
    body = {
        "model": "tiny:1b",
        "messages": [{"role": "user", "content": "x"}],
        "options": {"num_predict": 12},
    }
    with httpx.stream("POST", service_url + "/api/chat", json=body, headers=auth(), timeout=30) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 13
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.15, f"all lines arrived within {spread:.3f} s: buffered"


def test_client_disconnect_cancels_upstream_and_frees_the_slot():
    double = start_double(delay=0.2)
    service = start_standalone("--backend", "upstream", "--upstream-url", double.url)
    try:
        body = {
            "model": "tiny:1b",
            "messages": [{"role": "user", "content": "x"}],
            "options": {"num_predict": 60},
        }
        with httpx.stream("POST", service.url + "/api/chat", json=body, headers=auth(), timeout=30) as r:
            lines = r.iter_lines()  # keep the iterator: dropping it closes the response
            next(lines)
            q = httpx.get(service.url + "/queue", headers=auth()).json()
            assert q["totals"]["running"] == 1, q
        # closed after one line of 60: the service must drop the backend request and its slot
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if httpx.get(service.url + "/queue", headers=auth()).json()["totals"]["running"] == 0:
                break
            time.sleep(0.05)
        assert httpx.get(service.url + "/queue", headers=auth()).json()["totals"]["running"] == 0
        time.sleep(0.5)
        assert "ollama double" in double.log()
        assert ("StreamClosedError" not in service.log()) and ("Traceback" not in service.log())
    finally:
        service.stop()
        double.stop()


# -- errors in the API's own format -----------------------------------------------------------
def test_errors_in_each_apis_format(native_service):
    u, h = native_service.url, auth()
    r = httpx.post(u + "/api/chat", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"].startswith("invalid JSON")
    r = httpx.post(u + "/v1/chat/completions", content=b"[1,", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(u + "/api/chat", json={"model": "zzz", "messages": []}, headers=h)
    assert r.status_code == 404 and r.json() == {"error": "model 'zzz' not found"}
    r = httpx.get(u + "/api/nothing", headers=h)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(u + "/api/chat", headers=h)  # GET on a POST route
    assert r.status_code == 405 and "error" in r.json()
    big = b'{"model": "tiny:1b", "prompt": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    r = httpx.post(u + "/api/generate", content=big, headers=h, timeout=60)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    r = httpx.post(u + "/api/pull", json={"model": "x"}, headers=h)
    assert r.status_code == 403 and "allow_model_management" in r.json()["error"]
    r = httpx.post(u + "/backend/stop", headers=h)
    assert r.status_code == 403 and "admin" in r.json()["error"]


def test_dead_backend_gives_502_that_says_what_is_down():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    service = start_standalone("--backend", "upstream", "--upstream-url", dead)
    try:
        r = httpx.post(service.url + "/api/chat", json={"model": "a", "messages": []}, headers=auth())
        assert r.status_code == 502 and "refused" in r.json()["error"]
        r = httpx.post(
            service.url + "/v1/chat/completions", json={"model": "a", "messages": []}, headers=auth()
        )
        assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
        st = httpx.get(service.url + "/backend/state", headers=auth()).json()
        assert st["healthy"] is False and st["state"] == "failed"
        assert httpx.get(service.url + "/queue", headers=auth()).json()["totals"]["running"] == 0
    finally:
        service.stop()


def raw_request(url: str, request_line: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    hostport = url.split("//", 1)[1].split("/", 1)[0]
    h, p = hostport.split(":")
    with socket.create_connection((h, int(p)), timeout=10) as s:
        s.sendall(
            f"{request_line}\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_never_an_open_proxy(native_service, ollama_double):
    u = native_service.url
    # the double serves "Ollama is running" on its root: none of these may reach anything but allowed paths
    for target in (
        f"GET {ollama_double.url}/api/tags HTTP/1.1",  # absolute-form target naming another host
        "GET http://example.invalid/api/tags HTTP/1.1",
        "GET /api/../../etc/passwd HTTP/1.1",
        "GET /api/%2e%2e/%2e%2e/admin HTTP/1.1",
        "GET /v1/models/..%2f..%2fapi%2ftags HTTP/1.1",
        "GET /v1/models/%2F%2Fexample.invalid HTTP/1.1",
        "GET //example.invalid/api/tags HTTP/1.1",
        "POST /api/blobs/..%2f..%2fx HTTP/1.1",
    ):
        status, data = raw_request(u, target)
        assert status in (400, 404, 403, 405), (target, status, data[:200])
        assert b"tiny:1b" not in data or target.startswith(f"GET {ollama_double.url}")
    # a Host header naming another server changes nothing: the backend stays the configured one
    status, data = raw_request(u, "GET /api/version HTTP/1.1", host="evil.example:80")
    assert status == 200 and b'"version"' in data


def test_user_credentials_never_reach_the_backend():
    """The backend sees neither the user's token nor cookies (a header-echoing backend proves it)."""
    from .resources.header_echo import start_header_echo

    echo = start_header_echo()
    service = start_standalone("--backend", "upstream", "--upstream-url", echo.url)
    try:
        r = httpx.post(
            service.url + "/api/chat",
            json={"model": "m", "messages": [], "stream": False},
            headers={
                **auth(),
                "Cookie": "secret=1",
                "X-Forwarded-For": "1.2.3.4",
                "Connection": "keep-alive",
            },
        )
        seen = {k.lower(): v for k, v in r.json()["headers"].items()}
        assert "authorization" not in seen and "cookie" not in seen and "x-forwarded-for" not in seen
        assert seen["host"] == echo.url.split("//")[1]
        assert TOKEN not in json.dumps(seen)
        assert TOKEN not in service.log()  # tokens never logged
    finally:
        service.stop()
        echo.stop()
