"""backend='relay': a per-user server forwards everything (state and queue included) to ONE shared
service, as its user — how a JupyterHub-wide install shares one backend/one Slurm job."""

from __future__ import annotations

import httpx
import ollama

from .conftest import start_standalone


def test_relay_forwards_as_the_user(ollama_double, tmp_path):
    (tmp_path / "tokens").write_text("tok-alice alice\ntok-admin admin\n")
    shared = start_standalone(
        "--backend",
        "upstream",
        "--upstream-url",
        ollama_double.url,
        "--token-file",
        str(tmp_path / "tokens"),
        "--LLMService.admin_users=['admin']",
        token="tok-x",
    )
    relay = start_standalone(
        "--backend",
        "relay",
        "--upstream-url",
        shared.url,
        "--LLMService.relay_token=tok-alice",
        token="alice-local",
    )
    try:
        h = {"Authorization": "Bearer alice-local"}
        st = httpx.get(relay.url + "/backend/state", headers=h, timeout=10).json()
        assert st["relay"] is True and st["kind"] == "upstream"  # the shared service's launcher
        assert st["user"] == {"name": "alice", "admin": False}  # identified by the shared service
        client = ollama.Client(host=relay.url, headers=h)
        assert [m.model for m in client.list().models] == ["tiny:1b", "small:3b"]
        parts = list(
            client.chat(
                model="tiny:1b",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                options={"num_predict": 3},
            )
        )
        assert "".join(p.message.content for p in parts).split() == ["The", "quick", "brown"]
        r = httpx.post(relay.url + "/backend/stop", headers=h, timeout=10)
        assert r.status_code == 403  # the shared service decides: alice is not its admin
        q = httpx.get(relay.url + "/queue", headers=h, timeout=10).json()
        assert q["mine"] == [] and "totals" in q
        # the relay's own clients still need the relay's token
        assert httpx.get(relay.url + "/backend/state", timeout=10).status_code == 401
    finally:
        relay.stop()
        shared.stop()
