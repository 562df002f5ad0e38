"""Admission queue benchmark (issue 6): many clients waiting at once behind a small concurrency limit.

    python benchmarks/queue.py [--clients 1000] [--max-concurrent 4] [--users 50] [--service-ms 2]
                               [--no-http] [--rounds 5] [--delay 0.002] [--pending-s 3] [--json]

In-process (first): reports the process RSS, how many clients were served, and p50/p99 of the
admission overhead per request: the time spent inside entering and leaving the slot, excluding
the time suspended while waiting, measured the same way for a bare ``asyncio.Semaphore`` in the
same run as the baseline.

HTTP (then; ``--no-http`` skips it): ``python -m jupyter_llm_af serve --backend upstream`` with
``--users`` tokens (``--token-file``, ``token user`` lines) in front of ``python -m
tests.resources.ollama_double --delay 0.002``; ``--clients`` concurrent clients (aiohttp, one connection
each) POST ``/api/generate`` with ``stream: false`` and ``options.num_predict`` 2-4. The same
burst goes, in turns, to a service with ``max_concurrent = --max-concurrent`` (``queued``: all but
4 wait) and to one with ``max_concurrent = --clients`` (``baseline``: admitted at once); the
admission cost per request is the service's CPU time per request (``/proc``) in ``queued`` minus
``baseline`` in the same round. Also reported: VmRSS/VmHWM of the service, requests served,
wall time, client latency, the most requests waiting at once (``GET /queue``, polled). A
``pending`` variant: ``--backend local`` whose ``local_command`` (a ``--config`` file) sleeps
``--pending-s`` before starting the double, so the burst waits for the backend and the queue.

Targets (issue 6): < 1 ms per request, < 150 MB RSS with 1,000 waiters; PASS/MISS, exit 0.

Reusable: ``run_inprocess(n_clients, max_concurrent)`` and ``run_http(n_clients, max_concurrent)``
return the figures as dicts.
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
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Coroutine  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _common  # noqa: E402
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
        f"targets (in-process): p99 overhead < {TARGET_OVERHEAD_MS} ms: {_common.verdict(ok_time)}; "
        f"peak RSS < {TARGET_RSS_MB:.0f} MB: {_common.verdict(ok_mem)}; "
        f"all served: {_common.verdict(ok_all)}"
    )
    return "\n".join(lines)


# =========================================================================================
# HTTP mode: the standalone service in front of the Ollama double, 1,000 clients at once.
# =========================================================================================
MODEL = "tiny:1b"


def proc_mem_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process ``pid`` in MB (Linux /proc; NaN elsewhere)."""
    out = {"rss_mb": float("nan"), "peak_rss_mb": float("nan")}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mb"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["peak_rss_mb"] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE (the children inherit it) towards ``want``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _bodies() -> list[bytes]:
    """Short non-streamed generations: ``num_predict`` 2, 3 or 4 (the double sleeps delay * n)."""
    return [
        json.dumps(
            {"model": MODEL, "prompt": "Say hi", "stream": False, "options": {"num_predict": n}}
        ).encode()
        for n in (2, 3, 4)
    ]


async def _monitor(
    session: Any, url: str, headers: dict[str, str], pid: int, stop: asyncio.Event, every_s: float
) -> dict[str, Any]:
    """Poll the service (``url``: ``/queue`` or ``/backend/state``) and its RSS until ``stop``.

    Returns the largest ``waiting``, ``waiting + running``, sampled VmRSS, and (``/backend/state``)
    when the backend was first seen ready and the most requests in the service before that.
    """
    out: dict[str, Any] = {
        "max_waiting": 0,
        "max_in_service": 0,
        "max_rss_mb": 0.0,
        "ready_at_s": None,
        "max_in_service_before_ready": 0,
        "polls": 0,
    }
    t0 = time.perf_counter()
    while not stop.is_set():
        out["max_rss_mb"] = max(out["max_rss_mb"], proc_mem_mb(pid)["rss_mb"])
        try:
            async with session.get(url, headers=headers) as r:
                doc = await r.json(content_type=None)
            out["polls"] += 1
            totals = doc.get("totals") or doc.get("queue") or {}
            waiting, running = int(totals.get("waiting", 0)), int(totals.get("running", 0))
            out["max_waiting"] = max(out["max_waiting"], waiting)
            out["max_in_service"] = max(out["max_in_service"], waiting + running)
            if "state" in doc:
                if doc["state"] == "ready":
                    if out["ready_at_s"] is None:
                        out["ready_at_s"] = time.perf_counter() - t0
                else:
                    out["max_in_service_before_ready"] = max(
                        out["max_in_service_before_ready"], waiting + running
                    )
        except Exception:  # noqa: BLE001 - a missed sample is only a missed sample
            pass
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            pass
    out["max_rss_mb"] = max(out["max_rss_mb"], proc_mem_mb(pid)["rss_mb"])
    return out


