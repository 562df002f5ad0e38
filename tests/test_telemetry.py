"""Unit tests of the operations modules: usage extractors, the stream sniffer (chunks split
anywhere), Prometheus rendering, usage summaries and the accounting file, the access log."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from datetime import date, datetime, timedelta
from enum import Enum

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_llm_af import telemetry as tm
from jupyter_llm_af.errors import BadRequest, Forbidden
from jupyter_llm_af.metrics import Metrics, metrics_allowed
from jupyter_llm_af.telemetry import (
    RequestRecord,
    StreamUsageSniffer,
    Telemetry,
    TokenUsage,
    format_access,
    usage_from_anthropic,
    usage_from_body,
    usage_from_ollama,
    usage_from_openai,
    usage_from_responses,
)
from jupyter_llm_af.usage import QueueHistory, UsageBook, usage_answer

# -- wire samples (shapes as the backends send them; see shared/notes) ---------------------------
OLLAMA_LINES = [
    {"model": "tiny:1b", "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", "content": w}}
    for w in ["The", " eval_count", " fox", " jumps"]  # a token that looks like the marker
] + [
    {
        "model": "tiny:1b",
        "created_at": "2025-01-01T00:00:01Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 123456789,
        "prompt_eval_count": 26,
        "eval_count": 4,
    }
]
OPENAI_CHUNKS = (
    [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}], "usage": None}]
    + [{"choices": [{"index": 0, "delta": {"content": w}}], "usage": None} for w in ["Hel", "lo"]]
    + [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}]
    + [{"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 8, "total_tokens": 50}}]
)
LLAMA_LAST_CHUNK = {
    "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
    "timings": {"cache_n": 24, "prompt_n": 9, "prompt_ms": 12.0, "predicted_n": 16, "predicted_ms": 40.0},
}
ANTHROPIC_EVENTS = [
    (
        "message_start",
        {"type": "message_start", "message": {"id": "m1", "usage": {"input_tokens": 31, "output_tokens": 1}}},
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": 'say "output_tokens": 3'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 12}},
    ),
    ("message_stop", {"type": "message_stop"}),
]
RESPONSES_EVENTS = [
    ("response.created", {"type": "response.created", "response": {"id": "r1", "usage": None}}),
    ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
    (
        "response.completed",
        {
            "type": "response.completed",
            "response": {
                "id": "r1",
                "output": [],
                "usage": {"input_tokens": 17, "output_tokens": 5, "total_tokens": 22},
            },
        },
    ),
]


def ndjson(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def sse(events: list, crlf: bool = False) -> bytes:
    nl = b"\r\n" if crlf else b"\n"
    out = b""
    for ev in events:
        if isinstance(ev, tuple):
            out += b"event: " + ev[0].encode() + nl
            ev = ev[1]
        out += b"data: " + json.dumps(ev).encode() + nl + nl
    return out


STREAMS = {
    "ollama": (ndjson(OLLAMA_LINES), TokenUsage(26, 4)),
    "openai": (sse(OPENAI_CHUNKS) + b"data: [DONE]\n\n", TokenUsage(42, 8)),
    "anthropic": (sse(ANTHROPIC_EVENTS, crlf=True), TokenUsage(31, 12)),
    "responses": (sse(RESPONSES_EVENTS), TokenUsage(17, 5)),
}


# -- extractors --------------------------------------------------------------------------------
def test_extractors_read_each_apis_counts():
    assert usage_from_ollama(OLLAMA_LINES[-1]) == TokenUsage(26, 4)
    assert usage_from_ollama(OLLAMA_LINES[0]) is None
    assert usage_from_ollama({"embeddings": [[0.1]], "prompt_eval_count": 7}) == TokenUsage(7, None)
    assert usage_from_openai(OPENAI_CHUNKS[-1]) == TokenUsage(42, 8)
    assert usage_from_openai(OPENAI_CHUNKS[1]) is None  # "usage": null
    assert usage_from_openai(LLAMA_LAST_CHUNK) == TokenUsage(33, 16)  # cached + processed prompt
    assert usage_from_openai({"usage": {"prompt_tokens": 14, "total_tokens": 14}}) == TokenUsage(14, None)
    assert usage_from_anthropic(ANTHROPIC_EVENTS[0][1]) == TokenUsage(31, 1)
    assert usage_from_anthropic(ANTHROPIC_EVENTS[2][1]) is None
    assert usage_from_anthropic(ANTHROPIC_EVENTS[4][1]) == TokenUsage(None, 12)
    cached = {
        "type": "message",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 40, "output_tokens": 2},
    }
    assert usage_from_anthropic(cached) == TokenUsage(43, 2)
    assert usage_from_responses(RESPONSES_EVENTS[2][1]) == TokenUsage(17, 5)
    assert usage_from_responses(RESPONSES_EVENTS[0][1]) is None
    assert usage_from_responses(
        {"object": "response", "usage": {"input_tokens": 2, "output_tokens": 1}}
    ) == TokenUsage(2, 1)
    # booleans and negative numbers are not counts
    assert usage_from_ollama({"prompt_eval_count": True, "eval_count": -1}) is None


def test_usage_from_body_and_route_choice():
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}).encode()
    assert usage_from_body("openai", body) == TokenUsage(5, 6)
    assert usage_from_body("openai", b'{"choices": []}') is None
    assert usage_from_body("ollama", b"not json eval_count") is None
    assert tm.usage_api("openai", "/v1/responses") == "responses"
    assert tm.usage_api("openai", "/v1/chat/completions") == "openai"


# -- the stream sniffer ------------------------------------------------------------------------
def feed_split(api: str, data: bytes, cuts: list[int]) -> TokenUsage:
    sniffer = StreamUsageSniffer(api)
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        sniffer.feed(data[start:cut])
        start = cut
    return sniffer.flush()


@pytest.mark.parametrize("api", sorted(STREAMS))
def test_sniffer_any_single_split(api):
    data, expected = STREAMS[api]
    for cut in range(len(data) + 1):
        assert feed_split(api, data, [cut]) == expected, f"split at {cut}"


@pytest.mark.parametrize("api", sorted(STREAMS))
def test_sniffer_random_and_bytewise_splits(api):
    data, expected = STREAMS[api]
    rng = random.Random(api)
    for _ in range(300):
        cuts = rng.sample(range(len(data)), rng.randint(1, 40))
        assert feed_split(api, data, cuts) == expected
    assert feed_split(api, data, list(range(len(data)))) == expected  # one byte at a time


def test_sniffer_last_line_without_newline():
    data = ndjson(OLLAMA_LINES).rstrip(b"\n")
    assert feed_split("ollama", data, [len(data) // 2]) == TokenUsage(26, 4)


def test_sniffer_parses_only_marker_lines(monkeypatch):
    """A long stream costs one substring search per chunk: JSON is parsed for usage lines only."""
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(tm.json, "loads", lambda s, *a, **k: parsed.append(s) or real_loads(s, *a, **k))
    token = {"choices": [{"index": 0, "delta": {"content": "word"}}], "usage": None}
    chunks = [b"data: " + json.dumps(token).encode() + b"\n\n" for _ in range(20_000)]
    chunks.append(b"data: " + json.dumps(OPENAI_CHUNKS[-1]).encode() + b"\n\ndata: [DONE]\n\n")
    sniffer = StreamUsageSniffer("openai")
    t0 = time.perf_counter()
    for c in chunks:
        sniffer.feed(c)
    per_chunk_us = (time.perf_counter() - t0) / len(chunks) * 1e6
    assert sniffer.flush() == TokenUsage(42, 8)
    assert len(parsed) == 1
    assert per_chunk_us < 20, f"{per_chunk_us:.2f} µs per chunk"


def test_sniffer_rejects_unknown_api():
    with pytest.raises(ValueError):
        StreamUsageSniffer("service")


# -- metrics -----------------------------------------------------------------------------------
def samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def rec(**kw) -> RequestRecord:
    base = dict(user="alice", route="/api/chat", api="ollama", status=200, model="tiny:1b", method="POST")
    base.update(kw)
    return RequestRecord(**base)


def test_metrics_render_requests_tokens_queue_slurm():
    m = Metrics(version="9.9")
    m.observe_request(
        rec(
            groups=("physics", "atlas"),
            prompt_tokens=10,
            completion_tokens=5,
            queue_wait_s=0.2,
            backend_s=1.5,
            duration_s=1.7,
            ttft_s=0.3,
        )
    )
    m.observe_request(rec(user="bob", status=404, error="NotFound", model="nope:1b"))
    m.observe_request(rec(route="/backend/state", api="service", method="GET", model=""))
    m.set_queue("tiny:1b", 3, 2)
    m.inflight("ollama", 1)
    m.slurm_event("submitted", job_id="101")
    m.slurm_event("started", job_id="101", pending_s=42.0)
    m.slurm_event("ready", job_id="101", startup_s=8.0)
    m.slurm_event("submitted", job_id="102")
    m.slurm_event("handover", from_job="101", to_job="102")
    m.slurm_event("released", job_id="101", reason="renewed")
    m.slurm_event("failed", kind="submit_rejected")
    m.set_backend_reachable(True)
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=")
    f = samples(body)
    P = "jupyter_llm_af_"
    assert (
        value(f, P + "requests_total", route="/api/chat", model="tiny:1b", status_class="2xx", group="atlas")
        == 1
    )
    assert (
        value(f, P + "requests_total", route="/api/chat", model="nope:1b", status_class="4xx", group="none")
        == 1
    )
    assert (
        value(f, P + "requests_total", route="/backend/state", model="none", status_class="2xx", group="none")
        == 1
    )
    assert value(f, P + "request_errors_total", route="/api/chat", kind="NotFound") == 1
    assert value(f, P + "prompt_tokens_total", model="tiny:1b", group="atlas") == 10
    assert value(f, P + "completion_tokens_total", model="tiny:1b", group="atlas") == 5
    assert value(f, P + "backend_seconds_total", model="tiny:1b", group="atlas") == 1.5
    assert value(f, P + "queue_waiting", model="tiny:1b") == 3
    assert value(f, P + "queue_running", model="tiny:1b") == 2
    assert value(f, P + "queue_wait_seconds_bucket", model="tiny:1b", le="0.25") == 1
    assert value(f, P + "time_to_first_token_seconds_count", model="tiny:1b") == 1
    assert value(f, P + "requests_in_flight", api="ollama") == 1
    assert value(f, P + "slurm_submissions_total") == 2
    assert value(f, P + "slurm_handovers_total") == 1
    assert value(f, P + "slurm_ready_total") == 1
    assert value(f, P + "slurm_releases_total", reason="renewed") == 1
    assert value(f, P + "slurm_failures_total", kind="submit_rejected") == 1
    assert value(f, P + "slurm_pending_seconds_sum") == 42.0
    assert value(f, P + "slurm_startup_seconds_count") == 1
    assert value(f, P + "slurm_jobs", state="pending") == 1  # 102
    assert value(f, P + "slurm_jobs", state="running") == 0  # 101 was released
    assert value(f, P + "backend_reachable") == 1
    assert value(f, P + "info", version="9.9") == 1
    assert b"alice" not in body and b"bob" not in body  # no per-user series by default


def test_metrics_per_user_and_group_choice():
    m = Metrics(per_user=True, groups=["students", "staff"])
    m.observe_request(rec(groups=("staff", "students"), prompt_tokens=3))
    m.observe_request(rec(user="carol", groups=("visitors",), prompt_tokens=4))
    f = samples(m.render()[0])
    P = "jupyter_llm_af_"
    assert value(f, P + "prompt_tokens_total", model="tiny:1b", group="students", user="alice") == 3
    assert value(f, P + "prompt_tokens_total", model="tiny:1b", group="other", user="carol") == 4


def test_metrics_label_values_are_bounded():
    m = Metrics(max_models=5)
    for i in range(50):
        m.observe_request(rec(model=f"made-up-{i}"))
    f = samples(m.render()[0])
    models = {dict(k[1]).get("model") for k in f if k[0] == "jupyter_llm_af_requests_total"}
    assert len(models) == 6 and "other" in models
    assert (
        value(
            f,
            "jupyter_llm_af_requests_total",
            route="/api/chat",
            model="other",
            status_class="2xx",
            group="none",
        )
        == 45
    )


def test_metrics_allowed():
    assert metrics_allowed("", "", is_admin=True)
    assert not metrics_allowed("Bearer anything", "", is_admin=False)  # no token set: admins only
    assert metrics_allowed("Bearer s3cret", "s3cret", is_admin=False)
    assert not metrics_allowed("Bearer s3cre", "s3cret", is_admin=False)
    assert not metrics_allowed("", "s3cret", is_admin=False)


def test_unknown_slurm_event_is_an_error_but_telemetry_swallows_it(caplog):
    with pytest.raises(ValueError):
        Metrics().slurm_event("exploded")
    t = Telemetry(access_log=False)
    with caplog.at_level(logging.ERROR, logger="jupyter_llm_af"):
        t.slurm_event("exploded")  # never breaks the launcher
    assert "Slurm telemetry failed" in caplog.text


# -- usage -------------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def at(day: date, hour: int = 12) -> float:
    return datetime(day.year, day.month, day.day, hour).timestamp()


def test_usage_summary_by_day_user_and_model(tmp_path):
    today = date(2025, 3, 10)
    clock = Clock(at(today))
    book = UsageBook(clock=clock)
    for d, user, model, p, c in [
        (today, "alice", "tiny:1b", 10, 5),
        (today, "alice", "small:3b", 20, 7),
        (today, "bob", "tiny:1b", 1, 1),
        (today - timedelta(days=2), "alice", "tiny:1b", 100, 50),
        (today - timedelta(days=9), "alice", "tiny:1b", 1000, 500),  # outside the last 7 days
    ]:
        book.add(
            rec(
                user=user,
                model=model,
                prompt_tokens=p,
                completion_tokens=c,
                queue_wait_s=0.5,
                backend_s=2.0,
                ended_at=at(d),
            )
        )
    book.add(rec(status=503, error="BackendUnavailable", ended_at=at(today)))
    mine = book.summary("alice")
    assert mine["since"] == "2025-03-04" and mine["until"] == "2025-03-10"
    assert [d["date"] for d in mine["days"]][-1] == "2025-03-10" and len(mine["days"]) == 7
    assert mine["totals"]["requests"] == 4 and mine["totals"]["errors"] == 1
    assert mine["totals"]["prompt_tokens"] == 130 and mine["totals"]["completion_tokens"] == 62
    assert mine["totals"]["backend_s"] == 6.0
    assert mine["days"][-1]["prompt_tokens"] == 30 and mine["days"][-3]["prompt_tokens"] == 100
    assert mine["models"]["small:3b"]["completion_tokens"] == 7
    assert "users" not in mine
    everyone = book.summary(None, today, today)
    assert everyone["users"]["bob"]["prompt_tokens"] == 1 and everyone["totals"]["requests"] == 4
    assert (
        book.summary("alice", today - timedelta(days=9), today - timedelta(days=9))["totals"]["prompt_tokens"]
        == 1000
    )
    with pytest.raises(BadRequest):
        book.summary("alice", today, today - timedelta(days=1))


def test_usage_memory_is_bounded():
    clock = Clock(at(date(2025, 3, 10)))
    book = UsageBook(clock=clock, retention_days=5, max_models=3)
    for i in range(30):
        clock.t += 86400
        book.add(rec(model=f"m{i % 7}", ended_at=clock.t))
        book.add(rec(model=f"x{i}", ended_at=clock.t))
    assert len(book._days) <= 6
    day = next(iter(book._days.values()))["alice"]
    assert len(day.models) <= 4


def test_usage_answer_permissions_and_period():
    today = date(2025, 3, 10)
    book = UsageBook(clock=Clock(at(today)))
    book.add(rec(user="alice", prompt_tokens=3, ended_at=at(today)))
    book.add(rec(user="bob", prompt_tokens=4, ended_at=at(today)))
    doc = usage_answer(book, "alice", False, {})
    assert doc["usage"]["totals"]["prompt_tokens"] == 3 and "all" not in doc
    assert doc["today"] == "2025-03-10" and len(doc["queue"]["waiting"]) == 120
    with pytest.raises(Forbidden):
        usage_answer(book, "alice", False, {"user": "bob"})
    admin = usage_answer(book, "root", True, {"user": "bob", "days": "1"})
    assert admin["usage"]["totals"]["prompt_tokens"] == 4
    assert admin["all"]["users"].keys() == {"alice", "bob"} and len(admin["all"]["days"]) == 1
    for bad in ({"since": "yesterday"}, {"days": "x"}, {"days": "0"}):
        with pytest.raises(BadRequest):
            usage_answer(book, "alice", False, bad)


def test_accounting_file_lines_and_replay_after_restart(tmp_path):
    path = tmp_path / "acct" / "usage.jsonl"
    today = date(2025, 3, 10)
    clock = Clock(at(today))
    book = UsageBook(log_file=str(path), clock=clock)
    book.add(rec(prompt_tokens=11, completion_tokens=22, job_id="4242", ended_at=at(today)))
    book.add(rec(user="bob", route="/v1/chat/completions", api="openai", prompt_tokens=1, ended_at=at(today)))
    path.rename(tmp_path / "acct" / "usage.jsonl.1")  # logrotate
    book.add(rec(prompt_tokens=5, ended_at=at(today)))
    book.close()
    first = [json.loads(x) for x in (tmp_path / "acct" / "usage.jsonl.1").read_text().splitlines()]
    assert len(first) == 2 and path.read_text().count("\n") == 1
    line = first[0]
    assert line["user"] == "alice" and line["prompt_tokens"] == 11 and line["job_id"] == "4242"
    assert set(line) == {
        "time",
        "user",
        "groups",
        "route",
        "api",
        "model",
        "status",
        "stream",
        "queue_wait_s",
        "backend_s",
        "duration_s",
        "ttft_s",
        "prompt_tokens",
        "completion_tokens",
        "job_id",
        "error",
    }
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    # a restarted service reads its figures back
    again = UsageBook(log_file=str(tmp_path / "acct" / "usage.jsonl.1"), clock=clock)
    assert again.summary("alice")["totals"]["prompt_tokens"] == 11
    assert again.summary(None)["totals"]["requests"] == 2


def test_queue_history_keeps_maxima_and_carries_forward():
    clock = Clock(1_000_000.0)
    q = QueueHistory(window_s=300, step_s=30, clock=clock)
    q.sample(1, 1)
    q.sample(5, 2)
    q.sample(0, 2)
    clock.t += 95  # three quiet slots
    q.sample(2, 1)
    h = q.history()
    assert len(h["waiting"]) == 10 and h["step_s"] == 30
    assert h["waiting"][-5:] == [0, 5, 0, 0, 2]  # max in its slot, then the last depth carried
    assert h["running"][-5:] == [0, 2, 2, 2, 1]
    clock.t += 3600
    assert q.history()["waiting"] == [2] * 10  # nothing changed since: still the last depth told


# -- the fan-out and the access log ---------------------------------------------------------------
def test_trace_records_timings_usage_and_access_line(caplog):
    t = Telemetry(usage_log_file="", access_log=True)
    with caplog.at_level(logging.INFO, logger=tm.ACCESS_LOGGER):
        trace = t.begin("/api/chat", "ollama", "alice", ("atlas",), "POST")
        trace.model, trace.stream = "tiny:1b", True
        time.sleep(0.02)
        trace.admitted(job_id="777")
        for chunk in [
            ndjson(OLLAMA_LINES[:2]),
            ndjson(OLLAMA_LINES[2:])[:-30],
            ndjson(OLLAMA_LINES[2:])[-30:],
        ]:
            trace.first_byte()
            trace.sniffer.feed(chunk)
        r = trace.finish(200)
        assert trace.finish(500) is r  # once
    assert r.prompt_tokens == 26 and r.completion_tokens == 4 and r.job_id == "777"
    assert r.queue_wait_s >= 0.02 and r.ttft_s is not None and r.duration_s >= r.queue_wait_s
    line = [m for m in caplog.messages if "route=/api/chat" in m][0]
    assert "user=alice" in line and "model=tiny:1b" in line and "status=200" in line
    assert "prompt_tokens=26" in line and "job=777" in line and "queue_wait=0.0" in line
    f = samples(t.render_metrics()[0])
    assert value(f, "jupyter_llm_af_requests_in_flight", api="ollama") == 0
    assert t.usage.summary("alice")["totals"]["completion_tokens"] == 4


def test_access_line_never_holds_credentials_prompts_or_queries():
    line = format_access(rec(route="/api/tags?token=SECRET123", user="al ice", prompt_tokens=1))
    assert "SECRET123" not in line and "token=" not in line.replace("prompt_tokens=", "")
    assert 'user="al ice"' in line and "route=/api/tags " in line
    fields = set(json.loads(format_access(rec(), style="json")))
    assert fields == {
        "user",
        "method",
        "route",
        "api",
        "model",
        "status",
        "stream",
        "queue_wait",
        "backend",
        "duration",
        "ttft",
        "prompt_tokens",
        "completion_tokens",
        "job",
        "error",
    }


def test_service_polls_are_debug_and_unknown_users_not_counted(caplog):
    t = Telemetry(access_log=True)
    with caplog.at_level(logging.INFO, logger=tm.ACCESS_LOGGER):
        t.record(rec(route="/backend/state", api="service", method="GET"))
        t.record(rec(route="/backend/start", api="service", method="POST"))
        t.record(rec(user="", status=401, error="Unauthorized"))
        t.record(rec(route="/api/tags", method="GET", model=""))  # a listing: metrics only
    assert not any("/backend/state" in m for m in caplog.messages)
    assert any("/backend/start" in m for m in caplog.messages)
    assert t.usage.summary(None)["totals"]["requests"] == 0


def test_queue_changed_feeds_gauges_and_history():
    t = Telemetry(access_log=False)
    t.queue_changed("tiny:1b", 4, 2)
    t.queue_changed("small:3b", 1, 1)
    t.queue_changed("tiny:1b", 0, 0)
    f = samples(t.render_metrics()[0])
    assert value(f, "jupyter_llm_af_queue_waiting", model="tiny:1b") == 0
    assert value(f, "jupyter_llm_af_queue_waiting", model="small:3b") == 1
    h = t.usage.queue_history()
    assert h["waiting"][-1] == 5 and h["running"][-1] == 3  # the slot's maxima of the totals


def test_from_config_reads_the_settings(tmp_path):
    from jupyter_llm_af.config import LLMService

    cfg = LLMService(
        metrics_per_user=True,
        usage_log_file=str(tmp_path / "u.jsonl"),
        access_log=False,
        metrics_groups=["a"],
    )
    t = Telemetry.from_config(cfg, version="1.2.3")
    assert t.metrics.per_user and t.metrics.groups == ["a"] and not t.access_log
    t.record(rec())
    t.close()
    assert json.loads((tmp_path / "u.jsonl").read_text())["user"] == "alice"


def test_route_api_enum_is_labelled_by_its_value():
    class Api(str, Enum):  # as routes.Api
        ANTHROPIC = "anthropic"

    t = Telemetry(access_log=False)
    t.begin("/v1/messages", Api.ANTHROPIC, "alice").finish(200)
    body = t.render_metrics()[0].decode()
    assert 'api="anthropic"' in body and "Api." not in body


async def _chunks(parts: list[bytes]):
    for p in parts:
        await asyncio.sleep(0)
        yield p


@pytest.mark.asyncio
async def test_traced_stream_records_at_the_end_and_when_the_client_goes():
    t = Telemetry(access_log=False)
    data = STREAMS["openai"][0]
    trace = t.begin("/v1/chat/completions", "openai", "alice", (), "POST")
    trace.model, trace.stream = "tiny:1b", True
    trace.admitted("9")
    out = b"".join([c async for c in tm.traced_stream(trace, _chunks([data[:50], data[50:]]))])
    assert out == data and trace.record is not None
    assert (trace.record.prompt_tokens, trace.record.completion_tokens) == (42, 8)
    assert trace.record.error is None and trace.record.ttft_s is not None
    gone = t.begin("/api/chat", "ollama", "bob", (), "POST")
    stream = tm.traced_stream(gone, _chunks([b'{"message":{"content":"a"}}\n'] * 5))
    await stream.__anext__()
    await stream.aclose()  # the client went away
    assert gone.record is not None and gone.record.error == "client_gone"
    f = samples(t.render_metrics()[0])
    assert value(f, "jupyter_llm_af_requests_in_flight", api="ollama") == 0


def test_queue_snapshot_from_admission_models():
    t = Telemetry(access_log=False)
    t.queue_snapshot(
        [{"name": "a:1b", "waiting": 2, "running": 1}, {"name": "b:2b", "waiting": 0, "running": 3}]
    )
    t.queue_snapshot([{"name": "b:2b", "waiting": 1, "running": 2}])
    f = samples(t.render_metrics()[0])
    assert value(f, "jupyter_llm_af_queue_waiting", model="a:1b") == 0  # no longer listed
    assert value(f, "jupyter_llm_af_queue_running", model="b:2b") == 2
    h = t.usage.queue_history()
    assert (h["waiting"][-1], h["running"][-1]) == (2, 4)  # the slot's maxima


def test_json_framing_parses_a_whole_answer_once():
    body = json.dumps(
        {
            "id": "c1",
            "choices": [{"message": {"content": "x\n" * 10}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3},
        },
        indent=2,
    ).encode()
    for cuts in ([], [7], list(range(0, len(body), 5))):
        s = StreamUsageSniffer("openai", "json")
        start = 0
        for cut in [*cuts, len(body)]:
            s.feed(body[start:cut])
            start = cut
        assert s.flush() == TokenUsage(9, 3)
    big = StreamUsageSniffer("openai", "json")
    big.feed(b"x" * (tm.MAX_BODY + 1))
    big.feed(b'{"usage": {"prompt_tokens": 1}}\n')
    assert big.flush() == TokenUsage()  # too large: not kept, not parsed
    with pytest.raises(ValueError):
        StreamUsageSniffer("openai", "xml")


@pytest.mark.asyncio
async def test_traced_stream_of_a_non_streamed_answer():
    t = Telemetry(access_log=False)
    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}).encode()
    trace = t.begin("/v1/chat/completions", "openai", "alice")
    trace.model, trace.stream = "tiny:1b", False
    trace.admitted()
    assert b"".join([c async for c in tm.traced_stream(trace, _chunks([body[:9], body[9:]]))]) == body
    assert (trace.record.prompt_tokens, trace.record.completion_tokens) == (4, 2)
    listing = t.begin("/api/tags", "ollama", "alice", (), "GET")
    assert [c async for c in tm.traced_stream(listing, _chunks([b'{"models": []}']))]
    assert listing.record.prompt_tokens is None and listing.sniffer is None
