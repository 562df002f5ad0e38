"""The LLM sidebar of a service with several Slurm jobs and a pool (issue 15), on the real local
cluster: ``slurm_max_jobs=2, slurm_min_jobs=2`` keeps two default jobs running, a ``large`` pool
(2 GPUs, for ``small:3b``) has none until its model is asked for. The panel's "GPU jobs" section
lists both pools with the server's sentences and one line per job; a request shows on the job that
serves it (its model loaded, one in flight). Every job runs the Ollama test double on 127.0.0.1.
The cluster needs 2 fake GPUs and 2 CPUs (restarted so for this module when it has fewer, then
given back its size)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jupyter_llm_af.magics.render import status_markdown
from tests import slurm_helpers as sh
from tests.browser.conftest import open_panel, screenshot, set_theme, start_lab, stop_lab
from tests.conftest import ROOT, Proc, auth

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.slurm]

GPUS = CPUS = 2  # two jobs of one GPU and one CPU each
TOKEN_DELAY = 0.15  # seconds per token of the double: 60 tokens keep a request on its job for 9 s
# a job's line while it serves nothing: id, state, node, time left, requests in flight
IDLE_JOB = re.compile(r"^\d+ running · \S+ · \d+ (s|min) left · 0 in flight$")


@pytest.fixture(scope="module")
def job_name() -> Iterator[str]:
    why, before = sh.ensure_node(GPUS, CPUS)
    if why:
        pytest.skip(why)
    name = sh.unique_job_name("llmaf-panel-jobs")
    yield name
    sh.cancel_named(name)
    assert not sh.jobs_named(name), "jobs left behind"
    if before != sh.node_size():
        assert sh.restart_slurm(*before) is None, "could not give the cluster back its size"


@pytest.fixture(scope="module")
def lab(job_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_lab(
        {
            "backend": "slurm",
            "slurm_job_name": job_name,
            "slurm_state_dir": str(tmp_path_factory.mktemp("slurm-state")),
            "slurm_backend_command": sh.backend_command(delay=TOKEN_DELAY),
            "slurm_backend_env": {"PYTHONPATH": str(ROOT), "JUPYTER_LLM_AF_HOST": "127.0.0.1"},
            "slurm_gres": "gpu:1",
            "slurm_time_limit": "10",
            "renew_before": 30,  # no successor within this test
            "backend_ready_timeout": 60,
            "slurm_max_jobs": 2,
            "slurm_min_jobs": 2,
            "slurm_pools": {"large": {"gres": "gpu:2", "models": ["small:3b"], "max_jobs": 1}},
        }
    )
    yield proc
    stop_lab(proc)


def backend_state(lab: Proc) -> dict[str, Any]:
    return httpx.get(f"{lab.extra['base']}llm/backend/state", headers=auth(), timeout=30).json()


def test_two_jobs_and_a_pool_are_listed_with_the_request_they_serve(
    new_page, lab: Proc, job_name: str
) -> None:
    page = new_page(lab)
    panel = open_panel(page)
    jobs = panel.get_by_test_id("llm-jobs")
    default = jobs.locator('[data-testid="llm-pool"][data-pool="default"]')
    large = jobs.locator('[data-testid="llm-pool"][data-pool="large"]')
    default_jobs = default.get_by_test_id("llm-pool-job")

    # min_jobs=2: both default jobs start without a request and turn ready
    expect(default_jobs).to_have_count(2, timeout=60_000)
    expect(default.locator('[data-testid="llm-pool-job"].jp-mod-ready')).to_have_count(2, timeout=90_000)
    for i in range(2):
        expect(default_jobs.nth(i)).to_have_text(IDLE_JOB)
        expect(default_jobs.nth(i)).to_have_attribute("data-role", "current")
    expect(default.get_by_test_id("llm-pool-count")).to_have_text("2/2 jobs")
    expect(default.get_by_test_id("llm-pool-details")).to_have_text("min 2 · gpu:1")
    expect(large.get_by_test_id("llm-pool-count")).to_have_text("0/1 jobs")
    expect(large.get_by_test_id("llm-pool-details")).to_have_text("gpu:2 · small:3b")
    expect(large.get_by_test_id("llm-pool-job")).to_have_count(0)

    # the pools' sentences are the server's, word for word; the panel lists the very jobs it reports
    doc = backend_state(lab)
    messages = {pool["name"]: pool["message"] for pool in doc["pools"]}
    expect(default.get_by_test_id("llm-pool-message")).to_have_text(messages["default"])
    expect(large.get_by_test_id("llm-pool-message")).to_have_text(messages["large"])
    listed = {job["id"] for job in doc["jobs"] if job["pool"] == "default"}
    assert {default_jobs.nth(i).get_attribute("data-job") for i in range(2)} == listed
    assert listed == {row[0] for row in sh.jobs_named(job_name)}, "the panel's jobs are Slurm's"
    # the single job's details are not repeated above the list
    expect(panel.get_by_test_id("llm-job")).to_have_count(0)
    # %llm status says the same of the same document
    status = status_markdown(doc, {})
    assert f"- `default` (2/2 jobs · min 2 · gpu:1): {messages['default']}" in status, status
    assert f"- `large` (0/1 jobs · gpu:2 · `small:3b`): {messages['large']}" in status, status
    for job_id in listed:
        assert re.search(
            rf"^  - job `{job_id}`: running · \S+ · \d+ (s|min) left · 0 in flight$", status, re.M
        )

    # one long request: its job shows the model loaded and one request in flight
    answer: dict[str, int] = {}
    request = threading.Thread(
        target=lambda: answer.update(
            status=httpx.post(
                f"{lab.extra['base']}llm/api/chat",
                headers=auth(),
                json={
                    "model": "tiny:1b",
                    "stream": False,
                    "options": {"num_predict": 60},
                    "messages": [{"role": "user", "content": "hello"}],
                },
                timeout=60,
            ).status_code
        )
    )
    started = time.monotonic()
    request.start()
    try:
        busy = default.locator('[data-testid="llm-pool-job"]', has_text="1 in flight")
        expect(busy).to_have_count(1, timeout=8_000)
        expect(busy).to_have_text(
            re.compile(r"^\d+ running · \S+ · \d+ (s|min) left · tiny:1b · 1 in flight$")
        )
        assert time.monotonic() - started < 9, "the request ended before the panel showed it"
        screenshot(page, "panel-jobs")
        set_theme(page, "JupyterLab Dark")
        screenshot(page, "panel-jobs-dark")
        set_theme(page, "JupyterLab Light")
    finally:
        request.join(60)
    assert answer == {"status": 200}
    expect(default.locator('[data-testid="llm-pool-job"]', has_text="1 in flight")).to_have_count(0)
    expect(default.locator('[data-testid="llm-pool-job"]', has_text="tiny:1b · 0 in flight")).to_have_count(1)

    # the admin's Stop lets every job go; the pools stay listed, without jobs
    panel.get_by_test_id("llm-stop").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Stop the 2 GPU jobs?")
    dialog.get_by_role("button", name="Stop").click()
    expect(panel.get_by_test_id("llm-pool-job")).to_have_count(0, timeout=30_000)
    expect(default.get_by_test_id("llm-pool-count")).to_have_text("0/2 jobs")
    deadline = time.monotonic() + 30
    while sh.jobs_named(job_name):
        assert time.monotonic() < deadline, f"jobs left after Stop: {sh.jobs_named(job_name)}"
        time.sleep(0.2)
    expect(panel.get_by_test_id("llm-error")).to_have_count(0)
