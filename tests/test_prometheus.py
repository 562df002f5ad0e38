"""A real Prometheus (Debian's ``prometheus``) scrapes what :mod:`jupyter_llm_af.metrics` renders,
with the scrape config of ``examples/site/prometheus.yml`` (bearer token from a file), and its
HTTP API ``/api/v1/query`` returns the request, queue, token and Slurm job series after traffic;
every expression of the Grafana dashboard parses and evaluates in that Prometheus.

Heavy (a Prometheus server): run under ``flock /tmp/heavy.lock``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from jupyter_llm_af.telemetry import RequestRecord, Telemetry

from .conftest import ROOT, free_port

SITE = ROOT / "examples" / "site"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
METRICS_TOKEN = "metrics-" + os.urandom(8).hex()


@contextlib.contextmanager
def metrics_endpoint(telemetry: Telemetry, token: str) -> Iterator[tuple[str, list[int]]]:
    """``GET /metrics`` with ``metrics.render()``, 401 without the bearer token; yields its
    address and the statuses it answered."""
    answered: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            given = self.headers.get("Authorization", "")
            if self.path != "/metrics" or not hmac.compare_digest(given, f"Bearer {token}"):
                self.send_response(401)
                self.end_headers()
                answered.append(401)
                return
            body, ctype = telemetry.render_metrics()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            answered.append(200)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", answered
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def scrape_config(tmp: Path, target: str, metrics_path: str, token: str) -> Path:
    """The example scrape config, pointed at ``target`` and scraping every second."""
    doc = yaml.safe_load((SITE / "prometheus.yml").read_text())
    doc["global"]["scrape_interval"] = "1s"
    doc["global"]["evaluation_interval"] = "1s"
    job = doc["scrape_configs"][0]
    job["static_configs"][0]["targets"] = [target]
    job["metrics_path"] = metrics_path
    token_file = tmp / "jupyter-llm-af.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    job["authorization"]["credentials_file"] = str(token_file)
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc))
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return path


@contextlib.contextmanager
def prometheus(config: Path, tmp: Path) -> Iterator[str]:
    """A Prometheus server on a free loopback port, stopped by PID."""
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prometheus not ready within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    doc = r.json()
    assert r.status_code == 200 and doc["status"] == "success", f"{expr}: {doc}"
    return doc["data"]["result"]


def scalar(url: str, expr: str) -> float | None:
    result = query(url, expr)
    return float(result[0]["value"][1]) if result else None


def wait_for(url: str, expr: str, expected: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = scalar(url, expr)
        if last == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {last}, expected {expected}")


def traffic(t: Telemetry, n: int) -> None:
    """``n`` chat requests (alice, atlas) with the backend's token counts, one 503, one listing."""
    for _ in range(n):
        t.record(
            RequestRecord(
                user="alice", groups=("atlas",), route="/api/chat", api="ollama", status=200, method="POST",
                model="tiny:1b", stream=True, queue_wait_s=0.3, backend_s=1.2, duration_s=1.5, ttft_s=0.2,
                prompt_tokens=26, completion_tokens=40, job_id="4242",
            )
        )  # fmt: skip
    t.record(
        RequestRecord(
            user="bob", route="/v1/chat/completions", api="openai", status=503, method="POST",
            model="small:3b", queue_wait_s=900.0, duration_s=900.0, error="AdmissionTimeout",
        )
    )  # fmt: skip
    t.record(RequestRecord(user="bob", route="/api/tags", api="ollama", status=200, method="GET"))


