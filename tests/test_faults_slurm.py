"""Fault suite (issue 14) on the real Slurm cluster: a real llama-server job behind the service, real
clients streaming through it, one fault at a time. Bounded in count and time.

Per fault it prints requests sent / answered / failed with a clear error / lost / orphaned jobs.
*Answered*: a complete stream (OpenAI ``data: [DONE]``, Ollama ``"done": true``). *Clear error*: an
error in the API's own format with a message (an HTTP error body, or an error event ending the
stream). *Lost*: anything else (a connection cut, a stream ending silently, a hang, a bare 500):
must be 0. *Orphaned*: jobs with the service's name left in Slurm after it stopped: must be 0.
Clients: two OpenAI ``/v1/chat/completions`` streams and one Ollama ``/api/chat`` stream in
loops; after a failed request a client waits 0.5 s (as a client backing off would).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from . import slurm_helpers as sh
from .conftest import Proc
from .test_slurm_service import USER, h, slurm_service

pytestmark = [pytest.mark.slurm, pytest.mark.llama]

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "Tell me about the river Seine in three sentences."}]
GATEWAY = "True"  # as sites run it: every backend request goes through the job's gateway


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    clear: int = 0
    lost: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    lost_examples: list[str] = field(default_factory=list)
    streaming: int = 0  # requests that have received body bytes and are not done

    def line(self, fault: str, orphaned: int) -> str:
        codes = ", ".join(f"{k}x{v}" for k, v in sorted(self.statuses.items()))
        return (
            f"FAULT {fault:<28} sent {self.sent:>3}  answered {self.answered:>3}  "
            f"failed-clear {self.clear:>3}  lost {self.lost}  orphaned jobs {orphaned}  [{codes}]"
        )


def _error_message(doc: object) -> str:
    """The message of an OpenAI (``{"error": {"message"}}``) or Ollama (``{"error": "..."}``) error."""
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or "")
    return str(err or "")


async def one_request(http: httpx.AsyncClient, url: str, api: str, tally: Tally) -> bool:
    """Send one streamed chat; classify it. True if answered."""
    tally.sent += 1
    if api == "openai":
        path, body = (
            "/v1/chat/completions",
            {"model": MODEL, "messages": QUESTION, "max_tokens": 64, "stream": True},
        )
    else:
        path, body = "/api/chat", {"model": MODEL, "messages": QUESTION, "options": {"num_predict": 64}}
    started = False
    try:
        async with http.stream("POST", url + path, json=body, headers=h(USER)) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                try:
                    message = _error_message(json.loads(text))
                except ValueError:
                    message = ""
                tally.statuses[str(r.status_code)] += 1
                if message and r.status_code != 500:
                    tally.clear += 1
                else:
                    tally.lost += 1
                    tally.lost_examples.append(f"{r.status_code} {text[:200]}")
                return False
            done = False
            error = ""
            async for line in r.aiter_lines():
                if not line.strip():
                    continue
                if not started:
                    started = True
                    tally.streaming += 1
                payload = line[6:] if line.startswith("data: ") else line
                if payload == "[DONE]":
                    done = True
                    continue
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                error = error or _error_message(doc)
                if api == "ollama" and isinstance(doc, dict) and doc.get("done") is True:
                    done = True
            if error:
                tally.statuses["200+error"] += 1
                tally.clear += 1
                return False
            if done:
                tally.statuses["200"] += 1
                tally.answered += 1
                return True
            tally.statuses["200 cut"] += 1
            tally.lost += 1
            tally.lost_examples.append(f"{api} stream ended without done or error")
            return False
    except httpx.HTTPError as e:
        tally.statuses[type(e).__name__] += 1
        tally.lost += 1
        tally.lost_examples.append(f"{api}: {e!r}")
        return False
    finally:
        if started:
            tally.streaming -= 1


async def traffic(
    url: str,
    tally: Tally,
    fault: Callable[[], Awaitable[object]],
    before: float,
    after: float,
    until: Callable[[], bool] | None = None,
    cap: float = 150.0,
) -> None:
    """Clients in loops; ``fault`` runs ``before`` s after they start; they stop ``after`` s after it
    (or, with ``until``, once it holds, at most ``cap`` s in all)."""
    stop = asyncio.Event()

    async def client(api: str) -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(90.0)) as http:
            while not stop.is_set():
                if not await one_request(http, url, api, tally):
                    await asyncio.sleep(0.5)

    clients = [asyncio.create_task(client(api)) for api in ("openai", "openai", "ollama")]
    started = time.monotonic()
    try:
        await asyncio.sleep(before)
        await fault()
        end = time.monotonic() + after
        while time.monotonic() < end or (until is not None and not until()):
            if time.monotonic() - started > cap:
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 120)


# -- the cluster side --------------------------------------------------------------------------------


@pytest.fixture
def job_name() -> Iterator[str]:
    why = sh.ensure_slurm()
    if why:
        pytest.fail(why)
    name = sh.unique_job_name("llmaf-fault")
    yield name
    sh.cancel_named(name)


def service(tmp_path: Path, job_name: str, **extra: str) -> Proc:
    settings = {
        "backend_protocol": "'openai'",
        "slurm_backend_command": repr(sh.llama_server_command()),
        "slurm_gateway": GATEWAY,
        "max_wait": "60",
        "idle_timeout": "600",
        "slurm_command_timeout": "8",
    }
    settings.update(extra)
    return slurm_service(tmp_path, job_name, **settings)


def running_job(job_name: str) -> str:
    rows = [r for r in sh.jobs_named(job_name) if r[2] == "RUNNING"]
    assert rows, f"no running job named {job_name}"
    return rows[0][0]


def backend_pids(job_id: str) -> list[int]:
    """llama-server processes of Slurm job ``job_id`` (by the job id in their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "comm").read_text().strip() != "llama-server":
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env:
            pids.append(int(proc.name))
    return pids


