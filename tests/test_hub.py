"""The JupyterHub-wide install, on a real JupyterHub (README: "One shared service for a whole
JupyterHub"): one managed service ``llm`` (``jupyter-llm-af serve``, backend = the Ollama double),
users alice and bob with hub API tokens, admin a hub admin and ``LLMService.admin_users``.

Needs configurable-http-proxy ($CHP_BIN, default .ci/cache/chp/...; scripts/install.sh --test
installs it). The hub and everything it starts run from one temporary folder on free loopback ports.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from . import hub_helpers as hh

pytestmark = pytest.mark.hub

MODEL = "tiny:1b"
MESSAGES = [{"role": "user", "content": "hi"}]
DELAY = 0.2  # seconds per streamed token in the double: requests stay in flight long enough to look at


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hh.Hub]:
    missing = hh.chp_missing()
    if missing:
        pytest.fail(missing)
    hub = hh.start_hub(Path(tmp_path_factory.mktemp("hub")), delay=DELAY)
    try:
        hh.spawn(hub, "alice")  # starts in the background while the other tests run
        yield hub
    finally:
        hub.stop()
        assert not hub.leftovers, f"processes the hub did not stop: {hub.leftovers}"


def ollama_client(hub: hh.Hub, user: str, base: str | None = None) -> ollama.Client:
    return ollama.Client(host=base or hub.url + "/services/llm", headers=hub.headers(user), timeout=30)


def openai_client(hub: hh.Hub, user: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=hub.url + "/services/llm/v1", api_key=hub.tokens[user], max_retries=0, timeout=30
    )


def words(n: int) -> str:
    from .resources.ollama_double import WORDS

    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Streamer(threading.Thread):
    """An Ollama-client chat stream in a thread: the test looks at the service while it runs."""

    def __init__(self, client: ollama.Client, n: int):
        super().__init__(daemon=True)
        self.client, self.n = client, n
        self.text = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for part in self.client.chat(
                model=MODEL, messages=MESSAGES, stream=True, options={"num_predict": self.n}
            ):
                self.text += part.message.content or ""
        except BaseException as e:  # reported by result()
            self.error = e

    def result(self) -> str:
        self.join(30)
        assert not self.is_alive(), "stream did not finish"
        if self.error is not None:
            raise self.error
        return self.text.strip()


def test_unauthenticated_requests_are_refused(hub: hh.Hub) -> None:
    cases = [
        ("GET", "api/tags", None, "ollama"),
        ("GET", "v1/models", None, "openai"),
        ("POST", "api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False}, "ollama"),
        ("POST", "v1/chat/completions", {"model": MODEL, "messages": MESSAGES}, "openai"),
        ("GET", "backend/state", None, "service"),
        ("GET", "queue", None, "service"),
    ]
    bad = {"Authorization": "token not-a-hub-token"}
    for headers in ({}, bad):
        for method, path, body, api in cases:
            r = hub.svc(method, path, json=body, headers=headers)
            assert r.status_code in (401, 403), (method, path, headers, r.status_code, r.text[:300])
            doc = r.json()  # in the API's own format, never a login page or a forwarded answer
            if api == "ollama":
                assert set(doc) == {"error"} and isinstance(doc["error"], str), doc
            elif api == "openai":
                assert set(doc) == {"error"} and {"message", "type"} <= set(doc["error"]), doc
            else:
                assert "error" in doc and "user" not in doc and "mine" not in doc, doc
    # a browser's GET of the root: a JSON refusal or the hub's login, never the service itself
    r = hub.svc("GET", "")
    assert r.status_code in (302, 401, 403), r.status_code
    if r.status_code == 302:
        assert "/hub/" in r.headers["location"]
    # the service's own port (bypassing the proxy) checks every request too
    r = httpx.get(f"http://127.0.0.1:{hub.svc_port}/services/llm/api/tags", timeout=10)
    assert r.status_code in (401, 403), r.text[:300]


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_real_clients_with_hub_tokens(hub: hh.Hub, user: str) -> None:
    oc = ollama_client(hub, user)
    assert {m.model for m in oc.list().models} == {"tiny:1b", "small:3b"}
    parts = list(oc.chat(model=MODEL, messages=MESSAGES, stream=True, options={"num_predict": 3}))
    assert len(parts) >= 3 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts).strip() == words(3)

    oa = openai_client(hub, user)
    assert MODEL in {m.id for m in oa.models.list()}
    stream = oa.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, max_tokens=3)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip() == words(3)


def test_identity_privacy_and_one_shared_backend(hub: hh.Hub) -> None:
    state = {u: hub.svc("GET", "backend/state", u).json() for u in ("alice", "bob", "admin")}
    assert state["alice"]["user"] == {"name": "alice", "admin": False}
    assert state["bob"]["user"] == {"name": "bob", "admin": False}
    assert state["admin"]["user"] == {"name": "admin", "admin": True}
    assert "backend_url" not in state["alice"] and state["admin"]["backend_url"] == hub.double.url

    # both users stream at once; the double's delay keeps them in flight
    streams = {u: Streamer(ollama_client(hub, u), 15) for u in ("alice", "bob")}
    for s in streams.values():
        s.start()
    try:
        # ONE service process, ONE backend: alice's view of the queue counts bob's stream too
        running = wait_for(
            "both streams running in the one service",
            lambda: hub.svc("GET", "backend/state", "alice").json()["queue"]["running"] == 2,
        )
        assert running
        for me, other in (("alice", "bob"), ("bob", "alice")):
            r = hub.svc("GET", "queue", me)
            assert r.status_code == 200, r.text
            doc = r.json()
            assert other not in r.text, doc  # no other user's name, anywhere
            assert "all" not in doc and doc["totals"]["running"] == 2
            assert [e["state"] for e in doc["mine"]] == ["running"] and doc["mine"][0]["stream"] is True
        admin = hub.svc("GET", "queue", "admin").json()
        assert sorted(e["user"] for e in admin["all"]) == ["alice", "bob"]
        assert hub.svc("GET", "backend/state", "bob").json()["queue"]["running"] == 2
    finally:
        texts = {u: s.result() for u, s in streams.items()}
    assert texts == {"alice": words(15), "bob": words(15)}
    assert hub.svc("GET", "backend/state", "admin").json()["queue"]["running"] == 0

    # the hub manages exactly one llm service process
    services = hub.api("GET", "services").json()
    assert list(services) == ["llm"] and services["llm"].get("pid"), services


def test_single_user_server_reaches_service_with_its_own_token(hub: hh.Hub) -> None:
    """alice's server (spawned through the REST API) runs the extension with backend 'upstream' =
    the hub service, authenticated by the server's $JUPYTERHUB_API_TOKEN (Spawner.server_token_scopes);
    the client's own token is never forwarded (forwarding.py allow-list)."""
    server = hh.wait_server(hub, "alice", timeout=90)
    relay = Streamer(ollama_client(hub, "alice", base=server + "/llm"), 10)
    relay.start()
    try:
        # while it is in flight the service sees it as alice's (the server token's owner)
        entries = wait_for(
            "the relayed request at the service", lambda: hub.svc("GET", "queue", "admin").json()["all"]
        )
        assert [e["user"] for e in entries] == ["alice"], entries
    finally:
        text = relay.result()
    assert text == words(10)
    # and a plain (non-streaming) request through the relay
    reply = ollama_client(hub, "alice", base=server + "/llm").chat(
        model=MODEL, messages=MESSAGES, options={"num_predict": 2}
    )
    assert reply.message.content.strip() == words(2)


