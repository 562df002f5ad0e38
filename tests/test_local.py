"""backend='local': a process on this machine, started on demand on a free port, probed, restarted
if it died, and stopped with the service (also when the service is killed)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import httpx
import ollama
import pytest

from .conftest import PY, TOKEN, auth, free_port, start_process, start_standalone


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def local_service(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "c.LLMService.backend = 'local'\n"
        f"c.LLMService.local_command = [{sys.executable!r}, '-m', 'tests.resources.ollama_double',"
        " '--port', '{port}']\n"
        "c.LLMService.admin_users = ['user']\n"
    )
    svc = start_standalone("--config", str(cfg))
    yield svc
    svc.stop()


def state(svc) -> dict:
    return httpx.get(svc.url + "/backend/state", headers=auth(), timeout=10).json()


def wait_ready(svc, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = state(svc)
        if st["state"] == "ready":
            return st
        time.sleep(0.1)
    raise AssertionError(st)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_local_process_lifecycle(local_service, how):
    st = wait_ready(local_service)
    pid, url = st["pid"], st["backend_url"]
    assert alive(pid) and url.startswith("http://127.0.0.1:")
    client = ollama.Client(host=local_service.url, headers=auth())
    assert client.chat(model="tiny:1b", messages=[{"role": "user", "content": "x"}]).done
    # the backend dies: the next request starts a new one (on a new port) instead of failing for good
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.chat(model="tiny:1b", messages=[{"role": "user", "content": "x"}]).done:
                break
        except (ollama.ResponseError, httpx.HTTPError):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    new_pid = wait_ready(local_service)["pid"]
    assert new_pid != pid and alive(new_pid)
    # the service stops (cleanly, or killed): its backend process goes with it
    local_service.popen.send_signal(how)
    local_service.popen.wait(20)
    deadline = time.monotonic() + 15
    while alive(new_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(new_pid), "backend process orphaned"
    assert TOKEN not in local_service.log()


# -- stopping and cleaning up (issue 14) ---------------------------------------------------------
OUR_FILES = ("llm-af-presets-", "jupyter-llm-af-local-")


def ours(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(OUR_FILES))


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (the router and its model children share one)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(name))
    return pids


def serve_in(tmp_dir, cfg_text: str, cfg_path, timeout: float = 60):
    """The standalone service with its temp dir (its runtime dir) in ``tmp_dir``."""
    cfg_path.write_text(cfg_text)
    port = free_port()
    return start_process(
        [
            PY,
            "-m",
            "jupyter_llm_af",
            "serve",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--config",
            str(cfg_path),
        ],
        f"http://127.0.0.1:{port}/",
        headers=auth(),
        env={"TMPDIR": str(tmp_dir)},
        timeout=timeout,
    )


def test_local_stop_removes_its_log_and_a_failed_backend_keeps_it(tmp_path):
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    ok = serve_in(
        tmp_dir,
        "c.LLMService.backend = 'local'\nc.LLMService.admin_users = ['user']\n"
        f"c.LLMService.local_command = [{sys.executable!r}, '-m', 'tests.resources.ollama_double',"
        " '--port', '{port}']\n",
        tmp_path / "ok.py",
    )
    try:
        pid = wait_ready(ok)["pid"]
        assert [n for n in ours(tmp_dir) if n.endswith(".log")], "the log exists while it runs"
    finally:
        ok.stop()
    assert ok.popen.returncode == 0 and not alive(pid)
    assert ours(tmp_dir) == [], "a clean stop leaves nothing behind"

    bad = serve_in(
        tmp_dir,
        "c.LLMService.backend = 'local'\n"
        "c.LLMService.local_command = ['sh', '-c', 'echo the-reason-it-failed; exit 3']\n",
        tmp_path / "bad.py",
    )
    try:
        deadline = time.monotonic() + 30
        while (st := state(bad))["state"] != "failed":
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
    finally:
        bad.stop()
    logs = ours(tmp_dir)
    assert len(logs) == 1 and logs[0].endswith(".log"), logs
    log = tmp_dir / logs[0]
    assert str(log) in st["message"], "the error says where the log is"
    assert "the-reason-it-failed" in log.read_text(), "a failed backend's log is kept"


@pytest.mark.llama
def test_embedded_stop_after_cancelled_streams_is_fast_and_leaves_nothing(tmp_path):
    """An admin's stop right after cancelled streams used to wait 10 s for the router's model
    child (hung in "cancel task"); every start left its presets file and log in the temp dir."""
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    svc = serve_in(
        tmp_dir,
        "c.LLMService.backend = 'local'\nc.LLMService.admin_users = ['user']\n",
        tmp_path / "cfg.py",
        timeout=180,
    )
    try:
        router = wait_ready(svc, 120)["pid"]
        running = ours(tmp_dir)
        assert [p for p in OUR_FILES if any(n.startswith(p) for n in running)] == list(OUR_FILES), running
        stop_times = []
        for _ in range(3):  # stop, start again on the next request (presets rewritten), stop
            asyncio.run(cancelled_streams(svc.url, 4))
            members = group_members(router)
            assert len(members) >= 2, "the router and its model child"
            t0 = time.monotonic()
            resp = httpx.post(svc.url + "/backend/stop", headers=auth(), timeout=30)
            stop_times.append(time.monotonic() - t0)
            assert resp.status_code == 200, resp.text
            assert [p for p in members if alive(p)] == [], "router and model children stopped"
            assert ours(tmp_dir) == [], "an admin's stop removes the presets and the log"
            answer = ollama.Client(host=svc.url, headers=auth(), timeout=120).chat(
                model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}
            )
            assert answer.message.content
            router = wait_ready(svc)["pid"]
        print(f"admin stop after cancelled streams: {', '.join(f'{t:.2f}' for t in stop_times)} s")
        assert max(stop_times) < 3, stop_times
        members = group_members(router)
    finally:
        svc.stop()
    assert svc.popen.returncode == 0
    deadline = time.monotonic() + 5
    while [p for p in members if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p for p in members if alive(p)] == []
    assert ours(tmp_dir) == [], "a clean service stop leaves nothing behind"


async def cancelled_streams(url: str, n: int) -> None:
    """``n`` long streams at once, each dropped after its first few chunks."""
    body = {
        "model": "smollm2:135m",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "stream": True,
        "max_tokens": 2000,
    }

    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=auth()) as resp:
            assert resp.status_code == 200
            chunks = 0
            async for _ in resp.aiter_lines():
                chunks += 1
                if chunks >= 6:
                    break  # leaving the block closes the connection: the stream is cancelled

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(client) for _ in range(n)))
