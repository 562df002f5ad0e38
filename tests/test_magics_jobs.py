"""``%llm status`` for a service with several Slurm jobs and pools (issue 15): the documents are
shaped by the contract (``state.StateDoc`` with ``jobs``/``pools``); a one-job service looks as it
always did. The Markdown is rendered by mistune (what nbconvert uses) to check it is one nested list."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import mistune

from jupyter_llm_af.magics.render import job_line, jobs_markdown, pool_views, status_markdown
from jupyter_llm_af.state import JobDoc, PoolDoc, QueueTotals, StateDoc

QUEUE: QueueTotals = {
    "waiting": 1,
    "running": 3,
    "users_waiting": 1,
    "max_concurrent": 8,
    "max_queue": 64,
    "max_queue_per_user": 16,
}


def running(job_id: str, pool: str = "default", **extra: object) -> JobDoc:
    job: JobDoc = {
        "id": job_id,
        "state": "RUNNING",
        "reason": "None",
        "node": "gpu017",
        "submitted_at": "2025-11-25T09:00:00+00:00",
        "started_at": "2025-11-25T09:02:00+00:00",
        "end_time": "2025-11-25T13:02:00+00:00",
        "time_left_s": 11_520.0,
        "time_limit_s": 14_400.0,
        "estimated_start": None,
        "ready": True,
        "pool": pool,
        "role": "current",
        "models": ["gemma3:27b", "all-minilm"],
        "inflight": 2,
    }
    job.update(extra)  # type: ignore[typeddict-item]
    return job


def pool_doc(name: str, **extra: object) -> PoolDoc:
    pool: PoolDoc = {
        "name": name,
        "state": "ready",
        "message": f"The {name} pool's sentence, as the launcher wrote it.",
        "jobs": 1,
        "min_jobs": 0,
        "max_jobs": 2,
        "gres": "gpu:a100:1",
        "gpu_memory_gb": 40,
        "models": [],
    }
    pool.update(extra)  # type: ignore[typeddict-item]
    return pool


def one_job_state(**extra: object) -> StateDoc:
    doc: StateDoc = {
        "kind": "slurm",
        "state": "ready",
        "message": "Ready on node gpu017, 3 h 12 min left",
        "job": running("1234"),
        "successor": None,
        "serving": True,
        "protocol": "ollama",
        "healthy": True,
        "models": ["gemma3:27b", "all-minilm"],
        "default_model": "gemma3:27b",
        "queue": QUEUE,
    }
    doc.update(extra)  # type: ignore[typeddict-item]
    return doc


def fleet_state() -> StateDoc:
    """Two default jobs (the second draining), a pending successor, and a 2-GPU pool for a 70b model."""
    soon = (datetime.now(timezone.utc) + timedelta(minutes=12)).replace(second=0, microsecond=0)
    successor = running(
        "1236",
        state="PENDING",
        reason="Resources",
        node=None,
        started_at=None,
        end_time=None,
        time_left_s=None,
        estimated_start=soon.isoformat(),
        ready=False,
        role="successor",
        models=[],
        inflight=0,
    )
    return one_job_state(
        successor=successor,
        jobs=[
            running("1234"),
            running("1235", node="gpu018", models=["all-minilm"], inflight=0, role="draining"),
            successor,
            running("1240", pool="large", node="gpu101", models=["llama3.3:70b"], inflight=1),
        ],
        pools=[
            pool_doc("default", state="renewing", jobs=3, min_jobs=1, max_jobs=3),
            pool_doc(
                "large", jobs=1, max_jobs=1, gres="gpu:a100:2", gpu_memory_gb=80, models=["llama3.3:70b"]
            ),
        ],
    )


def test_a_one_job_service_looks_as_before_whatever_of_jobs_and_pools_it_sends() -> None:
    before = status_markdown(one_job_state(), {})
    assert "GPU jobs" not in before
    extras: list[dict[str, object]] = [
        {"jobs": [running("1234")]},
        {"jobs": [], "pools": []},
        {"jobs": [running("1234")], "pools": [pool_doc("default", max_jobs=1)]},
        # a one-job service renewing: job and successor at the top level, as before
        {"successor": running("1235", role="successor")},
    ]
    for extra in extras:
        state = one_job_state(**extra)
        assert pool_views(state) is None, extra
        assert jobs_markdown(state) == ""
        assert status_markdown(state, {}) == status_markdown(
            one_job_state(successor=state.get("successor")), {}
        )
    assert status_markdown(one_job_state(jobs=[running("1234")]), {}) == before


def test_every_job_of_every_pool_is_listed_under_its_pool() -> None:
    state = fleet_state()
    text = status_markdown(state, {})
    # what a one-job service shows stays first, with the top-level sentence
    assert text.startswith("**LLM service** (serving): Ready on node gpu017, 3 h 12 min left  \n")
    jobs = text.split("\n\n", 1)[1]
    clock = datetime.fromisoformat(state["jobs"][2]["estimated_start"] or "").astimezone().strftime("%H:%M")
    assert jobs.splitlines() == [
        "**GPU jobs:**",
        "",
        "- `default` (3/3 jobs · min 1 · gpu:a100:1 · 40 GB each): The default pool's sentence, as the"
        " launcher wrote it.",
        "  - job `1234`: running · gpu017 · 3 h 12 min left · `gemma3:27b`, `all-minilm` · 2 in flight",
        "  - job `1235`: running · gpu018 · 3 h 12 min left · `all-minilm` · 0 in flight · draining",
        f"  - job `1236`: pending (Resources) · est. start {clock} · 0 in flight · successor",
        "- `large` (1/1 jobs · gpu:a100:2 · 80 GB each · `llama3.3:70b`): The large pool's sentence, as the"
        " launcher wrote it.",
        "  - job `1240`: running · gpu101 · 3 h 12 min left · `llama3.3:70b` · 1 in flight",
    ]


def test_the_jobs_are_one_nested_markdown_list() -> None:
    html = str(mistune.html(status_markdown(fleet_state(), {})))
    assert "<strong>GPU jobs:</strong>" in html
    pools = re.findall(r"<li><code>(\w+)</code>", html)
    assert pools == ["default", "large"]
    assert re.findall(r"<li>job <code>(\d+)</code>", html) == ["1234", "1235", "1236", "1240"]
    assert html.count("<ul>") == 3  # the pools, and the jobs of each


def test_a_fleet_with_one_job_and_pools_without_jobs() -> None:
    state = one_job_state(
        jobs=[running("1234")],
        pools=[
            pool_doc("default"),
            pool_doc("large", state="idle", jobs=0, max_jobs=1, models=["llama3.3:70b"]),
        ],
    )
    lines = jobs_markdown(state).splitlines()
    assert lines[2].startswith("- `default` (1/2 jobs · gpu:a100:1 · 40 GB each): The default pool's")
    assert lines[3].startswith("  - job `1234`: running")
    assert lines[4].startswith("- `large` (0/1 jobs · gpu:a100:1 · 40 GB each · `llama3.3:70b`): The large")
    assert len(lines) == 5
    # a default pool that may grow to two jobs is a fleet even while one runs
    assert pool_views(one_job_state(jobs=[running("1234")], pools=[pool_doc("default")])) is not None


def test_jobs_of_an_unlisted_pool_and_jobs_without_a_pool() -> None:
    job_without_pool = running("1")
    del job_without_pool["pool"]
    state = one_job_state(jobs=[job_without_pool, running("2", pool="large")], pools=[pool_doc("default")])
    views = pool_views(state)
    assert views is not None
    assert [(name, doc is None, [j["id"] for j in jobs]) for name, doc, jobs in views] == [
        ("default", False, ["1"]),
        ("large", True, ["2"]),
    ]
    assert "- `large`\n  - job `2`: running" in jobs_markdown(state)


def test_job_line_of_what_an_older_service_leaves_out() -> None:
    assert job_line({"id": "9", "state": "PENDING", "reason": "None"}) == "pending"
    assert job_line({"id": "9", "state": "PENDING", "reason": "Priority", "estimated_start": "N/A"}) == (
        "pending (Priority)"
    )
    assert job_line({"id": "9", "state": "RUNNING", "time_left_s": 59.6}) == "running · 1 min left"
