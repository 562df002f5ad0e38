"""Per-job gateway benchmark (issue 14): what ``jupyter_llm_af/gateway.py`` adds in front of a backend.

    .venv/bin/python benchmarks/gateway.py [--rounds 5] [--chunks 2000] [--n 60] [--streams 8]

Two streaming backends, each in its own process on loopback, each reached directly and through
its own gateway process (``python gateway.py --listen … --upstream … --secret-file F``, the same
file the batch script feeds to the node's python3):

  fast    benchmarks/proxy_overhead.py's raw asyncio backend: ``--chunks`` NDJSON messages per
          request, at once, one write each (the gateway's worst case: nothing but forwarding)
  paced   tests/resources/ollama_double.py with ``--delay 0.005`` (a token every 5 ms, as a fast GPU model)

One aiohttp client with a pooled keep-alive session (as the service's pass-through uses), sending
the secret header to the gateways. Per round: 1-stream requests taking turns direct/gateway
request by request (they share the machine's noise), then ``--streams`` concurrent streams per
target. Figures per round, as median [min-max] over the rounds: time to first body byte (p50,
p90; and p50 on a new connection per request), the chunk rate (1 stream: messages / time from the
first to the last body byte, summed over the requests), messages / whole time inside the requests
(TTFB included: for short responses this is the TTFB again), messages/s of N concurrent streams
(all messages / wall time), and the gateway's CPU time per message (/proc).

Targets (vs direct, same round): chunk rate >= 0.95x at 1 stream and aggregate rate >= 0.95x at N
streams, on both backends; the added TTFB is reported. Prints PASS/MISS, exits 0 either way.
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
import secrets  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import aiohttp  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PY,
    REPO,
    Child,
    cpu_seconds,
    free_port,
    machine_note,
    median,
    pct,
    rng,
    table,
    verdict,
)
from jupyter_llm_af.gateway import SECRET_HEADER  # noqa: E402

GATEWAY = str(REPO / "jupyter_llm_af" / "gateway.py")


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    body: dict
    process: Child | None = None  # the gateway, for its CPU time


@dataclass
class Figures:
    ttfb: list[float] = field(default_factory=list)
    ttfb_new: list[float] = field(default_factory=list)
    messages: int = 0
    seconds: float = 0.0  # inside the requests
    streaming: float = 0.0  # from first to last body byte
    n_messages: int = 0
    n_seconds: float = 0.0
    cpu: float = 0.0


async def one_request(session: aiohttp.ClientSession, t: Target) -> tuple[float, int, float, float]:
    """(time to first body byte, messages, total time, time from first to last body byte)."""
    started = time.perf_counter()
    first = last = None
    count = 0
    async with session.post(t.url + "/api/generate", json=t.body, headers=t.headers) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            last = time.perf_counter()
            if first is None:
                first = last
            count += chunk.count(b"\n")
    if first is None or last is None:
        return float("nan"), 0, time.perf_counter() - started, float("nan")
    return first - started, count, time.perf_counter() - started, last - first


async def bench_pair(
    args: argparse.Namespace, pair: list[Target], n: int, end: float
) -> dict[str, list[Figures]]:
    rounds: dict[str, list[Figures]] = {t.name: [] for t in pair}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        for t in pair:  # warm up: connections, the backend's caches, the interpreters
            for _ in range(5):
                await one_request(session, t)
        for rnd in range(args.rounds):
            if time.monotonic() > end:
                break
            figs = {t.name: Figures() for t in pair}
            cpu0 = {t.name: cpu_seconds(t.process.pid) if t.process else 0.0 for t in pair}
            order = pair if rnd % 2 == 0 else pair[::-1]
            for _ in range(n):
                for t in order:
                    ttfb, count, took, streaming = await one_request(session, t)
                    figs[t.name].ttfb.append(ttfb)
                    figs[t.name].messages += count
                    figs[t.name].seconds += took
                    figs[t.name].streaming += streaming
            for _ in range(max(3, n // 5)):  # a new connection per request (curl, scripts)
                for t in order:
                    async with aiohttp.ClientSession(auto_decompress=False) as fresh:
                        ttfb, _, _, _ = await one_request(fresh, t)
                    figs[t.name].ttfb_new.append(ttfb)
            for t in order:
                started = time.perf_counter()
                results = await asyncio.gather(*(one_request(session, t) for _ in range(args.streams)))
                figs[t.name].n_seconds = time.perf_counter() - started
                figs[t.name].n_messages = sum(r[1] for r in results)
            for t in pair:
                f = figs[t.name]
                if t.process:
                    f.cpu = cpu_seconds(t.process.pid) - cpu0[t.name]
                rounds[t.name].append(f)
    return rounds


def report(label: str, direct: list[Figures], gated: list[Figures]) -> list[tuple[str, bool]]:
    def per_round(figs: list[Figures], fn: Callable[[Figures], float]) -> list[float]:
        return [fn(f) for f in figs]

    def rate1(f: Figures) -> float:  # the chunk rate: messages while the stream flows
        return f.messages / f.streaming

    def whole(f: Figures) -> float:  # messages / time inside the requests (TTFB included)
        return f.messages / f.seconds

    def rate_n(f: Figures) -> float:
        return f.n_messages / f.n_seconds

    rows = []
    for name, figs in (("direct", direct), ("gateway", gated)):
        rows.append(
            [
                name,
                rng(per_round(figs, lambda f: pct(f.ttfb, 0.5) * 1000), "{:.3f}"),
                rng(per_round(figs, lambda f: pct(f.ttfb, 0.9) * 1000), "{:.3f}"),
                rng(per_round(figs, lambda f: pct(f.ttfb_new, 0.5) * 1000), "{:.3f}"),
                rng(per_round(figs, rate1), "{:.0f}"),
                rng(per_round(figs, whole), "{:.0f}"),
                rng(per_round(figs, rate_n), "{:.0f}"),
                rng(per_round(figs, lambda f: f.cpu / max(1, f.messages + f.n_messages) * 1e6), "{:.1f}")
                if name == "gateway"
                else "",
            ]
        )
    added = [pct(g.ttfb, 0.5) - pct(d.ttfb, 0.5) for d, g in zip(direct, gated, strict=True)]
    added_new = [pct(g.ttfb_new, 0.5) - pct(d.ttfb_new, 0.5) for d, g in zip(direct, gated, strict=True)]
    ratio1 = [rate1(g) / rate1(d) for d, g in zip(direct, gated, strict=True)]
    ratio_whole = [whole(g) / whole(d) for d, g in zip(direct, gated, strict=True)]
    ratio_n = [rate_n(g) / rate_n(d) for d, g in zip(direct, gated, strict=True)]
    print(f"\n{label}")
    header = [
        "target",
        "TTFB p50 ms",
        "TTFB p90 ms",
        "new-conn p50 ms",
        "chunks/s 1 stream",
        "whole resp. msg/s",
        "msg/s N streams",
        "us CPU/msg",
    ]
    print(table(header, rows))
    print(
        f"added TTFB p50: {rng([a * 1000 for a in added], '{:.3f}')} ms pooled, "
        f"{rng([a * 1000 for a in added_new], '{:.3f}')} ms new connection; "
        f"chunk rate vs direct: {rng(ratio1)}x (1 stream), {rng(ratio_n)}x (N streams); "
        f"whole response (TTFB included) {rng(ratio_whole)}x"
    )
    return [
        (f"{label}: chunk rate (1 stream) >= 0.95x direct", median(ratio1) >= 0.95),
        (f"{label}: aggregate rate (N streams) >= 0.95x direct", median(ratio_n) >= 0.95),
    ]


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="llm-af-bench-gateway-")
    secret_file = os.path.join(tmp, "secret")
    secret = secrets.token_urlsafe(32)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    children: list[Child] = []
    try:
        fast_port, paced_port = free_port(), free_port()
        fast = Child(
            "fast-backend",
            [
                PY,
                str(REPO / "benchmarks" / "proxy_overhead.py"),
                "--serve-backend",
                "--port",
                str(fast_port),
                "--chunks",
                str(args.chunks),
            ],
        )
        paced = Child(
            "paced-backend",
            [
                PY,
                "-m",
                "tests.resources.ollama_double",
                "--host",
                "127.0.0.1",
                "--port",
                str(paced_port),
                "--delay",
                "0.005",
            ],
        )
        children += [fast, paced]
        gateways = {}
        for name, port in (("fast", fast_port), ("paced", paced_port)):
            listen = free_port()
            gw = Child(
                f"gateway-{name}",
                [
                    PY,
                    GATEWAY,
                    "--listen",
                    f"127.0.0.1:{listen}",
                    "--upstream",
                    f"127.0.0.1:{port}",
                    "--secret-file",
                    secret_file,
                ],
            )
            children.append(gw)
            gateways[name] = (gw, f"http://127.0.0.1:{listen}")
        fast.wait_ready(f"http://127.0.0.1:{fast_port}/")
        paced.wait_ready(f"http://127.0.0.1:{paced_port}/")
        for gw, url in gateways.values():
            gw.wait_ready(url + "/", headers={SECRET_HEADER: secret})
        auth = {SECRET_HEADER: secret}
        fast_body = {"model": "bench", "prompt": "x", "options": {"num_predict": args.chunks}}
        paced_body = {"model": "tiny:1b", "prompt": "x", "options": {"num_predict": args.paced_tokens}}
        print(
            f"gateway benchmark: {machine_note()}; {args.rounds} rounds, {args.n} (fast) / {args.paced_n} "
            f"(paced) requests per target and round, {args.streams} concurrent streams"
        )
        results = []
        for label, port, body in (("fast", fast_port, fast_body), ("paced", paced_port, paced_body)):
            gw, gw_url = gateways[label]
            pair = [
                Target("direct", f"http://127.0.0.1:{port}", {}, body),
                Target("gateway", gw_url, auth, body, gw),
            ]
            n = args.n if label == "fast" else args.paced_n
            figs = await bench_pair(args, pair, n, time.monotonic() + args.time_cap / 2)
            what = (
                f"fast backend ({args.chunks} messages at once per request)"
                if label == "fast"
                else f"paced backend (Ollama double, {args.paced_tokens} tokens, one per 5 ms)"
            )
            results += report(what, figs["direct"], figs["gateway"])
        print()
        for what, ok in results:
            print(f"{verdict(ok)}  {what}")
        print(json.dumps({"passed": sum(ok for _, ok in results), "targets": len(results)}))
    finally:
        for child in children:
            child.stop()
        os.unlink(secret_file)
        os.rmdir(tmp)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunks", type=int, default=2000, help="messages per response of the fast backend")
    p.add_argument("--paced-tokens", type=int, default=40, help="tokens per response of the paced backend")
    p.add_argument("--n", type=int, default=60, help="1-stream requests per target and round (fast)")
    p.add_argument("--paced-n", type=int, default=15, help="the same for the paced backend")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--time-cap", type=float, default=120.0, help="no new round after this many seconds")
    asyncio.run(run(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