async def _burst(
    base: str,
    tokens: list[str],
    n_clients: int,
    pid: int,
    monitor_path: str,
    monitor_token: str,
    timeout_s: float,
    poll_s: float = 0.05,
) -> dict[str, Any]:
    """``n_clients`` concurrent POST /api/generate (one connection each), users round robin.

    Returns status counts, wall time, latencies, the backend's own time per request (the double's
    ``total_duration``), the service's CPU time and RSS over the burst, and the monitor's figures.
    """
    import aiohttp

    bodies = _bodies()
    latencies: list[float] = []
    backend_ms: list[float] = []
    statuses: dict[str, int] = {}
    mon_headers = {"Authorization": f"Bearer {monitor_token}"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # The monitor has its own keep-alive connection, opened before the burst (never in the backlog).
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as mon_session:
        async with mon_session.get(base + monitor_path, headers=mon_headers) as r:
            await r.read()
        connector = aiohttp.TCPConnector(limit=0)  # one connection per client, all at once
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(i: int) -> None:
                headers = {
                    "Authorization": f"Bearer {tokens[i % len(tokens)]}",
                    "Content-Type": "application/json",
                }
                t = time.perf_counter()
                try:
                    async with session.post(base + "/api/generate", data=bodies[i % 3], headers=headers) as r:
                        data = await r.read()
                        key = str(r.status)
                    if r.status == 200:
                        latencies.append((time.perf_counter() - t) * 1000)
                        backend_ms.append(json.loads(data).get("total_duration", 0) / 1e6)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    key = type(e).__name__
                statuses[key] = statuses.get(key, 0) + 1

            stop = asyncio.Event()
            mem0 = proc_mem_mb(pid)
            cpu0 = _common.cpu_seconds(pid)
            mon = asyncio.ensure_future(
                _monitor(mon_session, base + monitor_path, mon_headers, pid, stop, poll_s)
            )
            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n_clients)))
            wall = time.perf_counter() - t0
            cpu = _common.cpu_seconds(pid) - cpu0
            stop.set()
            m = await mon
    mem1 = proc_mem_mb(pid)
    served = statuses.get("200", 0)
    return {
        "served": served,
        "statuses": dict(sorted(statuses.items())),
        "wall_s": round(wall, 3),
        "req_per_s": round(served / wall, 1) if wall else float("nan"),
        "latency_ms_p50": round(_common.pct(latencies, 0.50), 2),
        "latency_ms_p99": round(_common.pct(latencies, 0.99), 2),
        "backend_ms_p50": round(_common.pct(backend_ms, 0.50), 2),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(cpu * 1000 / n_clients, 4),
        "rss_mb_before": round(mem0["rss_mb"], 1),
        "rss_mb_max_sampled": round(m["max_rss_mb"], 1),
        "peak_rss_mb": round(mem1["peak_rss_mb"], 1),  # VmHWM: the process's peak so far
        "max_waiting": m["max_waiting"],
        "max_in_service": m["max_in_service"],
        "ready_at_s": None if m["ready_at_s"] is None else round(m["ready_at_s"], 2),
        "max_in_service_before_ready": m["max_in_service_before_ready"],
        "monitor_polls": m["polls"],
    }


