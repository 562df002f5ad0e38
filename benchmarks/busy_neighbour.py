"""The embedded default on a busy machine (issue 11): a 24-token answer, idle and beside busy processes.

    .venv/bin/python benchmarks/busy_neighbour.py [--reps 6] [--busy 0,1,2] [--variants old,new]
                                                  [--cell-cap 25] [--request-timeout 30] [--time-cap 170]

The embedded backend is llama.cpp's router (``embedded.router_command``) with SmolLM2-135M. Each
variant starts its own router, warms the model up, then for each load level starts that many busy
processes (``python -c "while True: pass"``), **each in its own session**, as Jupyter starts
kernels, so that under Linux autogroup scheduling each is a scheduling group of its own, and sends
one non-streamed ``/v1/chat/completions`` at a time (``max_tokens`` 24, ``ignore_eos``,
temperature 0) until ``--reps`` answers or ``--cell-cap`` seconds. A request that takes longer than
``--request-timeout`` counts as that long. Figures: p50 and max latency (client wall time) and
llama.cpp's own decode rate.

Variants (``--variants``, comma-separated):

  old         llama.cpp's default threads (= cores), router in its own session (before issue 11)
  new         what the launcher does now: ``LocalProcessBackend`` (own process group in the
              service's session) with the presets of ``embedded.write_presets`` (default threads)
  t1-session  threads 1, own session: the thread count alone
  old-group   default threads, own process group in the service's session: the grouping alone
  t2-poll0    2 threads that sleep instead of spinning at their barriers (llama.cpp ``poll = 0``),
              own process group in the service's session

Everything is started here on loopback and stopped by PID; busy processes are stopped after each
cell. Target: with 1 busy neighbour, ``new`` p50 <= 3x its idle p50. Prints PASS/MISS, exits 0.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)  # benchmarks/queue.py would shadow the stdlib queue

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

from benchmarks._common import PY, free_port, machine_note, pct, table, verdict  # noqa: E402
from jupyter_llm_af import embedded  # noqa: E402
from jupyter_llm_af.backends.local import LocalProcessBackend  # noqa: E402

PROMPT = [{"role": "user", "content": "Count from one to fifty in words, separated by commas."}]


@dataclass
class Cell:
    variant: str
    busy: int
    latencies: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    timeouts: int = 0


class Router:
    """One llama.cpp router, started the old way (own session) or by the real launcher."""

    def __init__(self, variant: str, tmp: Path):
        self.variant = variant
        models = [m for m in embedded.load_manifest() if m.name == "smollm2:135m"]
        binary = embedded.find_llama_server()
        if not models or not binary:
            raise SystemExit("embedded backend not set up: run `jupyter-llm-af setup-local`")
        presets = tmp / f"presets-{variant}.ini"
        threads = {"t1-session": 1, "t2-poll0": 2}.get(variant, 0)
        embedded.write_presets(models, presets, ["smollm2:135m"], 8192, 4, threads=threads)
        if variant in ("old", "old-group"):  # llama.cpp's own default: as many threads as cores
            text = presets.read_text().splitlines()
            presets.write_text("\n".join(x for x in text if not x.startswith("threads")) + "\n")
        if variant == "t2-poll0":
            presets.write_text(presets.read_text().replace("threads = 2\n", "threads = 2\npoll = 0\n"))
        self.command = embedded.router_command(binary, presets, 1)
        self.own_session = variant in ("old", "t1-session")
        self.tmp = tmp
        self.proc: asyncio.subprocess.Process | None = None
        self.backend: LocalProcessBackend | None = None
        self.url = ""
        self.threads = (
            "default" if variant in ("old", "old-group") else str(threads or embedded.default_threads())
        )

    async def start(self) -> None:
        if self.own_session:
            port = free_port()
            argv = [a.replace("{port}", str(port)).replace("{host}", "127.0.0.1") for a in self.command]
            self.log = open(self.tmp / f"{self.variant}.log", "wb")  # noqa: ASYNC230 - once per variant
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True
            )
            self.url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(trust_env=False) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(self.url + "/health", timeout=2)).status_code == 200:
                            return
                    await asyncio.sleep(0.1)
            raise RuntimeError(f"router ({self.variant}) not ready")
        self.backend = LocalProcessBackend(self.command, {}, 60, "/health", "bench", log_dir=str(self.tmp))
        endpoint = await self.backend.ready_endpoint(time.monotonic() + 60)
        self.url = endpoint.url

    def log_tail(self) -> str:
        logs = sorted(self.tmp.glob("*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-1500:] if logs else ""

    async def stop(self) -> None:
        if self.backend is not None:
            await self.backend.shutdown()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
            self.log.close()


def start_busy(n: int) -> list[subprocess.Popen]:
    # each in its own session = its own autogroup, as Jupyter starts kernels
    return [
        subprocess.Popen([PY, "-c", "while True: pass"], start_new_session=True, stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(10)


async def one_answer(client: httpx.AsyncClient, url: str, timeout: float) -> tuple[float, float | None]:
    body = {
        "model": "smollm2",
        "messages": PROMPT,
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,
        "stream": False,
    }
    t0 = time.monotonic()
    resp = await client.post(url + "/v1/chat/completions", json=body, timeout=timeout)
    resp.raise_for_status()
    doc = resp.json()
    assert doc["usage"]["completion_tokens"] == 24, doc
    return time.monotonic() - t0, doc.get("timings", {}).get("predicted_per_second")


async def warm_up(router: Router) -> None:
    """Load the model and warm the caches (the router may drop the first request while its
    model child starts)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        for attempt in range(4):
            try:
                await one_answer(client, router.url, 120)
                await one_answer(client, router.url, 120)
                return
            except httpx.TransportError as e:
                print(f"  {router.variant}: warm-up attempt {attempt + 1}: {e!r}", flush=True)
                await asyncio.sleep(1)
    raise RuntimeError(f"router ({router.variant}) does not answer: {router.log_tail()}")


