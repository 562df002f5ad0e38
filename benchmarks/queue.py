"""Admission queue benchmark: many clients waiting at once behind a small concurrency limit.

    python benchmarks/queue.py [--clients 1000] [--max-concurrent 4] [--users 50] [--service-ms 2]

Reports the process RSS, how many clients were served, and p50/p99 of the admission overhead per
request: the time spent inside entering and leaving the slot, excluding the time suspended while
waiting, measured the same way for a bare ``asyncio.Semaphore`` in the same run as the baseline.
Targets (issue 6): < 1 ms per request, < 150 MB RSS with 1,000 waiters.

Reusable: ``run_inprocess(n_clients, max_concurrent)`` returns the figures as a dict (a later
benchmark can drive the HTTP service and compare).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this directory is sys.path[0] and this file would shadow the stdlib ``queue``.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Coroutine  # noqa: E402
from typing import Any  # noqa: E402

from jupyter_llm_af.admission import Admission  # noqa: E402

TARGET_OVERHEAD_MS = 1.0
TARGET_RSS_MB = 150.0


def rss_mb() -> dict[str, float]:
    """Current and peak resident set size of this process, in MB (Linux /proc, else getrusage)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if "peak_rss_mb" not in out:
        # ru_maxrss is KiB on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_mb"] = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
        out.setdefault("rss_mb", out["peak_rss_mb"])
    return out


async def timed(coro: Coroutine[Any, Any, Any]) -> tuple[Any, float]:
    """Drive ``coro`` as a Task would; return its result and the seconds spent running inside it.

    Time suspended on a future (waiting in the queue) is excluded, so this is the pure cost of
    the code under test, comparable across implementations.
    """
    spent = 0.0
    while True:
        t = time.perf_counter()
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            spent += time.perf_counter() - t
            return stop.value, spent
        spent += time.perf_counter() - t
        if yielded is None:  # bare yield (asyncio.sleep(0))
            await asyncio.sleep(0)
        else:
            # Take the future over as a Task does (clear its "being awaited" flag), wait for it;
            # the coroutine reads its outcome itself when resumed.
            yielded._asyncio_future_blocking = False
            try:
                await yielded
            except BaseException:  # noqa: BLE001 - the coroutine itself raises it on send()
                pass


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(name: str, overheads: list[float], wall: float, served: int) -> dict[str, Any]:
    ms = [v * 1000 for v in overheads]
    return {
        "name": name,
        "served": served,
        "wall_s": round(wall, 3),
        "overhead_ms_p50": round(_pct(ms, 0.50), 4),
        "overhead_ms_p99": round(_pct(ms, 0.99), 4),
        "overhead_ms_max": round(max(ms), 4),
        "overhead_ms_mean": round(statistics.fmean(ms), 4),
    }


async def _run_admission(
    n_clients: int, max_concurrent: int, n_users: int, service_s: float
) -> dict[str, Any]:
    adm = Admission(max_concurrent, max_queue=n_clients, max_queue_per_user=n_clients)
    overheads: list[float] = []
    served = 0
    peak_waiting = 0
    deadline = time.monotonic() + 3600

    async def client(i: int) -> None:
        nonlocal served, peak_waiting
        cm = adm.slot(f"user{i % n_users}", "bench:1b", deadline, stream=False)
        _, t_enter = await timed(cm.__aenter__())
        peak_waiting = max(peak_waiting, adm.waiting)
        await asyncio.sleep(service_s)
        _, t_exit = await timed(cm.__aexit__(None, None, None))
        overheads.append(t_enter + t_exit)
        served += 1

    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(client(i)) for i in range(n_clients)]
    await asyncio.sleep(0)  # every client has run its first step: all but max_concurrent are queued
    waiting_at_once = adm.waiting
    mem = rss_mb()  # while they all wait
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    assert adm.waiting == 0 and adm.running == 0
    out = _summary("Admission", overheads, wall, served)
    out.update(waiting_at_once=waiting_at_once, rss_mb_while_waiting=round(mem["rss_mb"], 1))
    return out


async def _run_semaphore(n_clients: int, max_concurrent: int, service_s: float) -> dict[str, Any]:
    sem = asyncio.Semaphore(max_concurrent)
    overheads: list[float] = []
    served = 0

    async def client(i: int) -> None:
        nonlocal served
        _, t_enter = await timed(sem.acquire())
        await asyncio.sleep(service_s)
        t = time.perf_counter()
        sem.release()
        overheads.append(t_enter + time.perf_counter() - t)
        served += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(n_clients)))
    return _summary("asyncio.Semaphore", overheads, time.perf_counter() - t0, served)


def run_inprocess(
    n_clients: int = 1000, max_concurrent: int = 4, n_users: int = 50, service_ms: float = 2.0
) -> dict[str, Any]:
    """Run both scenarios in this process (own event loop); return the figures."""
    service_s = service_ms / 1000

    async def main() -> dict[str, Any]:
        # Warm up both paths so the first measured requests do not pay for lazy setup.
        await _run_admission(20, max_concurrent, 5, 0)
        await _run_semaphore(20, max_concurrent, 0)
        before = rss_mb()
        adm = await _run_admission(n_clients, max_concurrent, n_users, service_s)
        after = rss_mb()  # peak covers the admission run only: the baseline runs next
        base = await _run_semaphore(n_clients, max_concurrent, service_s)
        return {
            "n_clients": n_clients,
            "max_concurrent": max_concurrent,
            "n_users": n_users,
            "service_ms": service_ms,
            "rss_mb_before": round(before["rss_mb"], 1),
            "peak_rss_mb": round(after["peak_rss_mb"], 1),
            "admission": adm,
            "baseline": base,
        }

    return asyncio.run(main())


def _report(r: dict[str, Any]) -> str:
    a, b = r["admission"], r["baseline"]
    lines = [
        f"{r['n_clients']} clients from {r['n_users']} users behind max_concurrent={r['max_concurrent']}, "
        f"service {r['service_ms']} ms (asyncio.sleep)",
        f"waiting at once: {a['waiting_at_once']}; RSS while waiting {a['rss_mb_while_waiting']} MB, "
        f"peak {r['peak_rss_mb']} MB (before: {r['rss_mb_before']} MB)",
        f"{'':20} {'served':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'mean ms':>9} {'wall s':>7}",
    ]
    for x in (a, b):
        lines.append(
            f"{x['name']:20} {x['served']:>7} {x['overhead_ms_p50']:>9.4f} {x['overhead_ms_p99']:>9.4f} "
            f"{x['overhead_ms_max']:>9.4f} {x['overhead_ms_mean']:>9.4f} {x['wall_s']:>7.3f}"
        )
    ok_time = a["overhead_ms_p99"] < TARGET_OVERHEAD_MS
    ok_mem = r["peak_rss_mb"] < TARGET_RSS_MB
    ok_all = a["served"] == r["n_clients"]
    lines.append(
        f"targets: p99 overhead < {TARGET_OVERHEAD_MS} ms: {'PASS' if ok_time else 'FAIL'}; "
        f"peak RSS < {TARGET_RSS_MB:.0f} MB: {'PASS' if ok_mem else 'FAIL'}; "
        f"all served: {'PASS' if ok_all else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--max-concurrent", type=int, default=4)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--service-ms", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    r = run_inprocess(args.clients, args.max_concurrent, args.users, args.service_ms)
    print(json.dumps(r, indent=2) if args.json else _report(r))
    ok = (
        r["admission"]["served"] == args.clients
        and r["admission"]["overhead_ms_p99"] < TARGET_OVERHEAD_MS
        and r["peak_rss_mb"] < TARGET_RSS_MB
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