def _service_args(
    port: int, token_file: str, max_concurrent: int, max_queue: int, per_user: int
) -> list[str]:
    return [
        _common.PY,
        "-m",
        "jupyter_llm_af",
        "serve",
        "--port",
        str(port),
        "--token-file",
        token_file,
        f"--LLMService.max_concurrent={max_concurrent}",
        f"--LLMService.max_queue={max_queue}",
        f"--LLMService.max_queue_per_user={per_user}",
    ]


def run_http(
    n_clients: int = 1000,
    max_concurrent: int = 4,
    n_users: int = 50,
    delay: float = 0.002,
    rounds: int = 5,
    pending_s: float = 3.0,
    time_cap: float = 120.0,
    log: Any = None,
) -> dict[str, Any]:
    """The standalone service over HTTP, three ways (each its own process, started here):

    * ``queued``: ``max_concurrent`` slots (4), so nearly all ``n_clients`` wait in the queue;
    * ``baseline``: ``max_concurrent = n_clients``: every request is admitted at once (fast path);
    * ``pending``: ``--backend local`` whose command sleeps ``pending_s`` before starting the
      double: the clients wait for the backend and the queue at once.

    ``queued`` and ``baseline`` take turns for ``rounds`` rounds (order flipped every round), in
    front of one Ollama double (``--delay``). The admission cost per request is the service's
    CPU time per request in ``queued`` minus ``baseline`` in the same round.
    """
    say = log or (lambda *_: None)
    t_start = time.monotonic()
    limits = _raise_nofile(4 * n_clients + 512)
    tmp = tempfile.mkdtemp(prefix="llm-af-bench-queue-")
    children: list[_common.Child] = []
    users = [f"user{i:02d}" for i in range(n_users)]
    tokens = [f"bench-{os.urandom(8).hex()}" for _ in users]
    monitor_token = f"bench-{os.urandom(8).hex()}"
    token_file = os.path.join(tmp, "tokens")
    with open(token_file, "w") as f:
        f.write("# token user\n")
        for tok, user in zip(tokens, users, strict=True):
            f.write(f"{tok} {user}\n")
        f.write(f"{monitor_token} monitor\n")
    per_user = max(100, -(-n_clients // n_users))  # ceil: the queued run must never get 429
    max_queue = max(2000, n_clients)
    mon_auth = {"Authorization": f"Bearer {monitor_token}"}
    burst_timeout = max(30.0, min(90.0, time_cap / 2))
    out: dict[str, Any] = {
        "n_clients": n_clients,
        "max_concurrent": max_concurrent,
        "n_users": n_users,
        "delay_s": delay,
        "num_predict": [2, 3, 4],
        "nofile_limit": list(limits),
        "rounds": [],
    }
    try:
        # -- queued vs baseline, one double behind both ------------------------------------
        dport = _common.free_port()
        double = _common.Child(
            "double",
            [
                _common.PY,
                "-m",
                "tests.resources.ollama_double",
                "--port",
                str(dport),
                "--delay",
                str(delay),
                "--models",
                MODEL,
            ],
        )
        children.append(double)
        double.wait_ready(f"http://127.0.0.1:{dport}/", timeout=30)
        durl = f"http://127.0.0.1:{dport}"
        services: dict[str, tuple[_common.Child, str]] = {}
        for name, conc in (("queued", max_concurrent), ("baseline", n_clients)):
            port = _common.free_port()
            args = _service_args(port, token_file, conc, max_queue, per_user)
            c = _common.Child(f"service-{name}", [*args, "--backend", "upstream", "--upstream-url", durl])
            children.append(c)
            services[name] = (c, f"http://127.0.0.1:{port}")
        for c, base in services.values():
            c.wait_ready(base + "/", headers=mon_auth, timeout=60)
        say(f"  started the double and 2 services in {time.monotonic() - t_start:.1f} s")
        for name, (c, base) in services.items():
            # warm up: imports, pools and caches that the first requests would pay for
            asyncio.run(_burst(base, tokens, 20, c.pid, "/queue", monitor_token, 30))
            out[f"{name}_rss_mb_idle"] = round(proc_mem_mb(c.pid)["rss_mb"], 1)
        # Keep time for the pending variant (about pending_s + a queued run + start-up).
        reserve = pending_s + 15.0
        for r in range(rounds):
            if r and time.monotonic() - t_start > time_cap - reserve - 2 * out["rounds"][-1]["_round_s"]:
                say(f"  time cap: {r} of {rounds} rounds")
                break
            t_round = time.monotonic()
            order = ("queued", "baseline") if r % 2 == 0 else ("baseline", "queued")
            rec: dict[str, Any] = {}
            for name in order:
                c, base = services[name]
                rec[name] = asyncio.run(
                    _burst(base, tokens, n_clients, c.pid, "/queue", monitor_token, burst_timeout)
                )
                x = rec[name]
                say(
                    f"  round {r + 1} {name:8}: {x['served']}/{n_clients} served in {x['wall_s']:.2f} s, "
                    f"max waiting {x['max_waiting']}, CPU {x['cpu_ms_per_request']:.3f} ms/req, "
                    f"VmHWM {x['peak_rss_mb']} MB"
                )
            rec["admission_cpu_ms_per_request"] = round(
                rec["queued"]["cpu_ms_per_request"] - rec["baseline"]["cpu_ms_per_request"], 4
            )
            rec["_round_s"] = time.monotonic() - t_round
            out["rounds"].append(rec)
        for name, (c, _base) in services.items():
            out[f"{name}_peak_rss_mb"] = round(proc_mem_mb(c.pid)["peak_rss_mb"], 1)
        for c in reversed(children):
            c.stop()
        children.clear()

        # -- pending backend: the clients wait for the backend and the queue at once ---------
        port = _common.free_port()
        config = os.path.join(tmp, "pending_config.py")
        command = (
            f"sleep {pending_s}; exec {shlex.quote(_common.PY)} -m tests.resources.ollama_double "
            f"--port {{port}} --delay {delay} --models {MODEL}"
        )
        with open(config, "w") as f:
            f.write(f"c.LLMService.local_command = {json.dumps(['sh', '-c', command])}\n")
        svc_tmp = os.path.join(tmp, "pending-tmp")  # the local backend's log goes to $TMPDIR
        os.makedirs(svc_tmp)
        args = _service_args(port, token_file, max_concurrent, max_queue, per_user)
        c = _common.Child(
            "service-pending", [*args, "--backend", "local", "--config", config], env={"TMPDIR": svc_tmp}
        )
        children.append(c)
        base = f"http://127.0.0.1:{port}"
        c.wait_ready(base + "/", headers=mon_auth, timeout=60)  # "/" answers without a backend
        p = asyncio.run(
            _burst(base, tokens, n_clients, c.pid, "/backend/state", monitor_token, burst_timeout, 0.1)
        )
        out["pending"] = p
        out["pending_s"] = pending_s
        say(
            f"  pending  : {p['served']}/{n_clients} served in {p['wall_s']:.2f} s, backend ready after "
            f"{p['ready_at_s']} s, {p['max_in_service_before_ready']} in the service before it, "
            f"VmHWM {p['peak_rss_mb']} MB"
        )
    finally:
        for c in reversed(children):
            c.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for rec in out["rounds"]:
        rec.pop("_round_s", None)
    out["total_s"] = round(time.monotonic() - t_start, 1)
    return out


def _report_http(h: dict[str, Any]) -> str:
    n = h["n_clients"]
    rounds = h["rounds"]
    lines = [
        "",
        f"HTTP: jupyter-llm-af serve --backend upstream in front of tests.resources.ollama_double "
        f"--delay {h['delay_s']}, {n} concurrent clients (one connection each) from {h['n_users']} "
        f"users, POST /api/generate stream=false num_predict 2-4; {len(rounds)} rounds, order "
        "flipped each round",
    ]
    rows = []
    for name, label in (
        ("queued", f"queued (max_concurrent={h['max_concurrent']})"),
        ("baseline", f"baseline (max_concurrent={n})"),
    ):
        xs = [r[name] for r in rounds]
        rows.append(
            [
                label,
                f"{min(x['served'] for x in xs)}/{n}",
                _common.rng([x["max_waiting"] for x in xs], "{:.0f}"),
                _common.rng([x["wall_s"] for x in xs]),
                _common.rng([x["latency_ms_p50"] for x in xs], "{:.0f}"),
                _common.rng([x["latency_ms_p99"] for x in xs], "{:.0f}"),
                _common.rng([x["backend_ms_p50"] for x in xs], "{:.1f}"),
                _common.rng([x["cpu_ms_per_request"] for x in xs], "{:.3f}"),
                f"{h[name + '_rss_mb_idle']} / {h[name + '_peak_rss_mb']}",
            ]
        )
    lines.append(
        _common.table(
            [
                "service",
                "served",
                "max waiting",
                "wall s",
                "lat p50 ms",
                "lat p99 ms",
                "backend ms",
                "CPU ms/req",
                "RSS idle/peak MB",
            ],
            rows,
        )
    )
    diffs = [r["admission_cpu_ms_per_request"] for r in rounds]
    adm = _common.median(diffs)
    lines.append(
        f"admission cost (service CPU per request, queued - baseline, same round): "
        f"{_common.rng(diffs, '{:+.3f}')} ms"
    )
    statuses = {
        k: v
        for r in rounds
        for x in (r["queued"], r["baseline"])
        for k, v in x["statuses"].items()
        if k != "200"
    }
    if statuses:
        lines.append(f"non-200 outcomes: {statuses}")
    p = h.get("pending")
    if p:
        lines.append(
            f"pending backend (--backend local, command sleeps {h['pending_s']:.0f} s before the double): "
            f"{p['served']}/{n} served in {p['wall_s']:.2f} s; backend seen ready {p['ready_at_s']} s "
            f"into the burst; up to {p['max_in_service_before_ready']} requests in the service before "
            f"that ({p['max_waiting']} waiting max); RSS {p['rss_mb_before']} MB before, "
            f"peak {p['peak_rss_mb']} MB"
        )
        if set(p["statuses"]) - {"200"}:
            lines.append(f"pending non-200 outcomes: {p['statuses']}")
    peak = max([h["queued_peak_rss_mb"]] + ([p["peak_rss_mb"]] if p else []))
    all_served = all(r[k]["served"] == n for r in rounds for k in ("queued", "baseline")) and (
        not p or p["served"] == n
    )
    ok_adm, ok_mem = adm < TARGET_OVERHEAD_MS, peak < TARGET_RSS_MB
    lines.append(
        f"targets (HTTP): admission cost < {TARGET_OVERHEAD_MS} ms/request: {_common.verdict(ok_adm)} "
        f"({adm:+.3f} ms); service peak RSS < {TARGET_RSS_MB:.0f} MB: {_common.verdict(ok_mem)} "
        f"({peak} MB); all served: {_common.verdict(all_served)}"
    )
    lines.append(f"HTTP part {h['total_s']} s; {_common.machine_note()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--max-concurrent", type=int, default=4)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--service-ms", type=float, default=2.0, help="in-process: time a slot is held")
    p.add_argument("--no-http", action="store_true", help="only the in-process part")
    p.add_argument("--rounds", type=int, default=5, help="HTTP: queued/baseline rounds")
    p.add_argument("--delay", type=float, default=0.002, help="HTTP: the double's seconds per token")
    p.add_argument("--pending-s", type=float, default=3.0, help="HTTP: seconds the pending backend sleeps")
    p.add_argument("--time-cap", type=float, default=120.0, help="HTTP: seconds for the HTTP part")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    r = run_inprocess(args.clients, args.max_concurrent, args.users, args.service_ms)
    if not args.json:
        print(_report(r), flush=True)
    if not args.no_http:

        def say(msg: str) -> None:
            if not args.json:
                print(msg, flush=True)

        r["http"] = run_http(
            args.clients,
            args.max_concurrent,
            args.users,
            args.delay,
            args.rounds,
            args.pending_s,
            args.time_cap,
            log=say,
        )
        if not args.json:
            print(_report_http(r["http"]))
    if args.json:
        print(json.dumps(r, indent=2))
    return 0  # a benchmark: MISS is a figure, not a failure


if __name__ == "__main__":
    sys.exit(main())