async def run_cell(router: Router, busy: int, args: argparse.Namespace, stop_at: float) -> Cell:
    cell = Cell(router.variant, busy)
    procs = start_busy(busy)
    try:
        await asyncio.sleep(1.0)  # let the scheduler see the neighbours
        cap = min(time.monotonic() + args.cell_cap, stop_at)
        async with httpx.AsyncClient(trust_env=False) as client:
            while len(cell.latencies) < args.reps and (not cell.latencies or time.monotonic() < cap):
                try:
                    latency, tps = await one_answer(client, router.url, args.request_timeout)
                    cell.latencies.append(latency)
                    if tps:
                        cell.decode_tps.append(tps)
                except httpx.TimeoutException:
                    cell.latencies.append(args.request_timeout)
                    cell.timeouts += 1
                    break  # the router is still busy with it: later figures would mean nothing
    finally:
        stop_busy(procs)
    return cell


async def main_async(args: argparse.Namespace) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    loads = [int(x) for x in args.busy.split(",")]
    print(
        f"busy_neighbour: {machine_note()}; autogroup {args.autogroup}; usable cores "
        f"{embedded.usable_cores()}, default threads {embedded.default_threads()}",
        flush=True,
    )
    stop_at = time.monotonic() + args.time_cap
    cells: list[Cell] = []
    threads_of: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="llm-af-bench-busy-") as tmp:
        for variant in variants:
            if time.monotonic() > stop_at:
                print(f"time cap reached: {variant} not run", flush=True)
                break
            router = Router(variant, Path(tmp))
            threads_of[variant] = router.threads
            await router.start()
            try:
                await warm_up(router)
                for busy in loads:
                    cell = await run_cell(router, busy, args, stop_at)
                    cells.append(cell)
                    print(
                        f"  {variant:<10} busy={busy}: "
                        + ", ".join(f"{x:.2f}" for x in cell.latencies)
                        + (f" ({cell.timeouts} timed out)" if cell.timeouts else ""),
                        flush=True,
                    )
            finally:
                await router.stop()
    rows = []
    for c in cells:
        rows.append(
            [
                c.variant,
                threads_of[c.variant],
                "own session" if c.variant in ("old", "t1-session") else "service's session",
                str(c.busy),
                str(len(c.latencies)),
                f"{pct(c.latencies, 0.5):.2f}",
                f"{max(c.latencies):.2f}" + ("+" if c.timeouts else ""),
                f"{pct(c.decode_tps, 0.5):.0f}" if c.decode_tps else "n/a",
            ]
        )
    print()
    print(table(["variant", "threads", "group", "busy", "n", "p50 s", "max s", "decode tok/s p50"], rows))
    new = {c.busy: c for c in cells if c.variant == "new"}
    if 0 in new and 1 in new:
        ok = pct(new[1].latencies, 0.5) <= 3 * pct(new[0].latencies, 0.5)
        print(
            f"\n{verdict(ok)}: new, 1 busy neighbour p50 {pct(new[1].latencies, 0.5):.2f} s "
            f"<= 3x idle p50 {pct(new[0].latencies, 0.5):.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=6, help="answers per cell (default 6)")
    parser.add_argument("--busy", default="0,1,2", help="numbers of busy processes (default 0,1,2)")
    parser.add_argument("--variants", default="old,new", help="old,new,t1-session,old-group,t2-poll0")
    parser.add_argument("--cell-cap", type=float, default=25.0, help="seconds per cell (default 25)")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--time-cap", type=float, default=170.0, help="stop starting cells after this")
    args = parser.parse_args()
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    args.autogroup = autogroup.read_text().strip() if autogroup.exists() else "n/a"
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
