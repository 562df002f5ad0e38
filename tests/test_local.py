"""backend='local': a process on this machine, started on demand on a free port, probed, restarted
if it died, and stopped with the service (also when the service is killed)."""

from __future__ import annotations

import os
import signal
import sys
import time

import httpx
import ollama
import pytest

from .conftest import TOKEN, auth, start_standalone


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
        f"c.LLMService.local_command = [{sys.executable!r}, '-m', 'tests.ollama_double',"
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
