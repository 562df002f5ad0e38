"""Several Slurm jobs and a pool on the real local cluster, through the whole service (HTTP, the real
``openai`` client, llama.cpp's ``llama-server`` in every job): sustained load scales out to 2 jobs
and back to none with no request lost; a request for a pool's model starts the pool's 2-GPU job
while the default job keeps serving; a restarted service adopts every job.

The cluster needs 4 fake GPUs (2 default jobs + a 2-GPU pool) and a CPU per job (3): a cluster
with fewer is restarted with 4 of each for this module (root) and given back its size afterwards
(the other Slurm tests hold "the" GPU with one job).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from . import slurm_helpers as sh
from .conftest import Proc, start_standalone

pytestmark = [pytest.mark.slurm, pytest.mark.llama]
USER, ADMIN = "tok-user-1", "tok-admin-1"
SMALL, POOL_MODEL = "smollm2:135m", "gemma3:270m"
GPUS = CPUS = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    why, before = sh.ensure_node(GPUS, CPUS)
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # CI must run every Slurm test
        pytest.skip(why)
    yield
    if before != sh.node_size():
        assert sh.restart_slurm(*before) is None, "could not give the cluster back its size"


@pytest.fixture
def job_name(cluster: None) -> Iterator[str]:
    name = sh.unique_job_name("llmaf-scale")
    yield name
    sh.cancel_named(name)
    assert not sh.jobs_named(name), "jobs left behind"


def scale_service(tmp_path: Path, job_name: str, **settings: Any) -> Proc:
    (tmp_path / "tokens").write_text(f"{USER} user\n{ADMIN} admin\n")
    values: dict[str, Any] = {
        "backend": "slurm",
        "backend_protocol": "openai",
        "slurm_job_name": job_name,
        "slurm_state_dir": str(tmp_path / "state"),
        "slurm_backend_command": sh.llama_server_command(SMALL, threads=1),
        # llama-server -np 2 serves 2 requests at once, one model: what admission counts per job
        "slurm_backend_env": {
            "JUPYTER_LLM_AF_HOST": "127.0.0.1",
            "OLLAMA_NUM_PARALLEL": "2",
            "OLLAMA_MAX_LOADED_MODELS": "1",
        },
        "slurm_gres": "gpu:1",
        "slurm_time_limit": "10",
        "renew_before": 30,  # no successor within these tests
        "backend_ready_timeout": 60,
        "admin_users": ["admin"],
        "max_wait": 120,
    }
    values.update(settings)
    lines = [f"c.LLMService.{key} = {value!r}" for key, value in values.items()]
    (tmp_path / "cfg.py").write_text("\n".join(lines) + "\n")
    return start_standalone(
        "--config", str(tmp_path / "cfg.py"), "--token-file", str(tmp_path / "tokens"), token="unused"
    )


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def state(svc: Proc) -> dict[str, Any]:
    return httpx.get(svc.url + "/backend/state", headers=h(ADMIN), timeout=30).json()


def ask(svc: Proc, model: str, tokens: int = 12) -> str:
    client = openai.OpenAI(base_url=svc.url + "/v1", api_key=USER, timeout=120, max_retries=0)
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France? One sentence."}],
        max_tokens=tokens,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


class Load:
    """``clients`` threads asking ``model`` back to back until stopped; every answer or error kept."""

    def __init__(self, svc: Proc, clients: int, model: str = SMALL, tokens: int = 12):
        self.svc, self.model, self.tokens = svc, model, tokens
        self.stop = threading.Event()
        self.answers: list[tuple[float, str]] = []  # (monotonic time, text)
        self.errors: list[BaseException] = []
        self.pool = ThreadPoolExecutor(clients)
        self.futures = [self.pool.submit(self._loop) for _ in range(clients)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                text = ask(self.svc, self.model, self.tokens)
            except Exception as e:  # a lost request: the test says which
                self.errors.append(e)
            else:
                self.answers.append((time.monotonic(), text))

    def finish(self) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=180)
        self.pool.shutdown()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.3)


def squeue_gres(job_id: str) -> str:
    argv = ["squeue", "-h", "-j", job_id, "-o", "%b"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


def test_sustained_load_scales_out_to_two_jobs_and_back_to_none(tmp_path: Path, job_name: str) -> None:
    svc = scale_service(
        tmp_path,
        job_name,
        slurm_max_jobs=2,
        slurm_scale_out_depth=2,  # 2 requests waiting per serving job…
        slurm_scale_out_wait=0,
        slurm_scale_out_after=2,  # …for 2 s: one more job
        idle_timeout=8,
    )
    load = None
    try:
        assert state(svc)["jobs"] == [] and sh.jobs_named(job_name) == []
        started = time.monotonic()
        load = Load(svc, clients=6)  # 3x what one job serves at once
        served_by: set[str] = set()

        def both_serve() -> bool:
            for job in state(svc)["jobs"]:
                if job["inflight"] and job["ready"]:
                    served_by.add(job["id"])
            return len(served_by) == 2

        wait_for(both_serve, 120, "requests running on 2 jobs")
        scaled_after = time.monotonic() - started
        names = sorted(row[1] for row in sh.jobs_named(job_name))
        assert names == [job_name, f"{job_name}-2"], "exactly one more job (max_jobs 2)"
        time.sleep(3)  # both keep serving under load
        load.finish()
        assert load.errors == [], f"requests lost: {load.errors[:3]}"
        assert len(load.answers) >= 20 and all("Paris" in text for _, text in load.answers[:5])
        doc = state(svc)
        assert doc["pools"][0]["jobs"] == 2 and doc["pools"][0]["message"].startswith(
            "Default pool: 2 jobs of at most 2, 2 serving"
        )
        # idle: each job goes after idle_timeout, and squeue ends empty
        stopped = time.monotonic()
        wait_for(lambda: sh.jobs_named(job_name) == [], 8 + 40, "both jobs released")
        print(
            f"FIGURE scale-out: 2 jobs serving {scaled_after:.1f} s after 6 clients started "
            f"(scale_out_after 2 s), {len(load.answers)} answers, 0 lost; squeue empty "
            f"{time.monotonic() - stopped:.1f} s after the load stopped (idle_timeout 8 s)"
        )
        doc = state(svc)
        assert doc["state"] == "idle" and doc["jobs"] == [] and doc["pools"][0]["jobs"] == 0
    finally:
        if load is not None and not load.stop.is_set():
            load.finish()
        svc.stop()
    assert sh.jobs_named(job_name) == []


def pool_settings() -> dict[str, Any]:
    return {
        "large": {
            "gres": "gpu:2",
            "models": [POOL_MODEL],
            "backend_command": sh.llama_server_command(POOL_MODEL, threads=1),
        }
    }


def test_pool_model_starts_the_pool_job_while_the_default_job_serves(tmp_path: Path, job_name: str) -> None:
    svc = scale_service(tmp_path, job_name, slurm_pools=pool_settings())
    load = None
    try:
        assert "Paris" in ask(svc, SMALL)
        (default_job,) = state(svc)["jobs"]
        load = Load(svc, clients=1)
        asked = time.monotonic()
        text = ask(svc, POOL_MODEL)
        answered = time.monotonic()
        assert text.strip(), "the pool's model answered"
        jobs = {j["pool"]: j for j in state(svc)["jobs"]}
        assert sorted(jobs) == ["default", "large"] and jobs["large"]["ready"]
        assert jobs["default"]["id"] == default_job["id"], "the default job kept its place"
        rows = {row[1]: row for row in sh.jobs_named(job_name)}
        assert rows[f"{job_name}-large-1"][2] == "RUNNING" and rows[job_name][2] == "RUNNING"
        assert squeue_gres(jobs["large"]["id"]) == "gres:gpu:2"
        assert squeue_gres(default_job["id"]) == "gres:gpu:1"
        time.sleep(1)
        load.finish()
        assert load.errors == []
        during = [t for t, _ in load.answers if asked < t < answered]
        assert during, "the default job answered while the pool's job started"
        pools = {p["name"]: p for p in state(svc)["pools"]}
        assert pools["large"]["models"] == [POOL_MODEL] and pools["large"]["gres"] == "gpu:2"
    finally:
        if load is not None and not load.stop.is_set():
            load.finish()
        svc.stop()
    assert sh.jobs_named(job_name) == []


def test_restart_adopts_every_job(tmp_path: Path, job_name: str) -> None:
    settings: dict[str, Any] = dict(slurm_max_jobs=2, slurm_min_jobs=2, slurm_pools=pool_settings())
    first = scale_service(tmp_path, job_name, cancel_on_shutdown=False, **settings)
    try:
        assert ask(first, POOL_MODEL).strip()
        wait_for(lambda: len([j for j in state(first)["jobs"] if j["ready"]]) == 3, 90, "3 jobs ready")
        before = {j["id"]: j["pool"] for j in state(first)["jobs"]}
    finally:
        first.stop()
    assert sorted(row[0] for row in sh.jobs_named(job_name)) == sorted(before), "jobs outlive the service"

    second = scale_service(tmp_path, job_name, **settings)
    try:
        wait_for(lambda: len([j for j in state(second)["jobs"] if j["ready"]]) == 3, 60, "adopted jobs ready")
        doc = state(second)
        assert {j["id"]: j["pool"] for j in doc["jobs"]} == before
        assert "Paris" in ask(second, SMALL) and ask(second, POOL_MODEL).strip()
        assert sorted(row[0] for row in sh.jobs_named(job_name)) == sorted(before), "adopted, none submitted"
    finally:
        second.stop()
    wait_for(lambda: sh.jobs_named(job_name) == [], 20, "jobs cancelled on shutdown")