def test_prometheus_scrapes_the_rendered_metrics():
    t = Telemetry(access_log=False, version="test")
    traffic(t, 5)
    t.queue_changed("tiny:1b", 3, 4)
    t.slurm_event("submitted", job_id="4242")
    t.slurm_event("started", job_id="4242", pending_s=75.0)
    t.slurm_event("ready", job_id="4242", startup_s=12.0)
    t.slurm_event("submitted", job_id="4243")
    t.slurm_event("handover", from_job="4242", to_job="4243")
    t.slurm_event("failed", kind="submit_rejected")
    t.backend_reachable(True)
    with (
        tempfile.TemporaryDirectory(prefix="llm-af-prom-") as d,
        metrics_endpoint(t, METRICS_TOKEN) as (
            target,
            answered,
        ),
    ):
        tmp = Path(d)
        with prometheus(scrape_config(tmp, target, "/metrics", METRICS_TOKEN), tmp) as url:
            wait_for(url, 'up{job="jupyter-llm-af"}', 1)
            assert 200 in answered and 401 not in answered  # it sent the token from the file
            # requests by route, model, status class and group
            wait_for(
                url,
                'sum(jupyter_llm_af_requests_total{route="/api/chat",status_class="2xx",group="atlas"})',
                5,
            )
            assert scalar(url, 'sum(jupyter_llm_af_requests_total{status_class="5xx"})') == 1
            assert scalar(url, 'jupyter_llm_af_request_errors_total{kind="AdmissionTimeout"}') == 1
            # tokens in and out, the backend's counts
            assert scalar(url, 'sum(jupyter_llm_af_prompt_tokens_total{model="tiny:1b"})') == 130
            assert scalar(url, 'sum(jupyter_llm_af_completion_tokens_total{model="tiny:1b"})') == 200
            # queue depth and waits
            assert scalar(url, 'jupyter_llm_af_queue_waiting{model="tiny:1b"}') == 3
            assert scalar(url, 'jupyter_llm_af_queue_running{model="tiny:1b"}') == 4
            assert scalar(url, 'jupyter_llm_af_queue_wait_seconds_count{model="tiny:1b"}') == 5
            # Slurm jobs: states, submissions, handovers, pending time, failures
            assert scalar(url, 'jupyter_llm_af_slurm_jobs{state="running"}') == 1
            assert scalar(url, 'jupyter_llm_af_slurm_jobs{state="pending"}') == 1
            assert scalar(url, "jupyter_llm_af_slurm_submissions_total") == 2
            assert scalar(url, "jupyter_llm_af_slurm_handovers_total") == 1
            assert scalar(url, "jupyter_llm_af_slurm_pending_seconds_sum") == 75
            assert scalar(url, 'jupyter_llm_af_slurm_failures_total{kind="submit_rejected"}') == 1
            assert scalar(url, "jupyter_llm_af_backend_reachable") == 1
            # more traffic: the counters move, and rates over the scrapes are non-zero
            traffic(t, 3)
            wait_for(url, 'sum(jupyter_llm_af_requests_total{route="/api/chat"})', 8)
            time.sleep(2.5)  # a few more scrapes for rate()
            assert (scalar(url, "sum(rate(jupyter_llm_af_completion_tokens_total[1m]))") or 0) > 0
            # the dashboard's every expression parses and evaluates here
            dash = json.loads((SITE / "grafana-dashboard.json").read_text())
            exprs = [
                tg["expr"].replace("$__rate_interval", "1m") for p in dash["panels"] for tg in p["targets"]
            ]
            answered_exprs = [e for e in exprs if query(url, e)]
            assert answered_exprs == exprs, set(exprs) - set(answered_exprs)


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_prometheus_without_the_token_gets_nothing(token):
    t = Telemetry(access_log=False)
    traffic(t, 1)
    with (
        tempfile.TemporaryDirectory(prefix="llm-af-prom-") as d,
        metrics_endpoint(t, METRICS_TOKEN) as (
            target,
            answered,
        ),
    ):
        tmp = Path(d)
        config = scrape_config(tmp, target, "/metrics", token or "x")
        if not token:  # no authorization block at all
            doc = yaml.safe_load(config.read_text())
            del doc["scrape_configs"][0]["authorization"]
            config.write_text(yaml.safe_dump(doc))
        with prometheus(config, tmp) as url:
            wait_for(url, 'up{job="jupyter-llm-af"}', 0)
            assert answered and set(answered) == {401}
            assert query(url, "jupyter_llm_af_requests_total") == []


