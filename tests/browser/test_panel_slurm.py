"""The LLM sidebar following a real Slurm GPU job: idle → pending (the GPU is held by another
job) → ready once the GPU frees → stopped by the admin. Needs the local cluster (``.ci/slurm-up.sh``;
started here when root). The job runs the Ollama test double on 127.0.0.1."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests import slurm_helpers as sh
from tests.browser.conftest import open_panel, screenshot, set_theme, start_lab, stop_lab
from tests.conftest import ROOT, Proc

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.slurm]


@pytest.fixture(scope="module")
def job_name() -> Iterator[str]:
    why = sh.ensure_slurm()
    if why:
        pytest.skip(why)
    name = sh.unique_job_name("llmaf-panel")
    yield name
    sh.cancel_named(name)
    assert not sh.jobs_named(name), "jobs left behind"


@pytest.fixture(scope="module")
def lab(job_name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_lab(
        {
            "backend": "slurm",
            "slurm_job_name": job_name,
            "slurm_state_dir": str(tmp_path_factory.mktemp("slurm-state")),
            "slurm_backend_command": sh.backend_command(),
            "slurm_backend_env": {"PYTHONPATH": str(ROOT), "JUPYTER_LLM_AF_HOST": "127.0.0.1"},
            "slurm_gres": "gpu:1",
            "slurm_time_limit": "5",
            "backend_ready_timeout": 60,
        }
    )
    yield proc
    stop_lab(proc)


def test_pending_job_turns_ready_then_stops(new_page, lab: Proc, job_name: str) -> None:
    holder = sh.sbatch_wrap(f"{job_name}-holder", "sleep 300", "--gres=gpu:1", "--time=5")
    try:
        deadline = time.monotonic() + 60
        while sh.job_state(holder) != "RUNNING":  # the GPU is taken: our job will pend
            assert time.monotonic() < deadline, "GPU holder job did not start"
            time.sleep(0.2)
        page = new_page(lab)
        panel = open_panel(page)
        state = panel.get_by_test_id("llm-state")
        expect(state).to_have_text("No GPU job (starts on first request)")
        expect(panel.get_by_test_id("llm-status")).to_contain_text("Slurm GPU job · Ollama API")
        # the owner of a single-user server administers its service
        start, stop = panel.get_by_test_id("llm-start"), panel.get_by_test_id("llm-stop")
        expect(start).to_be_enabled()
        expect(stop).to_be_disabled()

        start.click()
        expect(state).to_have_attribute("data-state", "pending", timeout=20_000)
        expect(state).to_have_text(
            re.compile(r"^Waiting for a GPU: job \d+ pending \((Resources|Priority)\)")
        )
        job = panel.get_by_test_id("llm-job")
        expect(job).to_contain_text(re.compile(r"Job\d+ \(pending\)Reason(Resources|Priority)"))
        expect(start).to_be_disabled()
        expect(stop).to_be_enabled()
        expect(panel.get_by_test_id("llm-running")).to_contain_text("None: the backend is not running.")
        screenshot(page, "panel-slurm-pending-light")

        sh.cancel_named(f"{job_name}-holder")  # the GPU frees: our job starts
        expect(state).to_have_attribute("data-state", "ready", timeout=90_000)
        expect(state).to_have_text(re.compile(r"^Ready on node \S+, \d+ (s|min) left$"))
        expect(job).to_contain_text(
            re.compile(r"\(running\)Node\S+Started\d\d:\d\dTime left\d+ (s|min) of 5 min")
        )
        expect(panel.locator('[data-testid="llm-models"] li')).to_have_count(2)
        expect(panel.get_by_test_id("llm-running")).to_contain_text("No model loaded.")
        screenshot(page, "panel-slurm-ready-light")
        set_theme(page, "JupyterLab Dark")
        screenshot(page, "panel-slurm-ready-dark")
        set_theme(page, "JupyterLab Light")

        stop.click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text("Stop the GPU job?")
        dialog.get_by_role("button", name="Stop").click()
        expect(state).to_have_attribute("data-state", "idle", timeout=30_000)
        expect(panel.get_by_test_id("llm-job")).to_have_count(0)
        expect(panel.get_by_test_id("llm-error")).to_have_count(0)
    finally:
        sh.cancel_named(f"{job_name}-holder")
