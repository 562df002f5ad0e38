"""Slurm launcher against a real one-node Slurm (``.ci/slurm-up.sh``), never a fake sbatch.

The job's backend is the Ollama test double (``tests.resources.ollama_double``) on 127.0.0.1. Every test
uses a unique job name and a fixture cancels whatever is left with that name.
Run: ``pytest -m slurm tests/test_slurm.py`` (as root if the cluster must be started).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from jupyter_llm_af.backends.base import Endpoint
from jupyter_llm_af.backends.slurm import SlurmBackend, human_duration
from jupyter_llm_af.backends.slurm_cli import (
    JobPhase,
    parse_duration,
    parse_job_line,
    parse_submit_output,
    parse_timestamp,
)
from jupyter_llm_af.errors import BackendUnavailable
from jupyter_llm_af.gateway import SECRET_HEADER

from . import slurm_helpers as sh

# -- pure parsing (no cluster) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("0:03", 3),
        ("9:57", 597),
        ("1:02:03", 3723),
        ("1-00:00:00", 86400),
        ("2-03:04:05", 183845),
        ("1-02", 93600),
        ("5", 300),
        ("UNLIMITED", math.inf),
        ("INVALID", None),
        ("N/A", None),
        ("", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_parse_job_line_and_submit_output() -> None:
    running = parse_job_line(
        "1|llm|RUNNING|None|localhost|9:57|10:00|2026-11-25T09:13:01|2026-11-25T09:23:01|N/A"
    )
    assert (running.id, running.phase, running.reason, running.nodes) == (
        "1",
        JobPhase.RUNNING,
        "",
        "localhost",
    )
    assert running.time_left_s == 597 and running.time_limit_s == 600
    assert running.end_time is not None and running.submit_time is None
    pending = parse_job_line(
        "2|a|b|PENDING|Resources||10:00|10:00|N/A|N/A|2026-11-25T09:13:01"
    )  # '|' in name
    assert (pending.name, pending.phase, pending.reason, pending.start_time) == (
        "a|b",
        JobPhase.PENDING,
        "Resources",
        None,
    )
    assert parse_job_line("3|x|TIMEOUT|TimeLimit|localhost|INVALID|1:00|N/A|N/A|N/A").phase is JobPhase.ENDED
    assert parse_submit_output("22\n") == "22"
    assert parse_submit_output("22;cluster\n") == "22"
    assert parse_submit_output("Submitted batch job 7\n") == "7"
    assert parse_timestamp("Unknown") is None


def test_human_duration() -> None:
    assert [human_duration(s) for s in (45, 240, 3 * 3600 + 12 * 60 + 5, 90000)] == [
        "45 s",
        "4 min",
        "3 h 12 min",
        "1 d 1 h",
    ]


def test_from_config_reads_the_service_settings(tmp_path: Path) -> None:
    from jupyter_llm_af.config import LLMService

    cfg = LLMService(
        slurm_partition="gpu",
        slurm_gres="gpu:a100:1",
        slurm_time_limit="02:00:00",
        slurm_extra_directives=["--mem=64G"],
        slurm_backend_env={"OLLAMA_MODELS": "/models dir/x"},
        slurm_job_name="llm-svc",
        renew_before=300.0,
        idle_timeout=900.0,
    )
    backend = SlurmBackend.from_config(cfg, runtime_dir=str(tmp_path))
    assert backend.state_dir == tmp_path / "llm-af-slurm"
    settings = backend.settings
    assert (settings.renew_before, settings.idle_timeout, settings.job_name) == (300.0, 900.0, "llm-svc")
    script = backend.render_script()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gres=gpu:a100:1", "#SBATCH --mem=64G"):
        assert line in script.splitlines()
    assert "#SBATCH --time=02:00:00" in script and "#SBATCH --signal=B:USR1@300" in script
    assert "export OLLAMA_MODELS='/models dir/x'" in script
    assert "endpoint-$SLURM_JOB_ID.json" in script and "ollama serve &" in script
    info = backend.describe(admin=True)
    assert info["state"] == "idle" and info["job"] is None and info["message"].startswith("No GPU job")


# -- the real cluster --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start the local cluster if needed; leave it running for later tests."""
    why = sh.ensure_slurm()
    if why:
        pytest.skip(why)


