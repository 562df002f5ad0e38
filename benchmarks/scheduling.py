"""Model-aware scheduling benchmark (issue 15): a mixed workload on simulated backend jobs.

    python benchmarks/scheduling.py [--scale 0.05] [--duration 120] [--swap-duration 360] [--seed 15]
                                    [--json FILE]

Everything runs in this process on one event loop; a backend job is simulated (``SimJob``) the way
Ollama serves: ``parallel`` requests at once per loaded model (further ones wait inside the
backend, unseen by the queue), a load time when a model is not resident, ``asyncio.sleep`` for
the work. Requests go through the real :class:`jupyter_llm_af.admission.Admission` and then to
the job the ticket names.

Workload (times in *model seconds*; the run sleeps ``scale`` times as long; ``--duration`` of
arrivals, the same trace for every configuration):

* ``gen`` (a 27B chat model, 20 GB): 4 chat users, Poisson arrivals, generations of ~4 s
  (lognormal, sigma 0.4), 4 parallel per job, 10 s to load;
* ``embed`` (all-minilm, 0.5 GB): 4 RAG users, each embedding documents: bursts of 10 sequential
  requests of ~50 ms, 2 s apart, 4 parallel per job, 1 s to load;
* ``big`` (a 32B model, 25 GB, does not fit beside ``gen`` in 40 GB), ``swap`` scenario only: one
  user asking every ~20 s while ``gen`` streams on.

Configurations:

* (a) today's global queue: no workers given, ``max_concurrent`` 4 (= the backend's parallelism);
  (a') the same with ``max_concurrent`` 8 (more admitted, the rest waits inside the backend);
* (b) model-aware, one 40 GB job with ``gen`` and ``embed`` loaded, 4 slots per model, cap 8;
* (c) model-aware under twice the ``gen`` load (more than one job can serve), 1 job vs 2 jobs
  (the second starts empty: its first ``gen`` pays the load), caps 8 / 16;
* swap (``--swap-duration`` of arrivals): one 40 GB job, ``gen`` at a lower rate and ``big``
  every 45-75 s, (a) global queue vs (b) model-aware: each ``big`` request waits for ``gen`` to
  drain and be evicted (never forever), then ``gen`` loads again.

Per configuration: requests served per model, wait (arrival to the start of work on the backend:
queue + backend queue + load) p50/p95 per model, and per job the busy fraction (at least one
request computing) and the mean number of requests computing. Bounded: ``--max-requests``
arrivals per configuration and a wall-clock cap.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)  # benchmarks/queue.py would shadow the stdlib queue

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections import defaultdict, deque  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks import _common  # noqa: E402
from jupyter_llm_af.admission import Admission, WorkerInfo  # noqa: E402

GPU_GB = 40.0
PARALLEL = 4
SIZES: dict[str, float | None] = {"gen": 20.0, "embed": 0.5, "big": 25.0}
LOAD_S = {"gen": 10.0, "embed": 1.0, "big": 12.0}
GEN_S, EMBED_S, BIG_S = 4.0, 0.05, 6.0
EMBED_BURST, EMBED_PAUSE_S = 10, 2.0


@dataclass
class Arrival:
    at: float  # model seconds from the start
    user: str
    model: str
    work_s: float


class SimJob:
    """One backend job as Ollama runs it: one scheduler takes requests in arrival order and hands
    each to its model's runner (``PARALLEL`` slots, further requests wait in the runner); a model
    not loaded is loaded first, after unloading idle runners (least recently used) until it fits
    ``gpu_gb``, waiting for a runner to go idle when none is. That wait blocks the requests behind
    it, for every model, as Ollama's scheduler does. Models admission evicts are unloaded if idle.
    """

    def __init__(self, key: str, scale: float, loaded: set[str], gpu_gb: float = GPU_GB):
        self.key = key
        self.scale = scale
        self.gpu_gb = gpu_gb
        self.loaded: dict[str, float] = {m: SIZES[m] or 0.0 for m in sorted(loaded)}
        self.refs: dict[str, int] = defaultdict(int)  # requests handed to a runner, not finished
        self.last_used: dict[str, float] = {}
        self.slots: dict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(PARALLEL))
        self.pending: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self.loads = 0
        self.computing = 0
        self._t0 = time.perf_counter()
        self._last = self._t0
        self.busy_s = 0.0
        self.area = 0.0  # integral of requests computing over time

    def _tick(self, delta: int) -> None:
        now = time.perf_counter()
        dt = now - self._last
        if self.computing:
            self.busy_s += dt
        self.area += self.computing * dt
        self._last = now
        self.computing += delta

    async def _schedule(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            model, fut = self.pending[0]
            if model not in self.loaded:
                size = SIZES[model] or 0.0
                while sum(self.loaded.values()) + size > self.gpu_gb + 1e-6:
                    idle = [m for m in self.loaded if not self.refs[m]]
                    if idle:
                        del self.loaded[min(idle, key=lambda m: self.last_used.get(m, 0.0))]
                        continue
                    self._wake.clear()
                    await self._wake.wait()  # a runner finishing a request wakes us
                self.loads += 1
                await asyncio.sleep(LOAD_S[model] * self.scale)
                self.loaded[model] = size
            self.pending.popleft()
            self.refs[model] += 1
            if not fut.done():
                fut.set_result(None)

    async def serve(self, model: str, work_s: float, evict: tuple[str, ...] = ()) -> float:
        """Run one request; returns when (perf_counter) its work started."""
        for victim in evict:
            if not self.refs[victim]:
                self.loaded.pop(victim, None)
        if self._scheduler is None:
            self._scheduler = asyncio.ensure_future(self._schedule())
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((model, fut))
        self._wake.set()
        await fut
        try:
            async with self.slots[model]:
                started = time.perf_counter()
                self._tick(+1)
                try:
                    await asyncio.sleep(work_s * self.scale)
                finally:
                    self._tick(-1)
        finally:
            self.refs[model] -= 1
            self.last_used[model] = time.perf_counter()
            self._wake.set()
        return started

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            try:
                await self._scheduler
            except asyncio.CancelledError:
                pass

    def utilisation(self, wall: float) -> dict[str, float]:
        self._tick(0)
        return {"busy": self.busy_s / wall, "mean_computing": self.area / wall}


def make_trace(seed: int, duration: float, gen_rate: float, with_big: bool, cap: int) -> list[Arrival]:
    """Open-loop arrivals for gen/big; embed users are closed loops (see :func:`embed_user`)."""
    rnd = random.Random(seed)
    out: list[Arrival] = []
    t = 0.0
    i = 0
    while True:
        t += rnd.expovariate(gen_rate)
        if t >= duration:
            break
        out.append(Arrival(t, f"chat{i % 4}", "gen", GEN_S * rnd.lognormvariate(0, 0.4)))
        i += 1
    if with_big:
        t = 5.0
        while t < duration:
            out.append(Arrival(t, "analyst", "big", BIG_S * rnd.lognormvariate(0, 0.3)))
            t += rnd.uniform(45.0, 75.0)
    out.sort(key=lambda a: a.at)
    return out[:cap]


@dataclass
class Result:
    name: str
    waits: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    jobs: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0
    evictions: int = 0
    loads: int = 0  # model loads the simulated backends did

    def row(self, scale: float) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "wall_s": round(self.wall_s, 2)}
        for model, ws in sorted(self.waits.items()):
            secs = [w / scale for w in ws]
            out[model] = {
                "served": len(ws),
                "wait_p50_s": round(_common.pct(secs, 0.50), 2),
                "wait_p95_s": round(_common.pct(secs, 0.95), 2),
                "wait_max_s": round(max(secs), 2),
            }
        out["jobs"] = {k: {m: round(v, 3) for m, v in u.items()} for k, u in self.jobs.items()}
        out["loads"] = self.loads
        out["evictions"] = self.evictions
        return out


async def run_config(
    name: str,
    adm: Admission,
    jobs: dict[str, SimJob],
    trace: list[Arrival],
    duration: float,
    scale: float,
    n_embed_users: int = 4,
) -> Result:
    res = Result(name)
    far = time.monotonic() + 3600
    t0 = time.perf_counter()
    any_job = next(iter(jobs.values()))

    async def one(user: str, model: str, work_s: float) -> None:
        arrived = time.perf_counter()
        async with adm.slot(user, model, far) as ticket:
            job = jobs.get(ticket.worker, any_job)
            if ticket.evict:
                res.evictions += len(ticket.evict)
            started = await job.serve(model, work_s, ticket.evict)
        res.waits[model].append(started - arrived)

    async def open_loop() -> None:
        tasks = []
        for a in trace:
            delay = t0 + a.at * scale - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(a.user, a.model, a.work_s)))
        await asyncio.gather(*tasks)

    async def embed_user(u: int) -> None:
        rnd = random.Random(1000 + u)
        await asyncio.sleep(u * 0.5 * scale)
        while (time.perf_counter() - t0) / scale < duration:
            for _ in range(EMBED_BURST):
                await one(f"rag{u}", "embed", EMBED_S * rnd.lognormvariate(0, 0.3))
            await asyncio.sleep(EMBED_PAUSE_S * rnd.uniform(0.5, 1.5) * scale)

    await asyncio.gather(open_loop(), *(embed_user(u) for u in range(n_embed_users)))
    res.wall_s = time.perf_counter() - t0
    res.jobs = {k: j.utilisation(res.wall_s) for k, j in jobs.items()}
    for j in jobs.values():
        await j.close()
    res.loads = sum(j.loads for j in jobs.values())
    assert adm.running == 0 and adm.waiting == 0
    return res


def _worker(key: str, loaded: Mapping[str, float | None]) -> WorkerInfo:
    return WorkerInfo(key, GPU_GB, PARALLEL, loaded)


async def scenarios(args: argparse.Namespace) -> list[dict[str, Any]]:
    s, d, cap = args.scale, args.duration, args.max_requests
    # gen load: 0.75 of one job's 4 slots (normal), 1.5 (heavy: one job cannot keep up); swap:
    # 0.4, as every big request costs gen two loads (~22 s) on top
    traces = {
        "normal": make_trace(args.seed, d, 0.75 * PARALLEL / GEN_S, False, cap),
        "heavy": make_trace(args.seed, d, 1.5 * PARALLEL / GEN_S, False, cap),
        "swap": make_trace(args.seed, args.swap_duration, 0.4 * PARALLEL / GEN_S, True, cap),
    }
    preloaded = {"gen": 20.0, "embed": 0.5}
    rows: list[dict[str, Any]] = []
    big = 10_000

    def global_queue(n: int) -> Admission:
        return Admission(n, big, big)

    def model_aware(n: int, workers: list[WorkerInfo]) -> Admission:
        return Admission(n, big, big, size_of=SIZES.get, workers=workers)

    def one_job(key: str = "job1") -> dict[str, SimJob]:
        return {key: SimJob(key, s, set(preloaded))}

    configs: list[tuple[str, str, Admission, dict[str, SimJob]]] = [
        ("(a) global queue, max_concurrent 4", "normal", global_queue(4), one_job("default")),
        ("(a') global queue, max_concurrent 8", "normal", global_queue(8), one_job("default")),
        ("(b) model-aware, 1 job", "normal", model_aware(8, [_worker("job1", preloaded)]), one_job()),
        ("(c) model-aware, 1 job", "heavy", model_aware(8, [_worker("job1", preloaded)]), one_job()),
        (
            "(c) model-aware, 2 jobs",
            "heavy",
            model_aware(16, [_worker("job1", preloaded), _worker("job2", {})]),
            {**one_job(), "job2": SimJob("job2", s, set())},
        ),
        ("(a) global queue, max_concurrent 4", "swap", global_queue(4), one_job("default")),
        ("(b) model-aware, 1 job", "swap", model_aware(8, [_worker("job1", preloaded)]), one_job()),
    ]
    for name, workload, adm, jobs in configs:
        duration = args.swap_duration if workload == "swap" else d
        r = await asyncio.wait_for(run_config(name, adm, jobs, traces[workload], duration, s), args.time_cap)
        row = r.row(s)
        row["workload"] = workload
        rows.append(row)
        print(f"  {name}, {workload}: {row['wall_s']} s", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    header = [
        "configuration",
        "load",
        "gen n",
        "gen wait p50/p95 s",
        "embed n",
        "embed wait p50/p95 s",
        "big n",
        "big wait p50/p95/max s",
        "jobs: busy %, mean computing",
        "loads",
        "wall s",
    ]
    out = []
    for r in rows:

        def w(m: str, with_max: bool = False, r: dict[str, Any] = r) -> tuple[str, str]:
            x = r.get(m)
            if not x:
                return "-", "-"
            fig = f"{x['wait_p50_s']:.2f} / {x['wait_p95_s']:.2f}"
            if with_max:
                fig += f" / {x['wait_max_s']:.2f}"
            return str(x["served"]), fig

        jobs = "; ".join(
            f"{k} {u['busy'] * 100:.0f} %, {u['mean_computing']:.2f}" for k, u in r["jobs"].items()
        )
        out.append(
            [
                r["name"],
                r["workload"],
                *w("gen"),
                *w("embed"),
                *w("big", True),
                jobs,
                str(r["loads"]),
                f"{r['wall_s']:.1f}",
            ]
        )
    return _common.table(header, out)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Targets (issue 15), each from figures of this run."""

    def fig(name: str, workload: str, model: str, what: str) -> float:
        for r in rows:
            if r["name"].startswith(name) and r["workload"] == workload and model in r:
                return float(r[model][what])
        return float("nan")

    embed_a, embed_b = (
        fig("(a) ", "normal", "embed", "wait_p95_s"),
        fig("(b) ", "normal", "embed", "wait_p95_s"),
    )
    gen_a, gen_b = fig("(a) ", "normal", "gen", "wait_p95_s"), fig("(b) ", "normal", "gen", "wait_p95_s")
    one, two = (
        fig("(c) model-aware, 1", "heavy", "gen", "wait_p95_s"),
        fig("(c) model-aware, 2", "heavy", "gen", "wait_p95_s"),
    )
    big_max = fig("(b) ", "swap", "big", "wait_max_s")
    big_n = fig("(b) ", "swap", "big", "served")
    bound = GEN_S * 3 + LOAD_S["big"] + LOAD_S["gen"]  # the longest gen running, then the two loads
    return [
        f"embeddings not held behind generations: embed p95 {embed_b:.2f} s model-aware vs {embed_a:.2f} s "
        f"global, < 0.5 s: {_common.verdict(embed_b < 0.5 and embed_b <= embed_a)}",
        f"generations no worse: gen p95 {gen_b:.2f} s vs {gen_a:.2f} s (+10 % at most): "
        f"{_common.verdict(gen_b <= gen_a * 1.1 + 0.05)}",
        f"a second job under twice the load: gen p95 {two:.2f} s vs {one:.2f} s with one, < half: "
        f"{_common.verdict(two < one / 2)}",
        f"no load starves: big served {big_n:.0f}, longest wait {big_max:.2f} s < {bound:.0f} s: "
        f"{_common.verdict(big_max < bound)}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=0.05, help="wall seconds per model second")
    ap.add_argument("--duration", type=float, default=120.0, help="model seconds of arrivals")
    ap.add_argument("--swap-duration", type=float, default=360.0, help="the same, swap workload")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--max-requests", type=int, default=2000, help="open-loop arrivals per configuration")
    ap.add_argument("--time-cap", type=float, default=120.0, help="wall seconds per configuration at most")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    print(
        f"{_common.machine_note()}; scale {args.scale}, "
        f"{args.duration:.0f} model s of arrivals, seed {args.seed}",
        flush=True,
    )
    rows = asyncio.run(scenarios(args))
    print("times in model seconds (wall / scale); wait = arrival -> work starts on the backend")
    print(report(rows))
    for line in verdicts(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