@pytest.mark.browser
def test_a_person_in_a_browser_logs_in_through_the_hub(hub: hh.Hub) -> None:
    """A browser opening the service is sent through the hub's OAuth login (API clients get 401)."""
    from playwright.sync_api import sync_playwright

    from .browser.conftest import CHROMIUM, CHROMIUM_ARGS

    r = httpx.get(hub.url + "/services/llm/backend/state", headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(hub.url + "/services/llm/backend/state", timeout=60_000)
            page.wait_for_url("**/hub/login**", timeout=60_000)
            page.fill("#username_input", "bob")
            page.fill("#password_input", "anything")
            page.click("#login_submit")
            page.wait_for_url("**/services/llm/backend/state", timeout=60_000)
            state = json.loads(page.locator("body").inner_text())
            assert state["user"] == {"name": "bob", "admin": False}
        finally:
            browser.close()


def test_prometheus_scrapes_the_hub_service_with_the_metrics_token(hub: hh.Hub) -> None:
    """The metrics token opens /metrics (and nothing else) of the hub service; no token: refused."""
    scraper = {"Authorization": "Bearer hub-metrics-token-for-tests"}
    r = hub.svc("GET", "metrics", headers=scraper)
    assert r.status_code == 200 and "jupyter_llm_af_requests" in r.text, r.text[:300]
    assert r.headers["content-type"].startswith("text/plain")
    assert hub.svc("GET", "metrics").status_code in (401, 403)
    assert hub.svc("GET", "api/tags", headers=scraper).status_code in (401, 403)