@pytest.fixture
def job_name(slurm_cluster: None) -> Iterator[str]:
    """A unique job name; afterwards no job whose name starts with it may remain."""
    name = sh.unique_job_name()
    yield name
    sh.cancel_named(name)
    assert not sh.jobs_named(name), "jobs left behind"


@pytest_asyncio.fixture
async def make_backend(tmp_path: Path, job_name: str) -> AsyncIterator[Callable[..., SlurmBackend]]:
    """Factory of started-later SlurmBackends (plain settings); all shut down afterwards."""
    made: list[SlurmBackend] = []

    def factory(**overrides: object) -> SlurmBackend:
        backend = SlurmBackend(**sh.backend_settings(tmp_path / "state", job_name, **overrides))
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.shutdown()


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


async def generate(endpoint: Endpoint, model: str = "tiny:1b", n: int = 3) -> dict:
    """A request straight to the job, as the service sends it (with the endpoint's gateway secret)."""
    async with httpx.AsyncClient(trust_env=False, headers=endpoint.headers) as client:
        r = await client.post(
            endpoint.url + "/api/generate",
            json={"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": n}},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_concurrent_first_requests_submit_exactly_one_job(make_backend, job_name: str) -> None:
    backend = make_backend()
    await backend.start()
    assert backend.describe()["state"] == "idle"
    assert backend.describe()["message"] == "No GPU job (starts on first request)"

    started = time.monotonic()
    endpoints = await asyncio.gather(*(backend.ready_endpoint(deadline(60)) for _ in range(12)))
    took = time.monotonic() - started

    assert len(set(endpoints)) == 1
    endpoint = endpoints[0]
    assert backend.cli.calls["submit"] == 1
    assert len(sh.jobs_named(job_name, all_states=True)) == 1, "Slurm saw more than one job"
    assert endpoint.key == backend.submitted_job_ids[0]
    assert took < 20, f"cold start took {took:.1f} s"

    endpoint_file = backend.state_dir / f"endpoint-{endpoint.key}.json"
    assert json.loads(endpoint_file.read_text())["port"] == int(endpoint.url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(trust_env=False) as client:
        assert (await client.get(endpoint.url + "/", headers=endpoint.headers)).text == "Ollama is running"
    assert (await generate(endpoint))["done"] is True

    info = backend.describe(admin=True)
    assert info["state"] == "ready" and info["backend_url"] == endpoint.url
    assert info["message"].startswith("Ready on node localhost, ") and info["message"].endswith(" left")
    job = info["job"]
    assert job["id"] == endpoint.key and job["state"] == "RUNNING" and job["node"] == "localhost"
    assert job["time_limit_s"] == 300 and 0 < job["time_left_s"] <= 300
    for key in ("submitted_at", "started_at", "end_time"):
        assert "T" in job[key]
    assert "backend_url" not in backend.describe()

    await backend.shutdown()
    await sh.wait_until(lambda: not sh.jobs_named(job_name), 10, what="job cancelled on shutdown")
    assert not endpoint_file.exists()


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_requests_wait_while_pending_then_succeed(make_backend, job_name: str) -> None:
    holder = sh.sbatch_wrap(f"{job_name}-holder", "sleep 300", "--gres=gpu:1", "--time=5")
    await sh.wait_until(lambda: sh.job_state(holder) == "RUNNING", 15, what="GPU holder running")
    backend = make_backend()
    await backend.start()

    waiting = [asyncio.create_task(backend.ready_endpoint(deadline(90))) for _ in range(3)]
    await sh.wait_until(
        lambda: backend.state == "pending" and (backend.describe()["job"] or {}).get("reason"),
        15,
        what="pending",
    )
    info = backend.describe()
    job_id = info["job"]["id"]
    assert info["job"]["reason"] in ("Resources", "Priority")
    assert info["message"].startswith(f"Waiting for a GPU: job {job_id} pending ({info['job']['reason']})")
    assert backend.wait_message() == info["message"]

    # a request whose wait limit passes first gets 503 naming the job and why it waits
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(deadline(1))
    assert exc.value.status == 503 and exc.value.retry_after is not None and exc.value.retry_after <= 60
    assert f"job {job_id} pending (" in exc.value.message

    await asyncio.sleep(2)
    assert not any(t.done() for t in waiting), "requests must wait while the job pends"
    assert (
        backend.describe()["job"]["estimated_start"] is None
        or "T" in backend.describe()["job"]["estimated_start"]
    )

    await sh.scancel(holder)
    released = time.monotonic()
    endpoints = await asyncio.wait_for(asyncio.gather(*waiting), 30)
    print(f"pending job ready {time.monotonic() - released:.2f} s after the GPU was released")
    assert {e.key for e in endpoints} == {job_id}
    assert backend.cli.calls["submit"] == 1
    assert (await generate(endpoints[0]))["done"] is True


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_idle_release_leaves_squeue_empty(make_backend, job_name: str) -> None:
    backend = make_backend(idle_timeout=2.0)
    await backend.start()
    async with backend.lease(deadline(60)) as endpoint:
        await generate(endpoint)
    assert sh.jobs_named(job_name)
    took = await sh.wait_until(lambda: not sh.jobs_named(job_name), 15, what="idle release")
    assert backend.state == "idle"
    assert not (backend.state_dir / f"endpoint-{endpoint.key}.json").exists()
    assert took < 10, f"released {took:.1f} s after the last request (idle_timeout 2 s)"

    # the next request starts a new job
    again = await backend.ready_endpoint(deadline(60))
    assert again.key != endpoint.key and backend.cli.calls["submit"] == 2


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_restart_adopts_running_job(make_backend, job_name: str) -> None:
    first = make_backend(cancel_on_shutdown=False)
    await first.start()
    endpoint = await first.ready_endpoint(deadline(60))
    await first.shutdown()
    assert [r[0] for r in sh.jobs_named(job_name)] == [endpoint.key], "job must survive the shutdown"

    second = make_backend()
    await second.start()  # adoption happens before start() returns
    assert second.describe()["job"]["id"] == endpoint.key
    adopted = await second.ready_endpoint(deadline(30))
    assert adopted == endpoint
    assert second.cli.calls["submit"] == 0
    assert (await generate(adopted))["done"] is True
    await second.shutdown()
    await sh.wait_until(lambda: not sh.jobs_named(job_name), 10, what="adopted job cancelled")


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_sbatch_rejected_fails_with_slurms_message(make_backend, job_name: str) -> None:
    backend = make_backend(partition="nosuch", submit_backoff=30.0)
    await backend.start()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(deadline(60))
    assert time.monotonic() - started < 10, "a rejected sbatch must not make requests wait"
    assert "Invalid partition name specified" in exc.value.message
    info = backend.describe()
    assert info["state"] == "failed" and info["job"] is None
    assert "invalid partition specified: nosuch" in info["last_error"]
    assert info["message"].startswith("The GPU job failed: ")

    # within submit_backoff: answered at once, no second sbatch
    with pytest.raises(BackendUnavailable) as again:
        await backend.ready_endpoint(deadline(60))
    assert again.value.retry_after is not None and 0 < again.value.retry_after <= 30
    assert backend.cli.calls["submit"] == 1
    assert not sh.jobs_named(job_name, all_states=True)


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_controller_down_unknown_keeps_serving_without_duplicate(make_backend, job_name: str) -> None:
    backend = make_backend(steady_poll=1.0)
    await backend.start()
    endpoint = await backend.ready_endpoint(deadline(60))
    try:
        sh.controller("down")
        await sh.wait_until(lambda: backend.state == "unknown", 20, what="state unknown")
        info = backend.describe()
        assert info["job"]["state"] == "UNKNOWN" and info["job"]["id"] == endpoint.key
        assert info["message"].startswith("Slurm is not answering (")
        assert "serving from job" in info["message"]
        # still served: same endpoint, real answers, and no second job submitted
        for _ in range(3):
            async with backend.lease(deadline(5)) as leased:
                assert leased == endpoint
                assert (await generate(leased))["done"] is True
            await asyncio.sleep(1)
        assert backend.cli.calls["submit"] == 1

        # a service (re)started during the outage cannot know whether a job exists: it submits nothing
        restarted = make_backend()
        await restarted.start()
        assert restarted.state == "unknown"
        with pytest.raises(BackendUnavailable) as exc:
            await restarted.ready_endpoint(deadline(2))
        assert "Slurm is not answering" in exc.value.message
        assert restarted.cli.calls["submit"] == 0
    finally:
        sh.controller("up")
    await sh.wait_until(lambda: backend.state == "ready", 20, what="ready again")
    assert backend.describe()["job"]["state"] == "RUNNING"
    assert (await restarted.ready_endpoint(deadline(20))) == endpoint, "adopted once Slurm answers"
    assert restarted.cli.calls["submit"] == 0
    assert backend.cli.calls["submit"] == 1
    assert [r[0] for r in sh.jobs_named(job_name, all_states=True)] == [endpoint.key]


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_successor_handover_under_load_has_no_failures(make_backend, job_name: str) -> None:
    # No GRES here: the test cluster has one GPU, and a successor must run beside the old job.
    # time limit 1 min, renew window min(renew_before, limit/2) = 30 s: handover ~30 s after start.
    backend = make_backend(gres="", time_limit="1", renew_before=45.0, steady_poll=1.0)
    await backend.start()
    first = await backend.ready_endpoint(deadline(60))
    await generate(first, model="small:3b")  # loaded only on the first job: must be warmed

    served: dict[str, int] = {}
    failures: list[str] = []
    states: set[str] = set()
    messages: list[str] = []
    last_done = time.monotonic()
    longest_pause = 0.0
    stop = asyncio.Event()

    async def client() -> None:
        nonlocal last_done, longest_pause
        async with httpx.AsyncClient(trust_env=False) as http:
            while not stop.is_set():
                try:
                    async with backend.lease(deadline(60)) as endpoint:
                        r = await http.post(
                            endpoint.url + "/api/generate",
                            headers=endpoint.headers,
                            json={
                                "model": "tiny:1b",
                                "prompt": "x",
                                "stream": False,
                                "options": {"num_predict": 4},
                            },
                            timeout=30,
                        )
                        r.raise_for_status()
                        served[endpoint.key] = served.get(endpoint.key, 0) + 1
                except Exception as e:  # every failure counts
                    failures.append(repr(e))
                now = time.monotonic()
                longest_pause = max(longest_pause, now - last_done)
                last_done = now

    async def watch() -> None:
        while not stop.is_set():
            states.add(backend.state)
            if backend.state == "renewing":
                messages.append(backend.wait_message())
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(client()) for _ in range(3)] + [asyncio.create_task(watch())]
    try:
        await sh.wait_until(
            lambda: (
                backend.describe()["job"]["id"] != first.key
                and first.key not in backend.describe()["draining"]
            ),
            100,
            interval=0.5,
            what="handover to the successor",
        )
        await asyncio.sleep(2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    successor = backend.describe(admin=True)
    print(f"served {served}, failures {len(failures)}, longest pause {longest_pause:.2f} s, states {states}")
    assert failures == []
    assert set(served) == {first.key, successor["job"]["id"]}
    assert "renewing" in states
    assert any(m.startswith(f"Renewing: successor job {successor['job']['id']} ") for m in messages)
    assert longest_pause < 5
    # the old job was cancelled by the handover, before Slurm's time limit
    assert sh.job_state(first.key) == "CANCELLED"
    assert backend.cli.calls["submit"] == 2
    async with httpx.AsyncClient(trust_env=False) as http:
        serving = backend.serving_endpoint()
        assert serving is not None and serving.url == successor["backend_url"]
        loaded = (await http.get(serving.url + "/api/ps", headers=serving.headers)).json()["models"]
    assert "small:3b" in {m["name"] for m in loaded}, "models of the old job are warmed on the successor"


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_old_job_ending_before_successor_is_ready_makes_requests_wait(
    make_backend, job_name: str
) -> None:
    # With the single GPU the successor pends behind the job it replaces; the old job then ends
    # (cancelled here, as by an admin or a node failure): requests wait for the successor.
    backend = make_backend(time_limit="1", renew_before=45.0, steady_poll=1.0, idle_timeout=600.0)
    await backend.start()
    first = await backend.ready_endpoint(deadline(60))

    async def keep_active() -> None:
        while True:
            backend.note_activity()
            await asyncio.sleep(1)

    activity = asyncio.create_task(keep_active())
    try:
        await sh.wait_until(lambda: backend.state == "renewing", 60, interval=0.5, what="successor submitted")
        successor_id = backend.describe()["successor"]["id"]
        await sh.wait_until(lambda: (backend.describe()["successor"] or {}).get("reason"), 10, what="reason")
        assert backend.describe()["successor"]["reason"] in ("Resources", "Priority")
        assert backend.wait_message().startswith(f"Renewing: successor job {successor_id} pending (")
        # the old job still serves while its successor pends
        assert await backend.ready_endpoint(deadline(1)) == first

        await sh.scancel(first.key)
        ended = time.monotonic()
        backend.endpoint_failed(first)  # what the proxy reports when the old job refuses connections
        await sh.wait_until(lambda: backend.describe()["job"]["id"] == successor_id, 10, what="promotion")
        noticed = time.monotonic() - ended
        assert backend.state in ("pending", "starting")  # not served: requests wait
        endpoint = await backend.ready_endpoint(deadline(60))
        print(f"end noticed after {noticed:.2f} s; requests waited {time.monotonic() - ended:.2f} s in all")
    finally:
        activity.cancel()
    assert endpoint.key == successor_id
    assert (await generate(endpoint))["done"] is True
    assert backend.cli.calls["submit"] == 2


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_backend_crash_fails_waiters_with_its_output(make_backend, job_name: str) -> None:
    backend = make_backend(backend_command="sh -c 'echo backend crashed: no CUDA device >&2; exit 3'")
    await backend.start()
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(deadline(60))
    assert "before its backend answered" in exc.value.message
    assert "backend crashed: no CUDA device" in exc.value.message
    assert backend.state == "failed" and "backend crashed" in backend.describe()["last_error"]
    assert backend.cli.calls["submit"] == 1


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_backend_that_never_answers_is_cancelled(make_backend, job_name: str) -> None:
    backend = make_backend(backend_command="sleep 300", backend_ready_timeout=2.0)
    await backend.start()
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(deadline(60))
    assert "did not answer within 2 s" in exc.value.message
    assert backend.state == "failed"
    await sh.wait_until(lambda: not sh.jobs_named(job_name), 10, what="job cancelled")


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_admin_start_and_stop(make_backend, job_name: str) -> None:
    backend = make_backend()
    await backend.start()
    state = await backend.control("start")
    assert state["state"] in ("submitting", "pending", "starting", "ready", "idle")
    await sh.wait_until(lambda: backend.state == "ready", 30, what="ready without a request")
    assert backend.cli.calls["submit"] == 1

    waiter = asyncio.create_task(backend.ready_endpoint(deadline(30)))
    assert (await waiter).key == backend.submitted_job_ids[0]
    stopped = await backend.control("stop")
    assert stopped["state"] == "idle" and stopped["job"] is None
    await sh.wait_until(
        lambda: not sh.jobs_named(job_name), 10, what="job gone after stop"
    )  # COMPLETING first
    with pytest.raises(Exception, match="no 'restart' action"):
        await backend.control("restart")


# -- a real llama.cpp llama-server in the job ------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.llama
@pytest.mark.asyncio
async def test_llama_server_job_becomes_ready_and_answers_a_chat(make_backend, job_name: str) -> None:
    # llama-server answers "GET /" with 404: the probe must be /health (issue 14)
    backend = make_backend(
        backend_command=sh.llama_server_command(), protocol="openai", backend_ready_timeout=120.0
    )
    assert backend.settings.ready_path == "/health"
    await backend.start()
    started = time.monotonic()
    endpoint = await backend.ready_endpoint(deadline(120))
    print(f"llama-server job ready {time.monotonic() - started:.2f} s after the first request")
    assert backend.state == "ready"
    async with httpx.AsyncClient(trust_env=False) as bare:  # the gateway guards the job's port
        assert (await bare.get(endpoint.url + "/health")).status_code == 401
    async with httpx.AsyncClient(trust_env=False, headers=endpoint.headers) as http:
        assert (await http.get(endpoint.url + "/")).status_code == 404  # why "/" never made it ready
        body = {
            "model": "smollm2:135m",
            "messages": [{"role": "user", "content": "What is the capital of France? One sentence."}],
            "max_tokens": 24,
            "temperature": 0,
        }
        r = await http.post(endpoint.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["model"] == "smollm2:135m" and "Paris" in reply["choices"][0]["message"]["content"]
        pieces: list[str] = []
        async with http.stream(
            "POST", endpoint.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    pieces.append(delta.get("content") or "")
        assert "Paris" in "".join(pieces)


@pytest.mark.slurm
@pytest.mark.llama
@pytest.mark.asyncio
async def test_llama_server_probed_on_slash_never_becomes_ready(make_backend, job_name: str) -> None:
    # what every Slurm + llama-server site saw before: a clear error, the job cancelled
    backend = make_backend(
        backend_command=sh.llama_server_command(), ready_path="/", backend_ready_timeout=8.0
    )
    await backend.start()
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(deadline(60))
    assert "did not answer within 8 s" in exc.value.message
    await sh.wait_until(lambda: not sh.jobs_named(job_name), 15, what="job cancelled")


# -- the per-job gateway (issue 14) --------------------------------------------------------------


async def _output(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


def _gateway_pid(secret_file: Path) -> int:
    """The job's gateway process (``python3 - ... --secret-file FILE``), found by its command line."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--secret-file" in argv and str(secret_file).encode() in argv:
            return int(proc.name)
    raise AssertionError(f"no gateway process with {secret_file}")


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_gateway_guards_the_job_port(make_backend, job_name: str) -> None:
    announce = 'echo "backend binds $OLLAMA_HOST";'
    backend = make_backend(backend_command=f"{{ {announce} exec {sh.backend_command()}; }}")
    await backend.start()
    endpoint = await backend.ready_endpoint(deadline(60))
    secret_file = backend.state_dir / f"secret-{endpoint.key}"
    secret = secret_file.read_text().strip()
    assert endpoint.headers == {SECRET_HEADER: secret} and len(secret) >= 32
    assert secret_file.stat().st_mode & 0o777 == 0o600
    async with httpx.AsyncClient(trust_env=False) as http:
        for headers in ({}, {SECRET_HEADER: "guess"}):
            r = await http.post(endpoint.url + "/api/generate", headers=headers, json={"model": "tiny:1b"})
            assert r.status_code == 401, r.text
        assert (await http.get(endpoint.url + "/", headers=endpoint.headers)).text == "Ollama is running"
    assert (await generate(endpoint))["done"] is True
    # the backend itself listens on loopback, on another port than the advertised one
    output = (backend.state_dir / f"{job_name}-{endpoint.key}.out").read_text()
    inner = output.split("backend binds ", 1)[1].split()[0]
    assert inner.startswith("127.0.0.1:") and inner != f"127.0.0.1:{endpoint.url.rsplit(':', 1)[1]}"
    # the secret is nowhere else: not in the endpoint file, the job's stored script or its listing
    stored = await _output("scontrol", "write", "batch_script", endpoint.key, "-")
    shown = await _output("scontrol", "-o", "show", "job", endpoint.key)
    assert "--secret-file" in stored and "JUPYTER_LLM_AF_GATEWAY" in stored
    endpoint_file = (backend.state_dir / f"endpoint-{endpoint.key}.json").read_text()
    for text in (stored, shown, endpoint_file, output):
        assert secret not in text
    assert json.loads(endpoint_file)["gateway"] is True
    await backend.shutdown()
    assert not secret_file.exists(), "the secret goes with the job"


@pytest.mark.slurm
@pytest.mark.asyncio
async def test_job_whose_gateway_dies_is_a_dead_backend(make_backend, job_name: str) -> None:
    backend = make_backend()
    await backend.start()
    endpoint = await backend.ready_endpoint(deadline(60))
    os.kill(_gateway_pid(backend.state_dir / f"secret-{endpoint.key}"), signal.SIGKILL)
    killed = time.monotonic()
    async with httpx.AsyncClient(trust_env=False) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(endpoint.url + "/", headers=endpoint.headers, timeout=5)
    backend.endpoint_failed(endpoint)  # what the proxy reports when the job refuses connections
    await sh.wait_until(lambda: backend.state != "ready", 10, what="state leaves ready")
    await sh.wait_until(lambda: not sh.jobs_named(job_name), 15, what="the job ends with its gateway")
    print(f"gateway death noticed {time.monotonic() - killed:.2f} s after the kill")
    # the next request waits for a new endpoint and is served there
    again = await backend.ready_endpoint(deadline(60))
    assert again.key != endpoint.key and again.headers != endpoint.headers
    assert (await generate(again))["done"] is True
    assert backend.cli.calls["submit"] == 2
