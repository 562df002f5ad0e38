"""Slurm launcher benchmark on the real local cluster (``.ci/slurm-up.sh``; root starts it if needed).

    python benchmarks/cold_start.py [--runs 3] [--clients 4] [--no-handover] [--json FILE]

Cold start: time from the first request to a ready backend, split into
  sbatch       the ``sbatch`` call itself,
  slurm        job accepted → batch script running (Slurm's scheduling and launch),
  backend      script running → backend accepting connections (measured by a 10 ms side probe),
  service      the rest: the launcher's own overhead (noticing RUNNING, endpoint file, readiness probe),
then the first token of a streamed POST /api/generate. The job runs ``tests.resources.ollama_double``.
Handover: clients send requests back to back while the job reaches its renewal window (time limit
1 min, so about 35 s); prints requests/s, failed requests and the longest pause between completions.
Runs in well under 3 minutes.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this directory is sys.path[0]: its queue.py would shadow the stdlib ``queue``.
_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = _REPO
elif _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

from jupyter_llm_af.backends.slurm import SlurmBackend  # noqa: E402
from tests import slurm_helpers as sh  # noqa: E402


def _endpoint_url(state_dir: Path) -> str | None:
    for path in state_dir.glob("endpoint-*.json"):
        try:
            data = json.loads(path.read_text())
            return f"http://{data['host']}:{data['port']}"
        except (OSError, ValueError, KeyError):
            pass
    return None


async def _side_probe(state_dir: Path, stop: asyncio.Event) -> float | None:
    """Wall time at which the job's backend first answered GET / (polled every 10 ms)."""
    async with httpx.AsyncClient(trust_env=False) as http:
        url = None
        while not stop.is_set():
            if url is None:
                url = _endpoint_url(state_dir)
            if url is not None:
                try:
                    if (await http.get(url + "/", timeout=1)).status_code == 200:
                        return time.time()
                except httpx.HTTPError:
                    pass
            await asyncio.sleep(0.01)
    return None


def _job_started_at(state_dir: Path, job_name: str, job_id: str) -> float | None:
    """The batch script's first line (default template): ``job N started on HOST at EPOCH``."""
    try:
        text = (state_dir / f"{job_name}-{job_id}.out").read_text()
    except OSError:
        return None
    match = re.search(r"started on \S+ at (\d+\.\d+)", text)
    return float(match.group(1)) if match else None


async def cold_start(root: Path) -> dict[str, float]:
    job_name = sh.unique_job_name("llmaf-bench")
    state_dir = root / job_name
    # the product's poll settings (fast polls after submit), not the tests' shortened ones
    # the benchmark talks to the job directly (the gateway's cost is benchmarks/gateway.py's subject)
    backend = SlurmBackend(
        **sh.backend_settings(state_dir, job_name, max_pending_poll=5.0, steady_poll=5.0, gateway=False)
    )
    await backend.start()
    stop = asyncio.Event()
    probe = asyncio.create_task(_side_probe(state_dir, stop))
    try:
        t_request = time.time()
        endpoint = await backend.ready_endpoint(time.monotonic() + 120)
        t_ready = time.time()
        async with httpx.AsyncClient(trust_env=False) as http:
            body = {"model": "tiny:1b", "prompt": "hello", "options": {"num_predict": 8}}
            async with http.stream("POST", endpoint.url + "/api/generate", json=body, timeout=30) as r:
                t_token = 0.0
                async for _ in r.aiter_lines():
                    t_token = t_token or time.time()  # first NDJSON line = first token
        stop.set()
        t_listen = await probe
        events = backend.jobs_seen[endpoint.key].events
        t_job = _job_started_at(state_dir, job_name, endpoint.key)
        total = t_ready - t_request
        sbatch = events["submitted"] - events["submit_start"]
        slurm = (t_job or events["running"]) - events["submitted"]
        backend_start = (t_listen or t_ready) - (t_job or events["running"])
        return {
            "total_s": total,
            "sbatch_s": sbatch,
            "slurm_s": slurm,
            "backend_s": backend_start,
            "service_s": total - sbatch - slurm - backend_start,
            "first_token_s": t_token - t_ready,
            "request_to_first_token_s": t_token - t_request,
        }
    finally:
        stop.set()
        probe.cancel()
        await backend.shutdown()
        sh.cancel_named(job_name)


async def handover(root: Path, clients: int) -> dict[str, float]:
    job_name = sh.unique_job_name("llmaf-bench")
    # no GRES: on the one-GPU test cluster a successor must run beside the job it replaces
    # the benchmark talks to the job directly (the gateway's cost is benchmarks/gateway.py's subject)
    backend = SlurmBackend(
        **sh.backend_settings(
            root / job_name, job_name, gres="", time_limit="1", renew_before=45.0, gateway=False
        )
    )
    await backend.start()
    try:
        first = await backend.ready_endpoint(time.monotonic() + 60)
        done_at: list[float] = []
        latencies: list[float] = []
        failures: list[str] = []
        served: dict[str, int] = {}
        stop = asyncio.Event()
        switched_at: list[float] = []

        async def client() -> None:
            async with httpx.AsyncClient(trust_env=False) as http:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        async with backend.lease(time.monotonic() + 60) as endpoint:
                            r = await http.post(
                                endpoint.url + "/api/generate",
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
                    done_at.append(now)
                    latencies.append(now - started)

        async def watch() -> None:
            while not stop.is_set():
                job = backend.describe()["job"]
                if job and job["id"] != first.key and not switched_at:
                    switched_at.append(time.monotonic())
                if (
                    switched_at
                    and time.monotonic() - switched_at[0] > 3
                    and first.key not in backend.describe()["draining"]
                ):
                    stop.set()
                await asyncio.sleep(0.05)

        began = time.monotonic()
        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(watcher, 120)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        ended = time.monotonic()
        done_at.sort()
        gaps = [b - a for a, b in zip([began] + done_at, done_at, strict=False)]
        switch = switched_at[0] if switched_at else ended
        around = [t for t in done_at if abs(t - switch) <= 2.0]
        return {
            "duration_s": ended - began,
            "requests": len(done_at),
            "failed": len(failures),
            "requests_per_s": len(done_at) / (ended - began),
            "requests_per_s_around_switch": len(around) / 4.0,
            "longest_pause_s": max(gaps) if gaps else 0.0,
            "p99_latency_s": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else 0.0,
            "jobs_serving": len(served),
            "example_failure": failures[0] if failures else "",
        }
    finally:
        await backend.shutdown()
        sh.cancel_named(job_name)


async def bench(runs: int, clients: int, with_handover: bool) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="llmaf-bench-") as tmp:
        cold = [await cold_start(Path(tmp)) for _ in range(runs)]
        print(f"Cold start, {len(cold)} runs (median, min-max), seconds:")
        for key in cold[0]:
            values = [r[key] for r in cold]
            print(f"  {key:26s} {statistics.median(values):7.3f}   ({min(values):.3f}-{max(values):.3f})")
        results["cold_start"] = cold
        if with_handover:
            h = await handover(Path(tmp), clients)
            print(f"Handover to a successor job under load ({clients} clients):")
            for key, value in h.items():
                print(f"  {key:30s} {value:.3f}" if isinstance(value, float) else f"  {key:30s} {value}")
            results["handover"] = h
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold starts to time")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients during the handover")
    parser.add_argument("--no-handover", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    why = sh.ensure_slurm()
    if why:
        sys.exit(f"cannot run: {why}")
    results = asyncio.run(bench(args.runs, args.clients, not args.no_handover))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