def test_prometheus_scrapes_the_service(ollama_double):
    """The real standalone service in front of the Ollama double: traffic through its APIs, then
    Prometheus reads the request, queue and token series from its /metrics (metrics token), and
    the usage API and the accounting file hold the very counts the backend reported."""
    from .conftest import PY, TOKEN, auth, start_process

    with tempfile.TemporaryDirectory(prefix="llm-af-prom-") as d:
        tmp = Path(d)
        port = free_port()
        service = start_process(
            [PY, "-m", "jupyter_llm_af", "serve", "--port", str(port), "--token", TOKEN,
             "--backend", "upstream", "--upstream-url", ollama_double.url,
             f"--LLMService.usage_log_file={tmp / 'usage.jsonl'}"],
            f"http://127.0.0.1:{port}/",
            headers=auth(),
            env={"JUPYTER_LLM_AF_METRICS_TOKEN": METRICS_TOKEN},
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            reported = {"prompt": 0, "completion": 0}
            chat = {"model": "tiny:1b", "messages": [{"role": "user", "content": "hello there"}]}
            for _ in range(3):  # streamed NDJSON: the counts are on the last line
                with httpx.stream("POST", base + "/api/chat", json=chat, headers=auth(), timeout=30) as r:
                    lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
                reported["prompt"] += lines[-1]["prompt_eval_count"]
                reported["completion"] += lines[-1]["eval_count"]
            for _ in range(2):  # OpenAI, not streamed
                doc = httpx.post(base + "/v1/chat/completions", json=chat, headers=auth(), timeout=30).json()
                reported["prompt"] += doc["usage"]["prompt_tokens"]
                reported["completion"] += doc["usage"]["completion_tokens"]
            missing = {**chat, "model": "nope:1b", "stream": False}
            assert httpx.post(base + "/api/chat", json=missing, headers=auth(), timeout=30).status_code == 404
            # the metrics token opens /metrics and nothing else; API tokens of non-admins do not
            metrics_auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            assert httpx.get(base + "/metrics", headers=metrics_auth, timeout=10).status_code == 200
            assert httpx.get(base + "/api/tags", headers=metrics_auth, timeout=10).status_code == 401
            with prometheus(scrape_config(tmp, f"127.0.0.1:{port}", "/metrics", METRICS_TOKEN), tmp) as url:
                wait_for(url, 'up{job="jupyter-llm-af"}', 1)
                wait_for(url, 'sum(jupyter_llm_af_requests_total{route="/api/chat",status_class="2xx"})', 3)
                assert scalar(url, 'sum(jupyter_llm_af_requests_total{route="/v1/chat/completions"})') == 2
                assert scalar(url, 'sum(jupyter_llm_af_requests_total{status_class="4xx"})') == 1
                assert scalar(url, "sum(jupyter_llm_af_prompt_tokens_total)") == reported["prompt"]
                assert scalar(url, "sum(jupyter_llm_af_completion_tokens_total)") == reported["completion"]
                assert scalar(url, 'sum(jupyter_llm_af_queue_wait_seconds_count{model="tiny:1b"})') == 5
                assert (
                    scalar(url, 'sum(jupyter_llm_af_time_to_first_token_seconds_count{model="tiny:1b"})') == 5
                )
                assert scalar(url, 'jupyter_llm_af_requests_in_flight{api="ollama"}') == 0
                assert scalar(url, 'jupyter_llm_af_queue_waiting{model="tiny:1b"}') == 0
                assert scalar(url, 'jupyter_llm_af_queue_running{model="tiny:1b"}') == 0
                assert scalar(url, "jupyter_llm_af_backend_reachable") == 1
            usage = httpx.get(base + "/usage?days=1", headers=auth(), timeout=10).json()
            totals = usage["usage"]["totals"]
            assert (totals["prompt_tokens"], totals["completion_tokens"]) == (
                reported["prompt"],
                reported["completion"],
            )
            assert totals["requests"] == 6 and totals["errors"] == 1
            lines = [json.loads(x) for x in (tmp / "usage.jsonl").read_text().splitlines()]
            assert sum(x["completion_tokens"] or 0 for x in lines) == reported["completion"]
            assert TOKEN not in (tmp / "usage.jsonl").read_text() and TOKEN not in service.log()
            access = [x for x in service.log().splitlines() if "route=/api/chat" in x]
            assert len(access) == 4 and all("user=user" in x and "prompt_tokens=" in x for x in access)
        finally:
            service.stop()