def warm_up(url: str) -> None:
    """One request, so that the job runs before the fault (its first start is not the subject)."""
    r = httpx.post(
        url + "/v1/chat/completions",
        headers=h(USER),
        json={"model": MODEL, "messages": QUESTION, "max_tokens": 4},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def finish(svc: Proc, job_name: str, tally: Tally, fault: str) -> None:
    svc.stop()
    end = time.monotonic() + 15
    while sh.jobs_named(job_name) and time.monotonic() < end:
        time.sleep(0.2)
    orphaned = len(sh.jobs_named(job_name))
    print("\n" + tally.line(fault, orphaned))
    for example in tally.lost_examples[:5]:
        print(f"    lost: {example}")
    assert tally.lost == 0, tally.lost_examples[:5]
    assert orphaned == 0
    assert tally.sent > 0


# -- the faults --------------------------------------------------------------------------------------


def test_backend_killed_mid_stream(tmp_path: Path, job_name: str) -> None:
    svc = service(tmp_path, job_name)
    tally = Tally()
    try:
        warm_up(svc.url)
        job = running_job(job_name)

        async def kill() -> None:
            end = time.monotonic() + 20
            while tally.streaming == 0 and time.monotonic() < end:
                await asyncio.sleep(0.05)
            pids = backend_pids(job)
            assert pids, "llama-server of the job not found"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)

        asyncio.run(traffic(svc.url, tally, kill, before=1.0, after=25.0))
        assert tally.answered > tally.sent // 3, "the service must come back with a new job"
    finally:
        finish(svc, job_name, tally, "backend killed mid-stream")


def test_job_cancelled_under_traffic(tmp_path: Path, job_name: str) -> None:
    svc = service(tmp_path, job_name)
    tally = Tally()
    try:
        warm_up(svc.url)
        job = running_job(job_name)

        async def cancel() -> None:
            await sh.scancel(job)

        asyncio.run(traffic(svc.url, tally, cancel, before=3.0, after=25.0))
        assert tally.answered > tally.sent // 3
    finally:
        finish(svc, job_name, tally, "job cancelled under traffic")


