"""The Slurm launcher's decisions, driven in-process by a fake Slurm (``tests/resources/fake_slurm.py``).

What is decided here: submit exactly once under concurrent demand, the renew window, idle release,
the next poll interval, adoption after a restart, a failing squeue (``unknown``, never "job gone"),
a rejected sbatch (``failed`` + backoff). How Slurm itself behaves is checked on the real cluster
(``tests/test_slurm.py``); these run in milliseconds each.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from jupyter_llm_af.backends import slurm as slurm_module
from jupyter_llm_af.backends.slurm import SlurmBackend, SlurmSettings
from jupyter_llm_af.backends.slurm_settings import ready_path_for
from jupyter_llm_af.errors import BackendUnavailable
from jupyter_llm_af.gateway import SECRET_HEADER
from jupyter_llm_af.state import BackendState

from .resources.fake_slurm import FakeSlurm

JOB = "llmaf-fake"


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    # the product polls at 5 Hz at most; in-process the fake answers at once
    monkeypatch.setattr(slurm_module, "FAST_POLL_S", 0.01)
    monkeypatch.setattr(slurm_module, "UNKNOWN_POLL_S", 0.02)


@pytest_asyncio.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeSlurm]:
    slurm = FakeSlurm(tmp_path / "state")
    yield slurm
    await slurm.close()


@pytest_asyncio.fixture
async def make(tmp_path: Path, fake: FakeSlurm) -> AsyncIterator[Callable[..., SlurmBackend]]:
    made: list[SlurmBackend] = []

    def factory(**overrides: object) -> SlurmBackend:
        values: dict = dict(
            state_dir=tmp_path / "state",
            job_name=JOB,
            time_limit="1",  # minutes, as sbatch --time
            idle_timeout=600.0,
            renew_before=600.0,
            backend_ready_timeout=5.0,
            submit_backoff=30.0,
            probe_timeout=1.0,
            steady_poll=0.05,
            max_pending_poll=0.05,
        )
        values.update(overrides)
        backend = SlurmBackend(SlurmSettings(**values), cli=fake)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.shutdown()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_concurrent_demand_submits_exactly_one_job(make, fake: FakeSlurm) -> None:
    fake.submit_delay = 0.05  # a slow sbatch: every request arrives while it runs
    backend = make()
    await backend.start()
    assert backend.state is BackendState.IDLE
    started = time.monotonic()
    endpoints = await asyncio.gather(*(backend.ready_endpoint(soon()) for _ in range(25)))
    assert len(set(endpoints)) == 1 and fake.calls["submit"] == 1
    assert [j.id for j in fake.active(JOB)] == [endpoints[0].key]
    assert time.monotonic() - started < 2
    # later demand is served by the same job
    assert await backend.ready_endpoint(soon()) == endpoints[0] and fake.calls["submit"] == 1
    doc = backend.describe(admin=True)
    assert doc["state"] == "ready" and doc["backend_url"] == endpoints[0].url
    assert doc["job"] is not None and doc["job"]["node"] == "fakenode" and doc["job"]["ready"] is True


@pytest.mark.asyncio
async def test_renew_window_is_at_most_half_the_time_limit(make, fake: FakeSlurm) -> None:
    backend = make(renew_before=600.0)
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    job = fake.jobs[endpoint.key]
    cur = backend._current
    assert cur is not None and cur.info is not None
    assert backend._renew_window(cur) == 30.0  # 1 min limit: min(600, 60 / 2)

    job.time_left_override = 31.0  # outside the window: nothing to do
    backend._wake.set()
    await asyncio.sleep(0.2)
    assert backend._successor is None and fake.calls["submit"] == 1

    fake.auto_run = False  # the successor pends (the GPU is taken)
    job.time_left_override = 29.0  # inside, users active: a successor is submitted, once
    backend.note_activity()
    await until(lambda: backend.state is BackendState.RENEWING)
    await asyncio.sleep(0.2)
    successor = backend._successor
    assert fake.calls["submit"] == 2 and successor is not None
    assert backend.describe()["message"].startswith(f"Renewing: successor job {successor.id} pending (")
    assert await backend.ready_endpoint(soon()) == endpoint, "the old job serves meanwhile"

    await fake.run(successor.id)  # once it answers: new leases go to it, the old job is cancelled
    await until(lambda: fake.jobs[endpoint.key].state == "CANCELLED")
    assert (await backend.ready_endpoint(soon())).key == successor.id
    assert backend.state is BackendState.READY and fake.calls["submit"] == 2


@pytest.mark.asyncio
async def test_near_its_end_a_job_nobody_uses_is_released_not_renewed(make, fake: FakeSlurm) -> None:
    backend = make(idle_timeout=600.0)
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    backend.last_activity = time.monotonic() - 601  # nobody asked within idle_timeout
    fake.jobs[endpoint.key].time_left_override = 10.0
    await until(lambda: backend.state is BackendState.IDLE)
    assert fake.calls["submit"] == 1 and fake.jobs[endpoint.key].state == "CANCELLED"


@pytest.mark.asyncio
async def test_a_job_without_time_limit_is_never_renewed(make, fake: FakeSlurm) -> None:
    backend = make(time_limit="UNLIMITED", renew_before=600.0)
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    cur = backend._current
    assert cur is not None and cur.info is not None and cur.info.time_limit_s == math.inf
    assert backend._renew_window(cur) == 600.0
    for _ in range(5):
        backend.note_activity()
        await asyncio.sleep(0.05)
    assert backend._successor is None and fake.calls["submit"] == 1
    assert backend.describe()["message"] == "Ready on node fakenode, no time limit"
    assert (await backend.ready_endpoint(soon())) == endpoint


@pytest.mark.asyncio
async def test_idle_release_cancels_and_removes_the_endpoint_file(make, fake: FakeSlurm) -> None:
    backend = make(idle_timeout=0.3)
    await backend.start()
    async with backend.lease(soon()) as endpoint:
        await asyncio.sleep(0.5)  # a long request: in flight, so never released under it
        assert backend.state is BackendState.READY and fake.calls["cancel"] == 0
    released = time.monotonic()
    await until(lambda: backend.state is BackendState.IDLE)
    assert 0.25 < time.monotonic() - released < 1.5
    assert fake.jobs[endpoint.key].state == "CANCELLED" and fake.calls["cancel"] == 1
    assert not (backend.state_dir / f"endpoint-{endpoint.key}.json").exists()
    # the next request submits a new job
    again = await backend.ready_endpoint(soon())
    assert again.key != endpoint.key and fake.calls["submit"] == 2


@pytest.mark.asyncio
async def test_next_poll_interval(make, fake: FakeSlurm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_module, "FAST_POLL_S", 0.2)  # the product's value
    fake.auto_run = False
    backend = make(steady_poll=5.0, max_pending_poll=5.0, idle_timeout=1800.0, renew_before=600.0)
    await backend.start()
    assert backend._next_interval() == 60.0  # nothing to watch: a request wakes the loop

    waiter = asyncio.create_task(backend.ready_endpoint(soon(30)))
    await until(lambda: backend._current is not None)
    cur = backend._current
    assert cur is not None
    assert backend._next_interval() == pytest.approx(0.2, abs=0.01)  # just submitted: fast
    cur.submitted_mono -= 10
    assert backend._next_interval() == pytest.approx(2.0, abs=0.05)  # pending 10 s: age / 5
    cur.submitted_mono -= 100
    assert backend._next_interval() == 5.0  # pending long: max_pending_poll

    await fake.run(cur.id)
    await until(lambda: cur.ready)
    assert (await asyncio.wait_for(waiter, 1)).key == cur.id
    cur.running_since = time.monotonic() - 0.5  # running, not ready: fast while it starts
    cur.ready = False
    assert backend._next_interval() == pytest.approx(0.2, abs=0.01)
    cur.ready = True
    fake.jobs[cur.id].time_left_override = 40.0  # ready, 40 s left, window 30 s: wake in ~10 s
    cur.info = fake.jobs[cur.id].info()  # as the next squeue would say
    assert backend._next_interval() == pytest.approx(5.0, abs=0.05)  # steady poll comes first
    fake.jobs[cur.id].time_left_override = 32.0
    cur.info = fake.jobs[cur.id].info()
    assert backend._next_interval() == pytest.approx(2.0, abs=0.1)  # in time for the renewal
    backend.last_activity = time.monotonic() - 1800 + 1.0
    assert backend._next_interval() == pytest.approx(1.0, abs=0.1)  # in time for the idle release


@pytest.mark.asyncio
async def test_restart_adopts_the_running_job(make, fake: FakeSlurm) -> None:
    first = make(cancel_on_shutdown=False)
    await first.start()
    endpoint = await first.ready_endpoint(soon())
    await first.shutdown()
    assert [j.id for j in fake.active(JOB)] == [endpoint.key], "the job survives the shutdown"

    second = make()
    await second.start()  # adoption happens before start() returns
    job = second.describe()["job"]
    assert job is not None and job["id"] == endpoint.key
    assert await second.ready_endpoint(soon()) == endpoint
    assert fake.calls["submit"] == 1, "adopted, not submitted again"


@pytest.mark.asyncio
async def test_failing_squeue_is_unknown_never_job_gone(make, fake: FakeSlurm) -> None:
    backend = make()
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    fake.controller_up = False
    await until(lambda: backend.state is BackendState.UNKNOWN)
    await asyncio.sleep(0.2)
    doc = backend.describe()
    assert doc["job"] is not None and doc["job"]["id"] == endpoint.key and doc["job"]["state"] == "UNKNOWN"
    assert doc["message"].startswith("Slurm is not answering (") and "serving from job" in doc["message"]
    # the backend still answers: still served, nothing cancelled, nothing submitted
    assert await backend.ready_endpoint(soon(1)) == endpoint
    assert fake.calls["cancel"] == 0 and fake.calls["submit"] == 1
    assert fake.calls["ping"] > 0, "while down the launcher asks scontrol ping, not squeue"

    # a launcher started during the outage cannot know whether a job exists: it submits nothing
    restarted = make()
    await restarted.start()
    assert restarted.state is BackendState.UNKNOWN
    with pytest.raises(BackendUnavailable, match="Slurm is not answering"):
        await restarted.ready_endpoint(soon(0.3))
    assert fake.calls["submit"] == 1

    fake.controller_up = True
    await until(lambda: backend.state is BackendState.READY and restarted.state is BackendState.READY)
    assert await restarted.ready_endpoint(soon()) == endpoint and fake.calls["submit"] == 1


@pytest.mark.asyncio
async def test_rejected_sbatch_fails_at_once_then_backs_off(make, fake: FakeSlurm) -> None:
    rejection = (
        "sbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    fake.reject_with = rejection
    backend = make(submit_backoff=0.5)
    await backend.start()
    waiters = [asyncio.create_task(backend.ready_endpoint(soon())) for _ in range(3)]
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results)
    assert "Invalid partition name specified" in str(results[0])
    assert backend.state is BackendState.FAILED and fake.calls["submit"] == 1
    doc = backend.describe()
    assert doc["last_error"] is not None and "invalid partition specified: nosuch" in doc["last_error"]
    assert doc["message"].startswith("The GPU job failed: ")

    # within the backoff: answered at once with Retry-After, no second sbatch
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as again:
        await backend.ready_endpoint(soon())
    assert time.monotonic() - started < 0.1
    assert again.value.retry_after is not None and 1 <= again.value.retry_after <= 1
    assert fake.calls["submit"] == 1

    # after it, a request tries again and (the site fixed it) is served
    await asyncio.sleep(0.6)
    fake.reject_with = None
    endpoint = await backend.ready_endpoint(soon())
    assert fake.calls["submit"] == 2 and backend.state is BackendState.READY
    assert endpoint.key == fake.active(JOB)[0].id


@pytest.mark.asyncio
async def test_sbatch_timing_out_after_submitting_is_adopted_not_duplicated(make, fake: FakeSlurm) -> None:
    backend = make(submit_backoff=0.2)
    await backend.start()
    fake.lose_submit_reply = True  # sbatch is killed by its timeout, but the job was queued
    waiter = asyncio.create_task(backend.ready_endpoint(soon(5)))
    endpoint = await waiter
    assert fake.calls["submit"] == 1, "the listing found the job: no second sbatch"
    assert [j.id for j in fake.active(JOB)] == [endpoint.key]
    assert backend.state is BackendState.READY


@pytest.mark.asyncio
async def test_unreachable_sbatch_keeps_requests_waiting(make, fake: FakeSlurm) -> None:
    backend = make(submit_backoff=0.2)
    await backend.start()
    fake.submit_unreachable = True  # the controller stopped answering between squeue and sbatch
    waiter = asyncio.create_task(backend.ready_endpoint(soon(5)))
    await until(lambda: fake.calls["submit"] == 1)
    await asyncio.sleep(0.1)
    assert not waiter.done(), "requests keep waiting: Slurm did not say no"
    assert backend.describe()["last_error"] is not None
    assert "could not reach Slurm" in (backend.describe()["last_error"] or "")
    fake.submit_unreachable = False
    endpoint = await waiter
    assert fake.calls["submit"] == 2 and [j.id for j in fake.active(JOB)] == [endpoint.key]


@pytest.mark.asyncio
async def test_backend_that_stops_answering_leaves_ready(make, fake: FakeSlurm) -> None:
    backend = make(steady_poll=0.02, backend_ready_timeout=30.0)
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    server = fake.jobs[endpoint.key].server
    assert server is not None
    server.healthy = False
    await until(lambda: backend.state is BackendState.STARTING)
    assert backend.serving_url() is None
    waiter = asyncio.create_task(backend.ready_endpoint(soon()))
    await asyncio.sleep(0.1)
    assert not waiter.done(), "a request waits for the backend to answer again"
    server.healthy = True
    assert await waiter == endpoint


@pytest.mark.asyncio
async def test_job_ending_before_it_answers_fails_waiters_with_its_output(make, fake: FakeSlurm) -> None:
    fake.auto_run = False
    backend = make()
    await backend.start()
    waiter = asyncio.create_task(backend.ready_endpoint(soon()))
    await until(lambda: backend._current is not None)
    job_id = backend._current.id  # type: ignore[union-attr]
    await fake.run(job_id, serve=False)
    (backend.state_dir / f"{JOB}-{job_id}.out").write_text("loading\nCUDA error: no device\n")
    await fake.end(job_id, "FAILED")
    with pytest.raises(BackendUnavailable) as exc:
        await waiter
    assert f"Job {job_id} ended (FAILED) before its backend answered" in exc.value.message
    assert "CUDA error: no device" in exc.value.message
    assert backend.state is BackendState.FAILED


@pytest.mark.parametrize(
    "setting, protocol, command, path",
    [
        ("auto", "auto", "ollama serve", "/"),
        ("auto", "ollama", "/sw/ollama/bin/ollama serve", "/"),
        (
            "auto",
            "openai",
            "/opt/llama.cpp/bin/llama-server -m m.gguf --port $JUPYTER_LLM_AF_PORT",
            "/health",
        ),
        ("auto", "auto", "llama-server -m m.gguf", "/health"),  # the command wins over the protocol
        ("auto", "openai", "vllm serve meta-llama/Llama-3.1-8B-Instruct", "/health"),
        ("auto", "openai", "python -m sglang.launch_server --model-path m", "/health"),
        ("auto", "openai", "python -m llama_cpp.server --model m.gguf", "/v1/models"),
        ("auto", "openai", "site-wrapper --serve", "/health"),
        ("auto", "auto", "site-wrapper --serve", "/"),
        ("", "openai", "site-wrapper", "/health"),
        ("/v1/models", "ollama", "ollama serve", "/v1/models"),
        ("ready", "auto", "x", "/ready"),
    ],
)
def test_ready_path_fits_the_backend(setting: str, protocol: str, command: str, path: str) -> None:
    assert ready_path_for(setting, protocol, command) == path


def test_ready_path_from_the_service_settings(tmp_path: Path) -> None:
    from jupyter_llm_af.config import LLMService

    cfg = LLMService(backend_protocol="openai", slurm_backend_command="llama-server -m /m/x.gguf")
    assert SlurmSettings.from_config(cfg, runtime_dir=str(tmp_path)).ready_path == "/health"
    cfg = LLMService(slurm_ready_path="/v1/models")
    assert SlurmSettings.from_config(cfg, runtime_dir=str(tmp_path)).ready_path == "/v1/models"
    assert SlurmSettings.from_config(LLMService(), runtime_dir=str(tmp_path)).ready_path == "/"


@pytest.mark.asyncio
async def test_probe_uses_the_ready_path(make, fake: FakeSlurm) -> None:
    backend = make(backend_command="llama-server -m m.gguf", protocol="openai")
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    server = fake.jobs[endpoint.key].server
    assert server is not None
    assert {path for method, path, _ in server.requests} == {"/health"}


@pytest.mark.asyncio
async def test_gateway_secret_in_a_0600_file_never_in_the_script(make, fake: FakeSlurm) -> None:
    fake.auto_run = False
    first = make(cancel_on_shutdown=False)
    await first.start()
    waiter = asyncio.create_task(first.ready_endpoint(soon()))
    await until(lambda: first._current is not None)
    job = fake.jobs[first._current.id]  # type: ignore[union-attr]
    (nonce_file,) = first.state_dir.glob("secret-*")
    assert nonce_file.stat().st_mode & 0o777 == 0o600
    secret = nonce_file.read_text().strip()
    assert len(secret) >= 32 and secret not in job.script and str(nonce_file) in job.script

    await fake.run(job.id)  # the job renames it secret-<jobid> (for adoption) and guards its port
    endpoint = await waiter
    assert endpoint.headers == {SECRET_HEADER: secret} and secret not in repr(endpoint)
    server = fake.jobs[job.id].server
    assert server is not None and server.requests
    assert all(h.get(SECRET_HEADER.lower()) == secret for _, _, h in server.requests), "probes carry it"
    await first.shutdown()

    second = make()  # a restarted service finds the secret by job id
    await second.start()
    adopted = await second.ready_endpoint(soon())
    assert adopted == endpoint and adopted.headers == endpoint.headers
    await second.shutdown()  # cancels the job: its endpoint and secret files go
    assert sorted(p.name for p in second.state_dir.iterdir()) == []


@pytest.mark.asyncio
async def test_rejected_sbatch_leaves_no_secret_file(make, fake: FakeSlurm) -> None:
    fake.reject_with = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    backend = make()
    await backend.start()
    with pytest.raises(BackendUnavailable):
        await backend.ready_endpoint(soon())
    assert list(backend.state_dir.glob("secret-*")) == []


@pytest.mark.asyncio
async def test_without_the_gateway_no_secret_is_made_or_sent(make, fake: FakeSlurm) -> None:
    backend = make(gateway=False)
    assert "\nGATEWAY=false\n" in backend.render_script() and "import asyncio" not in backend.render_script()
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    assert endpoint.headers == {} and list(backend.state_dir.glob("secret-*")) == []


@pytest.mark.asyncio
async def test_unwritable_state_dir_fails_requests_at_once_with_the_reason(
    make, fake: FakeSlurm, tmp_path: Path
) -> None:
    (tmp_path / "not-a-dir").write_text("")  # even root cannot create a directory under a file
    backend = make(state_dir=tmp_path / "not-a-dir" / "state")
    await backend.start()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as exc:
        await backend.ready_endpoint(soon())
    assert time.monotonic() - started < 1
    assert "cannot be written" in exc.value.message and "slurm_state_dir" in exc.value.message
    assert backend.state is BackendState.FAILED and fake.calls["submit"] == 0


@pytest.mark.asyncio
async def test_job_events_reach_the_metrics(make, fake: FakeSlurm) -> None:
    """The launcher tells the service's telemetry what its jobs do; Prometheus series follow."""
    from jupyter_llm_af.metrics import Metrics

    metrics = Metrics()
    backend = make()
    seen: list[str] = []

    def on_event(event: str, **labels: object) -> None:
        seen.append(event)
        metrics.slurm_event(event, **labels)

    backend.on_event = on_event
    await backend.start()
    endpoint = await backend.ready_endpoint(soon())
    await backend.control("stop")
    assert seen[:2] == ["submitted", "ready"] and "released" in seen, seen
    text = metrics.render()[0].decode()
    assert "jupyter_llm_af_slurm_submissions_total 1.0" in text
    assert "jupyter_llm_af_slurm_ready_total 1.0" in text
    assert endpoint.key
