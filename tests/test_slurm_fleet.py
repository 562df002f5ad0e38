"""Several Slurm jobs and pools (``slurm_max_jobs``, ``slurm_min_jobs``, ``slurm_pools``): the
scheduling decisions, driven in-process through the service's own wiring (``LLMCore``: the fleet,
the admission queue, its workers and pools) with a fake Slurm (``tests/resources/fake_slurm.py``).

Scale out after sustained demand and not on a blip, scale in to ``min_jobs``, placement on the job
that has the model loaded else the least loaded, pool routing, refusal when nothing fits, adoption
of every lane after a restart, the shape of ``/backend/state``. The real cluster:
``tests/test_slurm_scale.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from jupyter_llm_af.admission import Ticket
from jupyter_llm_af.backends import slurm as slurm_module
from jupyter_llm_af.backends import slurm_fleet as fleet_module
from jupyter_llm_af.backends.slurm import SlurmBackend
from jupyter_llm_af.backends.slurm_fleet import SlurmFleet
from jupyter_llm_af.config import LLMService
from jupyter_llm_af.errors import BadRequest
from jupyter_llm_af.pipeline import Identity, Request
from jupyter_llm_af.routes import route_for
from jupyter_llm_af.service import LLMCore
from jupyter_llm_af.state import JobDoc, PoolDoc

from .resources.fake_slurm import FakeSlurm

JOB = "llmaf-fleet"
# one request at a time per job: a second concurrent request waits in the queue
ONE_AT_A_TIME = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_LOADED_MODELS": "1"}


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_module, "FAST_POLL_S", 0.01)
    monkeypatch.setattr(slurm_module, "UNKNOWN_POLL_S", 0.02)
    monkeypatch.setattr(fleet_module, "FLEET_TICK_S", 0.02)


@pytest_asyncio.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeSlurm]:
    slurm = FakeSlurm(tmp_path / "state")
    yield slurm
    await slurm.close()


@pytest_asyncio.fixture
async def make(tmp_path: Path, fake: FakeSlurm) -> AsyncIterator[Callable[..., LLMCore]]:
    made: list[LLMCore] = []

    def factory(**settings: Any) -> LLMCore:
        values: dict[str, Any] = dict(
            backend="slurm",
            slurm_job_name=JOB,
            slurm_state_dir=str(tmp_path / "state"),
            slurm_time_limit="10",
            slurm_max_jobs=2,
            idle_timeout=600.0,
            backend_ready_timeout=5.0,
            connect_timeout=1.0,
            max_wait=30.0,
        )
        values.update(settings)
        core = LLMCore(LLMService(**values), runtime_dir=str(tmp_path))
        assert core.config_error is None, core.config_error
        fleet = core.backend
        assert isinstance(fleet, SlurmFleet)
        for lane in fleet.lanes:  # the fake cluster, fast polls
            lane.backend.cli = fake
            lane.backend.settings.steady_poll = 0.05
            lane.backend.settings.max_pending_poll = 0.05
        made.append(core)
        return core

    yield factory
    for core in made:
        await core.backend.shutdown()


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def request(core: LLMCore, model: str, hold: float, user: str = "u1") -> Ticket:
    """One inference request as the pipeline makes it: a slot, then the job admission chose."""
    deadline = time.monotonic() + 20
    async with core.admission.slot(user, model, deadline) as ticket:
        async with core.backend.lease(deadline, worker=ticket.worker) as endpoint:
            assert endpoint.key in fleet_of(core).lane(ticket.worker).backend.jobs_seen  # type: ignore[union-attr]
            await asyncio.sleep(hold)
    return ticket


def fleet_of(core: LLMCore) -> SlurmFleet:
    assert isinstance(core.backend, SlurmFleet)
    return core.backend


def names(fake: FakeSlurm) -> list[str]:
    return sorted(j.name for j in fake.active())


def test_one_job_configured_is_todays_launcher(tmp_path: Path) -> None:
    core = LLMCore(LLMService(backend="slurm", slurm_job_name=JOB), runtime_dir=str(tmp_path))
    assert type(core.backend) is SlurmBackend, "slurm_max_jobs = 1 and no pools: no fleet"
    assert [w["key"] for w in core.admission.workers()] == ["default"]


def test_unknown_pool_setting_is_a_config_error(tmp_path: Path) -> None:
    cfg = LLMService(backend="slurm", slurm_pools={"large": {"gress": "gpu:2"}})
    core = LLMCore(cfg, runtime_dir=str(tmp_path))
    assert core.config_error is not None and "unknown setting 'gress'" in core.config_error


@pytest.mark.asyncio
async def test_scale_out_after_sustained_demand_not_on_a_blip(make, fake: FakeSlurm) -> None:
    core = make(slurm_backend_env=ONE_AT_A_TIME, slurm_scale_out_wait=0.15, slurm_scale_out_after=0.4)
    fleet = fleet_of(core)
    await fleet.start()
    assert names(fake) == [] and [w["key"] for w in core.admission.workers()] == [JOB], "one standby"

    # a blip: two requests at once, the second waits ~0.25 s — over the wait threshold only briefly
    first = await asyncio.gather(request(core, "m", 0.25), request(core, "m", 0.25, user="u2"))
    assert {t.worker for t in first} == {JOB}
    await asyncio.sleep(0.6)
    assert names(fake) == [JOB] and fleet.scale_outs == [], "a blip starts no second job"

    # sustained: 4 users keep one job busy; waits stay over 0.15 s for more than 0.4 s
    async def user_loop(user: str, seconds: float) -> list[Ticket]:
        end, done = time.monotonic() + seconds, []
        while time.monotonic() < end:
            done.append(await request(core, "m", 0.1, user=user))
        return done

    tickets = sum(await asyncio.gather(*(user_loop(f"u{i}", 2.5) for i in range(4))), [])
    assert len(fleet.scale_outs) == 1 and fleet.scale_outs[0][1] == f"{JOB}-2"
    assert names(fake) == [JOB, f"{JOB}-2"], "exactly one more job (max_jobs 2)"
    assert {t.worker for t in tickets} == {JOB, f"{JOB}-2"}, "requests went to both jobs"
    assert sorted(w["key"] for w in core.admission.workers()) == [JOB, f"{JOB}-2"]
    doc = fleet.describe()
    assert [p["jobs"] for p in doc["pools"]] == [2]
    assert doc["pools"][0]["message"].startswith("Default pool: 2 jobs of at most 2, 2 serving")


@pytest.mark.asyncio
async def test_scale_in_to_min_jobs_and_admin_stop(make, fake: FakeSlurm) -> None:
    core = make(
        slurm_min_jobs=1,
        slurm_backend_env=ONE_AT_A_TIME,
        slurm_scale_out_wait=0.05,
        slurm_scale_out_after=0.1,
        idle_timeout=0.4,
    )
    fleet = fleet_of(core)
    await fleet.start()
    await until(lambda: names(fake) == [JOB] and fleet.lanes[0].serving)  # min_jobs: no request needed

    async def user_loop(user: str) -> None:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            await request(core, "m", 0.1, user=user)

    await asyncio.gather(*(user_loop(f"u{i}") for i in range(3)))
    assert names(fake) == [JOB, f"{JOB}-2"]
    second = fleet.lanes[1]
    # idle: the second job goes after idle_timeout, the first stays (min_jobs 1)
    await until(lambda: not second.has_job, timeout=3)
    await asyncio.sleep(0.6)
    assert names(fake) == [JOB] and fleet.lanes[0].serving
    assert [w["key"] for w in core.admission.workers()] == [JOB]

    # an admin's stop lets every job go, min_jobs included, until the next request
    await fleet.control("stop")
    await asyncio.sleep(0.3)
    assert names(fake) == []
    ticket = await request(core, "m", 0.0)
    assert ticket.worker == JOB and names(fake) == [JOB]


@pytest.mark.asyncio
async def test_placement_prefers_the_job_with_the_model_else_the_least_loaded(make, fake: FakeSlurm) -> None:
    core = make(slurm_min_jobs=2, slurm_backend_env={"OLLAMA_NUM_PARALLEL": "2"}, gpu_memory_gb=40)
    fleet = fleet_of(core)
    await fleet.start()
    await until(lambda: all(lane.serving for lane in fleet.lanes))
    first, second = fleet.lanes
    job_of_second = second.backend.serving_endpoint()
    assert job_of_second is not None
    server = fake.jobs[job_of_second.key].server
    assert server is not None
    server.models = [{"name": "coder:7b", "model": "coder:7b", "size": 5e9, "size_vram": 5e9}]
    # the fleet reads each job's /api/ps and tells admission what is loaded where
    await until(lambda: second.loaded == {"coder:7b": 5.0})
    models_at = lambda key: {w["key"]: w["models"] for w in core.admission.workers()}.get(key)  # noqa: E731
    await until(lambda: models_at(second.name) == {"coder:7b": 0})

    held = asyncio.create_task(request(core, "coder:7b", 0.5))
    await until(lambda: core.admission.running == 1)
    assert next(iter(core.admission._running.values())).worker == second.name, "where it is loaded"
    # a model loaded nowhere: the least loaded job (the second runs a request)
    other = await request(core, "chat:3b", 0.0)
    assert other.worker == first.name
    assert (await held).worker == second.name
    doc = fleet.describe()
    by_job = {j["id"]: j for j in doc["jobs"]}
    assert by_job[job_of_second.key]["models"] == ["coder:7b"]


@pytest.mark.asyncio
async def test_pool_routing_and_refusal_when_nothing_fits(make, fake: FakeSlurm) -> None:
    core = make(
        slurm_max_jobs=1,
        gpu_memory_gb=40,
        model_sizes_gb={"mid:27b": 20, "big:70b": 42.5, "huge:405b": 230, "listed:1b": 1},
        slurm_pools={
            "large": {
                "gres": "gpu:2",
                "gpu_memory_gb": 80,
                "models": ["listed:1b"],
                "time_limit": "20",
                "extra_directives": ["--mem=8G"],
            }
        },
    )
    fleet = fleet_of(core)
    assert fleet.pool_for("mid:27b") == "default" and fleet.pool_for("unknown-size") == "default"
    assert fleet.pool_for("big:70b") == "large", "does not fit the default job, fits the pool"
    assert fleet.pool_for("listed:1b") == "large" and fleet.pool_for("listed:1b:latest") == "large"
    assert fleet.pool_for("huge:405b") is None
    assert core.model_fit_error("big:70b") is None and core.model_fit_error("mid:27b") is None
    assert core.model_fit_error("huge:405b") == (
        "model 'huge:405b' needs 230 GB but the GPU has 80 GB; ask for a smaller (or more quantized) variant"
    )
    gpu = core.gpu_summary()
    assert gpu is not None
    entries = {e["name"]: e for e in gpu["models"]}
    assert entries["big:70b"]["fits"] is True and entries["big:70b"]["pool"] == "large"
    assert entries["huge:405b"]["fits"] is False and entries["huge:405b"]["pool"] is None
    with pytest.raises(BadRequest, match="needs 230 GB"):
        async with core.admission.slot("u1", "huge:405b", time.monotonic() + 1):
            pass

    await fleet.start()
    assert sorted(w["key"] for w in core.admission.workers()) == [JOB, f"{JOB}-large-1"]
    big = await request(core, "big:70b", 0.0)
    assert big.worker == f"{JOB}-large-1" and names(fake) == [f"{JOB}-large-1"], "only the pool's job"
    (pool_job,) = fake.active(f"{JOB}-large-1")
    for line in ("#SBATCH --gres=gpu:2", "#SBATCH --time=20", "#SBATCH --mem=8G"):
        assert line in pool_job.script
    listed = await request(core, "listed:1b", 0.0)
    assert listed.worker == f"{JOB}-large-1"
    mid = await request(core, "mid:27b", 0.0)
    assert mid.worker == JOB and names(fake) == sorted([JOB, f"{JOB}-large-1"])
    (default_job,) = fake.active(JOB)
    assert "#SBATCH --gres=gpu:1" in default_job.script

    doc = fleet.describe()
    pools = {p["name"]: p for p in doc["pools"]}
    assert pools["large"]["gres"] == "gpu:2" and pools["large"]["gpu_memory_gb"] == 80
    assert pools["large"]["models"] == ["listed:1b"] and pools["default"]["models"] == []
    assert {j["pool"] for j in doc["jobs"]} == {"default", "large"}


@pytest.mark.asyncio
async def test_restart_adopts_every_lane(make, fake: FakeSlurm) -> None:
    pools = {"large": {"gres": "gpu:2", "models": ["big:70b"]}}
    first = make(slurm_min_jobs=2, slurm_pools=pools, cancel_on_shutdown=False)
    fleet = fleet_of(first)
    await fleet.start()
    await request(first, "big:70b", 0.0)
    await until(lambda: all(lane.serving for lane in fleet.lanes))
    before = {j.name: j.id for j in fake.active()}
    assert sorted(before) == sorted([JOB, f"{JOB}-2", f"{JOB}-large-1"])
    await fleet.shutdown()
    submits = fake.calls["submit"]

    second = make(slurm_min_jobs=2, slurm_pools=pools)
    again = fleet_of(second)
    await again.start()  # adoption happens before start() returns
    assert {j["id"] for j in again.describe()["jobs"]} == set(before.values())
    await until(lambda: all(lane.serving for lane in again.lanes))
    assert sorted(w["key"] for w in second.admission.workers()) == sorted(before)
    ticket = await request(second, "big:70b", 0.0)
    assert ticket.worker == f"{JOB}-large-1"
    assert fake.calls["submit"] == submits, "adopted, not submitted again"
    await again.control("stop")
    assert names(fake) == []


@pytest.mark.asyncio
async def test_describe_keeps_todays_fields_and_lists_jobs_and_pools(make, fake: FakeSlurm) -> None:
    core = make(slurm_pools={"large": {"gres": "gpu:2", "gpu_memory_gb": 80, "max_jobs": 2}})
    fleet = fleet_of(core)
    await fleet.start()
    idle = fleet.describe(admin=True)
    assert idle["kind"] == "slurm" and idle["state"] == "idle" and idle["job"] is None
    assert idle["message"].startswith("No GPU job") and idle["job_name"] == JOB and idle["jobs"] == []
    assert [p["name"] for p in idle["pools"]] == ["default", "large"]
    assert idle["pools"][1]["message"] == "Pool large: no job (one starts on the first request; up to 2)"

    async with core.admission.slot("u1", "m", time.monotonic() + 5) as ticket:
        async with fleet.lease(time.monotonic() + 5, worker=ticket.worker) as endpoint:
            doc = fleet.describe(admin=True)
            assert doc["state"] == "ready" and doc["job"] is not None and doc["job"]["id"] == endpoint.key
            assert doc["message"].startswith("Ready on node fakenode") and doc["inflight"] == 1
            assert doc["backend_url"] == endpoint.url
            (job,) = doc["jobs"]
            expected_job: JobDoc = {**doc["job"], "pool": "default", "role": "current", "inflight": 1}
            assert {k: v for k, v in job.items() if k != "models"} == {
                k: v for k, v in expected_job.items() if k != "time_left_s"
            } | {"time_left_s": job["time_left_s"]}
            assert job["models"] == ["m"], "admission's account (the fake's /api/ps lists nothing)"
            default_pool: PoolDoc = doc["pools"][0]
            assert default_pool == {
                "name": "default",
                "state": "ready",
                "message": "Default pool: 1 job of at most 2, 1 serving",
                "jobs": 1,
                "min_jobs": 0,
                "max_jobs": 2,
                "gres": "gpu:1",
                "gpu_memory_gb": 0.0,
                "models": [],
            }


def test_pool_entries_override_the_job_settings(tmp_path: Path) -> None:
    cfg = LLMService(
        backend="slurm",
        slurm_job_name=JOB,
        slurm_state_dir=str(tmp_path),
        slurm_partition="ampere",
        slurm_backend_env={"OLLAMA_MODELS": "/models", "OLLAMA_KEEP_ALIVE": "30m"},
        slurm_pools={
            "large": {
                "slurm_gres": "gpu:a100:2",  # the trait's name works as well as the field's
                "backend_env": {"OLLAMA_KEEP_ALIVE": "2h"},
                "backend_command": "llama-server -m /models/big.gguf",
                "min_jobs": 1,
                "max_jobs": 3,
            }
        },
    )
    core = LLMCore(cfg, runtime_dir=str(tmp_path))
    fleet = fleet_of(core)
    default, large = fleet.fleet.pools
    assert (large.settings.gres, large.settings.partition) == ("gpu:a100:2", "ampere")
    assert large.settings.backend_env == {"OLLAMA_MODELS": "/models", "OLLAMA_KEEP_ALIVE": "2h"}
    assert large.settings.warm_keep_alive == "2h" and large.settings.ready_path == "/health"
    assert default.settings.ready_path == "/" and default.max_jobs == 1
    assert [lane.name for lane in fleet.lanes] == [JOB, f"{JOB}-large-1", f"{JOB}-large-2", f"{JOB}-large-3"]
    assert [lane.backend.pinned for lane in fleet.lanes] == [False, True, False, False]
    assert f"#SBATCH --job-name={JOB}-large-2" in fleet.lanes[2].backend.render_script()
    bad = LLMCore(LLMService(backend="slurm", slurm_max_jobs=2, slurm_min_jobs=3), runtime_dir=str(tmp_path))
    assert bad.config_error == "slurm_min_jobs must be between 0 and slurm_max_jobs (2)"


@pytest.mark.asyncio
async def test_one_job_coming_at_a_time_and_scale_out_by_depth(make, fake: FakeSlurm) -> None:
    core = make(
        slurm_max_jobs=3,
        slurm_backend_env=ONE_AT_A_TIME,
        slurm_scale_out_wait=0,  # by depth only: 2 waiting per serving job
        slurm_scale_out_depth=2,
        slurm_scale_out_after=0.2,
    )
    fleet = fleet_of(core)
    await fleet.start()
    await request(core, "m", 0.0)  # the first job runs
    fake.auto_run = False  # the next ones pend: the partition is full
    stop = asyncio.Event()

    async def user_loop(user: str) -> None:
        while not stop.is_set():
            await request(core, "m", 0.05, user=user)

    users = [asyncio.create_task(user_loop(f"u{i}")) for i in range(6)]
    await until(lambda: len(fake.active()) == 2)
    await asyncio.sleep(1.0)  # 5x scale_out_after with 5 waiting for 1 serving job
    assert names(fake) == [JOB, f"{JOB}-2"], "no third job while the second one pends"
    assert fleet.describe()["pools"][0]["message"].startswith(
        "Default pool: 2 jobs of at most 3, 1 serving, 1 pending (starting job 2: "
    )
    (second,) = fake.active(f"{JOB}-2")
    await fake.run(second.id)  # it starts: 2 serve, 4 wait = 2 per job: one more
    await until(lambda: len(fake.active()) == 3)
    assert [name for _, name in fleet.scale_outs] == [f"{JOB}-2", f"{JOB}-3"]
    stop.set()
    await asyncio.gather(*users)


@pytest.mark.asyncio
async def test_api_ps_lists_what_every_job_holds(make, fake: FakeSlurm) -> None:
    """``GET /api/ps`` of a fleet asks every serving job: the panel's "Loaded now" and ``%llm
    status`` show a model loaded on the second job too (one job's answer would hide it)."""
    core = make(slurm_min_jobs=2)
    fleet = fleet_of(core)
    await fleet.start()
    await until(lambda: all(lane.serving for lane in fleet.lanes))
    loaded = {"coder:7b": 5e9, "chat:3b": 2e9}
    for lane, name in zip(fleet.lanes, loaded, strict=True):
        endpoint = lane.backend.serving_endpoint()
        assert endpoint is not None
        server = fake.jobs[endpoint.key].server
        assert server is not None
        server.models = [{"name": name, "model": name, "size": loaded[name], "size_vram": loaded[name]}]

    request = Request(route_for("/api/ps"), "GET", Identity("u1"))
    reply = await core.pipeline.handle(request)
    assert reply.status == 200
    assert sorted(m["name"] for m in json.loads(reply.body)["models"]) == sorted(loaded)
    # and admission now knows both, without waiting for the next poll
    assert {lane.name: lane.loaded for lane in fleet.lanes} == {
        fleet.lanes[0].name: {"coder:7b": 5.0},
        fleet.lanes[1].name: {"chat:3b": 2.0},
    }
