"""Shared with limits (issue 6) through the real service: concurrency, fair order between users,
429/503 + Retry-After, positions, disconnects, GPU-memory refusal — bounded in count and time."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import start_double, start_standalone

USERS = {
    "alice": "tok-alice",
    "bob": "tok-bob",
    "carol": "tok-carol",
    "heavy": "tok-heavy",
    "light": "tok-light",
    "admin": "tok-admin",
}


def hdr(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {USERS[user]}"}


@pytest.fixture(scope="module")
def slow_double():
    d = start_double(delay=0.1)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def limited(slow_double, tmp_path_factory):
    """max_concurrent=2, max_queue=4, max_queue_per_user=2, a 40 GB GPU, six users with tokens."""
    d = tmp_path_factory.mktemp("limited")
    (d / "tokens").write_text("".join(f"{t} {u}\n" for u, t in USERS.items()))
    (d / "cfg.py").write_text(
        "c.LLMService.backend = 'upstream'\n"
        f"c.LLMService.upstream_url = {slow_double.url!r}\n"
        "c.LLMService.max_concurrent = 2\n"
        "c.LLMService.max_queue = 4\n"
        "c.LLMService.max_queue_per_user = 2\n"
        "c.LLMService.max_wait = 30\n"
        "c.LLMService.gpu_memory_gb = 40\n"
        "c.LLMService.model_sizes_gb = {'llama3.3:70b': 42.5, 'small:3b': 3.3}\n"
        "c.LLMService.admin_users = ['admin']\n"
    )
    svc = start_standalone(
        "--config", str(d / "cfg.py"), "--token-file", str(d / "tokens"), token="tok-alice"
    )
    yield svc
    svc.stop()


def chat_body(n: int = 10, model: str = "tiny:1b", stream: bool = True) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "x"}],
        "options": {"num_predict": n},
        "stream": stream,
    }


async def totals(c: httpx.AsyncClient, url: str) -> dict:
    return (await c.get(url + "/queue", headers=hdr("admin"))).json()["totals"]


async def wait_for(pred, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.mark.asyncio
async def test_limits_give_429_then_503_with_retry_after(limited):
    url = limited.url
    async with httpx.AsyncClient(timeout=60) as c:

        async def post(user):
            return await c.post(url + "/api/chat", json=chat_body(20, stream=False), headers=hdr(user))

        running = [asyncio.create_task(post("alice")) for _ in range(2)]
        await wait_for(lambda: _is(c, url, running=2))
        queued = [asyncio.create_task(post("alice")) for _ in range(2)]
        await wait_for(lambda: _is(c, url, waiting=2))
        r = await post("alice")  # alice's third waiting request: her own limit
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert "limit 2" in r.json()["error"]
        queued += [asyncio.create_task(post("bob")) for _ in range(2)]
        await wait_for(lambda: _is(c, url, waiting=4))
        r = await c.post(
            url + "/v1/chat/completions",
            headers=hdr("carol"),
            json={"model": "tiny:1b", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 503 and 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.json()["error"]["type"] == "server_error" and "queue is full" in r.json()["error"]["message"]
        # my own view: positions, no other user's name
        mine = (await c.get(url + "/queue", headers=hdr("bob"))).json()
        assert sorted(e["position"] for e in mine["mine"]) and "all" not in mine
        assert "alice" not in str(mine)
        admin_view = (await c.get(url + "/queue", headers=hdr("admin"))).json()
        assert {e["user"] for e in admin_view["all"]} == {"alice", "bob"}
        done = await asyncio.gather(*running, *queued)
        assert [r.status_code for r in done] == [200] * 6  # nothing dropped
        assert all(r.json()["done"] for r in done)
        assert any("X-Queue-Position" in r.headers for r in done[2:])
        t = await totals(c, url)
        assert t["waiting"] == 0 and t["running"] == 0


async def _is(c: httpx.AsyncClient, url: str, **want: int) -> bool:
    t = await totals(c, url)
    return all(t[k] == v for k, v in want.items())


@pytest.mark.asyncio
async def test_light_user_is_not_starved_by_a_heavy_one(slow_double, tmp_path):
    (tmp_path / "tokens").write_text("".join(f"{t} {u}\n" for u, t in USERS.items()))
    svc = start_standalone(
        "--backend",
        "upstream",
        "--upstream-url",
        slow_double.url,
        "--token-file",
        str(tmp_path / "tokens"),
        "--LLMService.max_concurrent=1",
        "--LLMService.max_queue_per_user=20",
        token="x",
    )
    try:
        async with httpx.AsyncClient(timeout=120) as c:
            finished: list[tuple[str, float]] = []

            async def one(user: str) -> None:
                r = await c.post(
                    svc.url + "/api/generate",
                    headers=hdr(user),
                    json={"model": "tiny:1b", "prompt": "x", "stream": False, "options": {"num_predict": 3}},
                )
                assert r.status_code == 200
                finished.append((user, time.monotonic()))

            heavy = [asyncio.create_task(one("heavy")) for _ in range(12)]
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            await one("light")
            light_latency = time.monotonic() - t0
            await asyncio.gather(*heavy)
        order = [u for u, _ in sorted(finished, key=lambda x: x[1])]
        # round robin: light is served right after heavy's request in flight (+ at most one more)
        assert order.index("light") <= 3, order
        assert light_latency < 2.0, light_latency  # 12 heavy requests × 0.3 s would be ≥ 3 s FIFO
    finally:
        svc.stop()


@pytest.mark.asyncio
async def test_queued_client_disconnect_leaves_the_queue(limited):
    url = limited.url
    async with httpx.AsyncClient(timeout=60) as c:
        running = [
            asyncio.create_task(
                c.post(url + "/api/chat", json=chat_body(15, stream=False), headers=hdr("bob"))
            )
            for _ in range(2)
        ]
        await wait_for(lambda: _is(c, url, running=2))
        async with httpx.AsyncClient(timeout=60) as quitter:
            waiting = asyncio.create_task(
                quitter.post(url + "/api/chat", json=chat_body(), headers=hdr("carol"))
            )
            await wait_for(lambda: _is(c, url, waiting=1))
            waiting.cancel()
        await wait_for(lambda: _is(c, url, waiting=0), timeout=3)
        await asyncio.gather(*running)
        await wait_for(lambda: _is(c, url, waiting=0, running=0))


def test_model_that_cannot_fit_is_refused_up_front(limited):
    r = httpx.post(
        limited.url + "/api/chat",
        headers=hdr("alice"),
        json={"model": "llama3.3:70b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 400
    msg = r.json()["error"]
    assert "42.5 GB" in msg and "40 GB" in msg
    r = httpx.post(
        limited.url + "/v1/chat/completions",
        headers=hdr("alice"),
        json={"model": "llama3.3:70b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == "model"
    st = httpx.get(limited.url + "/backend/state", headers=hdr("alice")).json()
    fit = {m["name"]: m["fits"] for m in st["gpu"]["models"]}
    assert fit["llama3.3:70b"] is False and fit["small:3b"] is True


def test_max_wait_gives_503_with_reason(slow_double, tmp_path):
    svc = start_standalone(
        "--backend",
        "upstream",
        "--upstream-url",
        slow_double.url,
        "--LLMService.max_concurrent=1",
        "--LLMService.max_wait=1.0",
        token="t1",
    )
    try:
        with httpx.Client(timeout=30) as c:
            import threading

            long = threading.Thread(
                target=lambda: c.post(
                    svc.url + "/api/chat",
                    json=chat_body(40, stream=False),
                    headers={"Authorization": "Bearer t1"},
                )
            )
            long.start()
            time.sleep(0.5)
            r = c.post(
                svc.url + "/api/chat", json=chat_body(2, stream=False), headers={"Authorization": "Bearer t1"}
            )
            assert r.status_code == 503 and "position 1" in r.json()["error"]
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            long.join(30)
    finally:
        svc.stop()