def test_job_hitting_its_time_limit(tmp_path: Path, job_name: str) -> None:
    # 1 minute; the successor pends behind it for the one GPU, so the old job runs into its limit
    svc = service(tmp_path, job_name, slurm_time_limit="'1'", renew_before="45")
    tally = Tally()
    try:
        warm_up(svc.url)
        first = running_job(job_name)
        served_after: list[int] = []

        def successor_served() -> bool:
            if sh.job_state(first) in ("RUNNING", "COMPLETING", "PENDING", ""):
                return False
            if not served_after:
                served_after.append(tally.answered)
            return tally.answered >= served_after[0] + 3

        async def nothing() -> None:
            pass

        asyncio.run(
            traffic(svc.url, tally, nothing, before=0.0, after=0.0, until=successor_served, cap=150.0)
        )
        print(f"first job {first}: {sh.job_state(first) or 'purged'}")
        assert served_after and tally.answered >= served_after[0] + 3, "the successor must serve"
    finally:
        finish(svc, job_name, tally, "job hitting its time limit")


def test_slurmctld_stopped_and_restarted(tmp_path: Path, job_name: str) -> None:
    svc = service(tmp_path, job_name)
    tally = Tally()
    try:
        warm_up(svc.url)

        async def outage() -> None:
            await asyncio.to_thread(sh.controller, "down")
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.to_thread(sh.controller, "up")

        asyncio.run(traffic(svc.url, tally, outage, before=2.0, after=10.0))
        assert tally.answered == tally.sent, "the running job keeps serving while Slurm is down"
    finally:
        finish(svc, job_name, tally, "slurmctld stopped+restarted")


def test_sbatch_rejected(tmp_path: Path, job_name: str) -> None:
    svc = service(tmp_path, job_name, slurm_partition="'nosuch'")
    tally = Tally()
    try:

        async def nothing() -> None:
            pass

        asyncio.run(traffic(svc.url, tally, nothing, before=0.0, after=8.0))
        assert tally.answered == 0 and tally.clear == tally.sent
    finally:
        finish(svc, job_name, tally, "sbatch rejected")


def test_state_dir_unwritable(tmp_path: Path, job_name: str) -> None:
    svc = service(tmp_path, job_name, submit_backoff="3")
    state = tmp_path / "state"
    tally = Tally()
    try:
        warm_up(svc.url)
        job = running_job(job_name)
        phases: dict[str, tuple[int, int]] = {}

        async def fault() -> None:
            # immutable: not even root creates files there (permission bits would not stop root)
            await asyncio.to_thread(subprocess.run, ["chattr", "+i", str(state)], check=True)
            try:
                await asyncio.sleep(4)  # the running job still serves
                phases["serving"] = (tally.answered, tally.clear)
                await sh.scancel(job)  # its successor cannot be prepared: clear errors, quickly
                await asyncio.sleep(10)
                phases["unwritable"] = (tally.answered, tally.clear)
            finally:
                await asyncio.to_thread(subprocess.run, ["chattr", "-i", str(state)], check=True)

        asyncio.run(traffic(svc.url, tally, fault, before=2.0, after=25.0))
        print(
            f"answered/clear after the serving phase {phases['serving']}, unwritable {phases['unwritable']}"
        )
        assert phases["unwritable"][1] > phases["serving"][1], "the reason reaches the clients"
        assert tally.answered > phases["unwritable"][0], "served again once the dir is writable"
    finally:
        subprocess.run(["chattr", "-i", str(state)], capture_output=True)
        finish(svc, job_name, tally, "state dir unwritable")


def test_service_killed_and_restarted_adopts_the_job(tmp_path: Path, job_name: str) -> None:
    """``kill -9`` of the service (no clean shutdown): the restarted service adopts the running job
    (same job id, its gateway secret read back from the state dir) and serves from it at once."""
    first = service(tmp_path, job_name)
    tally = Tally()
    try:
        warm_up(first.url)
        job = running_job(job_name)
        first.popen.send_signal(signal.SIGKILL)
        first.popen.wait(10)
        assert [r[0] for r in sh.jobs_named(job_name)] == [job]  # the job outlives its service
        svc = service(tmp_path, job_name)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = httpx.get(svc.url + "/backend/state", headers=h(USER), timeout=30).json()
                if st.get("serving"):
                    break
                time.sleep(0.2)
            assert st["serving"] and st["job"]["id"] == job, st

            async def nothing() -> None:
                return None

            asyncio.run(traffic(svc.url, tally, nothing, before=0.0, after=8.0))
            assert tally.answered > 0
            assert [r[0] for r in sh.jobs_named(job_name)] == [job]  # adopted, not resubmitted
        finally:
            finish(svc, job_name, tally, "service kill -9 + restart")
    finally:
        first.stop()
