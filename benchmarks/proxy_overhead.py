"""Proxy overhead benchmark (issue 3): what the service adds on top of a fast streaming backend.

    .venv/bin/python benchmarks/proxy_overhead.py [--rounds 3] [--chunks 200] [--n1 200] [--n32 320]
    .venv/bin/python benchmarks/proxy_overhead.py --profile   # cProfile (CPU time) of the standalone service

One backend, written here (raw asyncio HTTP/1.1, keep-alive, chunked): every request is answered
at once with ``--chunks`` small messages, each in its own write (``/api/chat``: Ollama NDJSON lines;
``/v1/chat/completions``: OpenAI SSE events). The same client (httpx, asyncio) measures

  direct       the backend itself (the baseline)
  service      ``jupyter-llm-af serve --backend upstream --upstream-url <backend>`` (native pass-through)
  jupyter-ext  a Jupyter server with this extension at ``/llm/`` (``--LLMService.backend=upstream``)
  jsp          jupyter-server-proxy 4.x in another Jupyter server (``c.ServerProxy.servers``, at ``/bench/``)

each proxy in its own process, so that its CPU time can be read from /proc. Per round (3 by
default) and route: the 1-stream requests with the four targets taking turns request by request
(they share the machine's noise), then a 32-stream phase per target (order rotated per round).
``--n1``/``--n32`` are totals per target and route over all rounds; ``--time-cap`` bounds the
whole run (every phase is cut short alike when the machine is slow). Figures: time to first body
byte (p50/p99), streamed messages/s (1 stream: messages / time inside requests), the proxy's CPU
time per message, each as median [min-max] over the rounds.

Every request sends ``Accept: text/event-stream``: jupyter-server-proxy streams only for exactly
that header and buffers the whole response otherwise (its "TTFB" is then the full response time).
The service's admission limit is raised to 64 so that 32 streams are not queued (queueing is
benchmarks/queue.py's subject).

Targets (vs direct, same round): TTFB p50 overhead <= 0.5 ms at 1 stream, message rate >= 0.95x at
1 and 32 streams, and less overhead than jupyter-server-proxy (TTFB and both rates). Prints
PASS/MISS, exits 0 either way.
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
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PY,
    Child,
    cpu_seconds,
    free_port,
    jupyter_env,
    machine_note,
    median,
    pct,
    rng,
    table,
    verdict,
)

TOKEN = "bench-" + os.urandom(8).hex()
MODEL = "bench:1b"
TARGET_TTFB_MS = 0.5
TARGET_RATE = 0.95
ROUTES = {"ndjson": "/api/chat", "sse": "/v1/chat/completions"}


# =========================================================================================
# The backend: raw asyncio, HTTP/1.1 keep-alive, chunked transfer, one write per message.
# =========================================================================================
def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _messages(kind: str, n: int) -> list[bytes]:
    out = []
    if kind == "ndjson":
        for i in range(n):
            out.append(
                json.dumps(
                    {
                        "model": MODEL,
                        "created_at": "2025-01-01T00:00:00.000000Z",
                        "message": {"role": "assistant", "content": f"tok{i} "},
                        "done": False,
                    }
                ).encode()
                + b"\n"
            )
        out.append(
            json.dumps(
                {
                    "model": MODEL,
                    "created_at": "2025-01-01T00:00:00.000000Z",
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "total_duration": 1,
                    "load_duration": 0,
                    "prompt_eval_count": 1,
                    "prompt_eval_duration": 1,
                    "eval_count": n,
                    "eval_duration": 1,
                }
            ).encode()
            + b"\n"
        )
    else:
        for i in range(n):
            ev = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1735689600,
                "model": MODEL,
                "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
            }
            out.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
        ev = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1735689600,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        out.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
        out.append(b"data: [DONE]\n\n")
    return [_chunk(m) for m in out]


def serve_backend(port: int, n_chunks: int) -> None:
    """The backend's main: answers at once; a request may ask for another count (``options.num_predict``
    on ``/api/*``, ``max_tokens`` on ``/v1/*``), the default is ``n_chunks``."""
    ctypes = {
        "/api/chat": b"application/x-ndjson",
        "/api/generate": b"application/x-ndjson",
        "/v1/chat/completions": b"text/event-stream",
    }
    cache: dict[tuple[str, int], list[bytes]] = {}

    def chunks_for(path: str, body: bytes) -> list[bytes]:
        n = n_chunks
        if body:
            try:
                doc = json.loads(body)
                n = int((doc.get("options") or {}).get("num_predict") or doc.get("max_tokens") or n_chunks)
            except (ValueError, TypeError, AttributeError):
                pass
        key = (path, max(1, min(n, 100_000)))
        if key not in cache:
            cache[key] = _messages("sse" if path.startswith("/v1/") else "ndjson", key[1])
        return cache[key]

    fixed = {
        "/": (b"text/plain; charset=utf-8", b"Ollama is running"),
        "/api/version": (b"application/json", b'{"version": "0.12.6"}'),
        "/api/tags": (
            b"application/json",
            json.dumps({"models": [{"name": MODEL, "model": MODEL, "size": 1}]}).encode(),
        ),
        "/v1/models": (
            b"application/json",
            json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode(),
        ),
    }

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _ = lines[0].split(b" ", 2)
                length = 0
                close = False
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        length = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
                path = target.split(b"?", 1)[0].decode()
                if method == b"POST" and path in ctypes:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: "
                        + ctypes[path]
                        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                    )
                    for c in chunks_for(path, body):  # one write (one send) per message
                        writer.write(c)
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    ctype, payload = fixed.get(path, (b"application/json", b'{"error": "not found"}'))
                    status = b"200 OK" if path in fixed else b"404 Not Found"
                    writer.write(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\nContent-Type: "
                        + ctype
                        + b"\r\nContent-Length: %d\r\n\r\n" % len(payload)
                        + payload
                    )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


def serve_profiled(out: str, argv: list[str]) -> None:
    """The standalone service under cProfile; the stats are written when it stops (SIGTERM)."""
    import cProfile

    from jupyter_llm_af.standalone import ServeApp

    # CPU time, not wall time: on a shared machine wall time charges preemption to whatever
    # syscall was running (mostly socket.send)
    prof = cProfile.Profile(time.process_time)
    app = ServeApp()
    app.initialize(argv)
    prof.enable()
    try:
        app.start()
    finally:
        prof.disable()
        prof.dump_stats(out)


# =========================================================================================
# The client side.
# =========================================================================================
@dataclass
class Target:
    name: str
    base: str
    headers: dict[str, str]
    pid: int | None = None  # the proxy process, for its CPU time
    client: httpx.AsyncClient | None = None

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid) if self.pid else float("nan")


@dataclass
class Phase:
    ttfb_ms: list[float] = field(default_factory=list)
    messages: int = 0
    requests: int = 0
    short: int = 0  # responses with fewer messages than sent (must stay 0)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    busy_s: float = 0.0  # time spent inside requests
    cpu_s: float = float("nan")  # CPU time of the proxy process during the phase

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.requests if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.messages / self.wall_s if self.wall_s else float("nan")


async def one_request(t: Target, path: str, body: bytes, sse: bool, expected: int, ph: Phase) -> None:
    assert t.client is not None
    t0 = time.perf_counter()
    first = None
    newlines = 0
    async with t.client.stream("POST", t.base + path, content=body, headers=t.headers) as r:
        if r.status_code != 200:
            await r.aread()
            ph.errors.append(f"{r.status_code} {r.text[:120]}")
            return
        async for data in r.aiter_raw():
            if first is None:
                first = time.perf_counter()
            newlines += data.count(b"\n")
    end = time.perf_counter()
    n = newlines // 2 if sse else newlines
    ph.ttfb_ms.append(((first or end) - t0) * 1000)
    ph.messages += n
    ph.requests += 1
    ph.busy_s += end - t0
    if n < expected:
        ph.short += 1


def _request_args(kind: str, chunks: int) -> tuple[str, bytes, bool, int]:
    sse = kind == "sse"
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    return ROUTES[kind], body, sse, chunks + (2 if sse else 1)


async def run_phase(t: Target, kind: str, n_requests: int, conc: int, chunks: int, cap_s: float) -> Phase:
    """``n_requests`` on ``conc`` connections at once (stops starting new ones after ``cap_s``)."""
    path, body, sse, expected = _request_args(kind, chunks)
    ph = Phase()
    todo = iter(range(n_requests))
    stop_at = time.monotonic() + cap_s

    async def worker() -> None:
        for _ in todo:
            if time.monotonic() > stop_at:
                return
            try:
                await one_request(t, path, body, sse, expected, ph)
            except httpx.HTTPError as e:
                ph.errors.append(f"{type(e).__name__}: {e}")

    cpu0 = t.cpu_s()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    ph.wall_s = time.perf_counter() - start
    ph.cpu_s = t.cpu_s() - cpu0
    return ph


async def run_interleaved(
    targets: list[Target], kind: str, n_requests: int, chunks: int, cap_s: float
) -> dict[str, Phase]:
    """One stream at a time, the targets taking turns request by request: they share the machine's noise.

    The message rate of a sequential stream is messages / time inside requests.
    """
    path, body, sse, expected = _request_args(kind, chunks)
    phases = {t.name: Phase() for t in targets}
    stop_at = time.monotonic() + cap_s
    cpu0 = {t.name: t.cpu_s() for t in targets}
    for i in range(n_requests):
        if time.monotonic() > stop_at:
            break
        for t in targets[i % len(targets) :] + targets[: i % len(targets)]:
            try:
                await one_request(t, path, body, sse, expected, phases[t.name])
            except httpx.HTTPError as e:
                phases[t.name].errors.append(f"{type(e).__name__}: {e}")
    for t in targets:
        phases[t.name].wall_s = phases[t.name].busy_s
        phases[t.name].cpu_s = t.cpu_s() - cpu0[t.name]
    return phases


def _jupyter(name: str, port: int, config: str, extra: list[str]) -> Child:
    tmp, env = jupyter_env()
    os.makedirs(env["JUPYTER_CONFIG_DIR"], exist_ok=True)
    with open(os.path.join(env["JUPYTER_CONFIG_DIR"], "jupyter_server_config.py"), "w") as f:
        f.write(config)
    child = Child(
        name,
        [
            PY,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--allow-root",
            f"--port={port}",
            "--ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={tmp}",
            *extra,
        ],
        env=env,
    )
    child.cleanup_dirs.append(tmp)
    return child


def start_stack(children: list[Child], chunks: int, need: set[str]) -> dict[str, Target]:
    """Start the backend and one process per proxy (appended to ``children`` as they start, for the
    caller to stop); each proxy in its own process so that its CPU time can be read from /proc."""
    bport = free_port()
    backend = Child(
        "backend",
        [PY, os.path.abspath(__file__), "--serve-backend", "--port", str(bport), "--chunks", str(chunks)],
    )
    children.append(backend)
    backend.wait_ready(f"http://127.0.0.1:{bport}/", timeout=30)
    burl = f"http://127.0.0.1:{bport}"
    hdrs = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    jauth = {"Authorization": f"token {TOKEN}"}
    llm_settings = ["--LLMService.max_concurrent=64", "--LLMService.max_queue_per_user=64"]
    targets = {"direct": Target("direct", burl, dict(hdrs))}
    waits: list[tuple[Child, str, dict[str, str]]] = []
    if "service" in need:  # all started at once, then waited for
        port = free_port()
        c = Child(
            "service",
            [
                PY,
                "-m",
                "jupyter_llm_af",
                "serve",
                "--port",
                str(port),
                "--token",
                TOKEN,
                "--backend",
                "upstream",
                "--upstream-url",
                burl,
                *llm_settings,
            ],
        )
        children.append(c)
        waits.append((c, f"http://127.0.0.1:{port}/", auth))
        targets["service"] = Target("service", f"http://127.0.0.1:{port}", {**hdrs, **auth}, pid=c.pid)
    if "jupyter-ext" in need:
        port = free_port()
        c = _jupyter(
            "jupyter-ext",
            port,
            "",
            ["--LLMService.backend=upstream", f"--LLMService.upstream_url={burl}", *llm_settings],
        )
        children.append(c)
        waits.append((c, f"http://127.0.0.1:{port}/llm/", jauth))
        targets["jupyter-ext"] = Target(
            "jupyter-ext", f"http://127.0.0.1:{port}/llm", {**hdrs, **jauth}, pid=c.pid
        )
    if "jsp" in need:  # jupyter-server-proxy alone: this extension switched off in that server
        port = free_port()
        c = _jupyter(
            "jsp",
            port,
            'c.ServerApp.jpserver_extensions = {"jupyter_llm_af": False}\n'
            f'c.ServerProxy.servers = {{"bench": {{"command": [], "port": {bport}, '
            '"absolute_url": False}}\n',
            [],
        )
        children.append(c)
        waits.append((c, f"http://127.0.0.1:{port}/bench/", jauth))
        targets["jsp"] = Target("jsp", f"http://127.0.0.1:{port}/bench", {**hdrs, **jauth}, pid=c.pid)
    for c, url, h in waits:
        c.wait_ready(url, headers=h, timeout=90)
    return targets


async def bench(args: argparse.Namespace, targets: dict[str, Target], budget_s: float) -> dict:
    """results[(kind, conc, target)] = one Phase per round.

    Per round and route: the 1-stream requests interleaved across targets, then one 32-stream phase
    per target (order rotated per round). Requests are split evenly over the rounds; the time
    budget is split over the phases up front, so a slow machine cuts every phase short alike.
    """
    results: dict[tuple[str, int, str], list[Phase]] = {}
    names = list(targets)
    n1 = max(1, args.n1 // args.rounds)
    n32 = max(32, args.n32 // args.rounds)
    for t in targets.values():
        t.client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0),
            trust_env=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
    try:
        # warm-up: open the pooled connections, import lazily-loaded code, fill caches
        t_warm = time.monotonic()
        for t in targets.values():
            for kind in ROUTES:
                await run_phase(t, kind, 32, 32, args.chunks, 5)
                await run_phase(t, kind, 5, 1, args.chunks, 5)
        budget_s -= time.monotonic() - t_warm
        unit = max(0.5, budget_s / (args.rounds * len(ROUTES) * 2 * len(names)))
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for kind in ROUTES:
                got = await run_interleaved(
                    [targets[n] for n in order], kind, n1, args.chunks, unit * len(names)
                )
                for name, ph in got.items():
                    results.setdefault((kind, 1, name), []).append(ph)
                for name in order:
                    ph = await run_phase(targets[name], kind, n32, 32, args.chunks, unit)
                    results.setdefault((kind, 32, name), []).append(ph)
            print(f"  round {rnd + 1}/{args.rounds} done", flush=True)
    finally:
        for t in targets.values():
            if t.client is not None:
                await t.client.aclose()
    return results


def report(results: dict, names: list[str], rounds: int) -> list[tuple[str, bool]]:
    rows = []
    checks: list[tuple[str, bool]] = []
    for kind in ROUTES:
        for conc in (1, 32):
            base = results.get((kind, conc, "direct"), [])
            for name in names:
                phs = results.get((kind, conc, name), [])
                if not phs:
                    continue
                p50 = [pct(p.ttfb_ms, 0.5) for p in phs]
                p99 = [pct(p.ttfb_ms, 0.99) for p in phs]
                rate = [p.rate for p in phs]
                if name == "direct":
                    d50 = ratio = "-"
                else:
                    d50s = [
                        pct(p.ttfb_ms, 0.5) - pct(b.ttfb_ms, 0.5) for p, b in zip(phs, base, strict=False)
                    ]
                    ratios = [p.rate / b.rate for p, b in zip(phs, base, strict=False)]
                    d50, ratio = rng(d50s, "{:+.2f}"), rng(ratios, "{:.2f}x")
                errs = sum(len(p.errors) for p in phs)
                short = sum(p.short for p in phs)
                reqs = sum(p.requests for p in phs)
                cpu = (
                    "-"
                    if name == "direct"
                    else rng(
                        [p.cpu_s * 1e6 / p.messages if p.messages else float("nan") for p in phs], "{:.0f}"
                    )
                )
                rows.append(
                    [
                        f"{ROUTES[kind]} ({kind})" if name == names[0] else "",
                        str(conc) if name == names[0] else "",
                        name,
                        str(reqs),
                        rng(p50),
                        d50,
                        rng(p99),
                        rng(rate, "{:.0f}"),
                        ratio,
                        cpu,
                        f"{errs}/{short}",
                    ]
                )
    print()
    print(
        table(
            [
                "route",
                "conc",
                "target",
                "reqs",
                "TTFB p50 ms",
                "d p50 ms",
                "TTFB p99 ms",
                "msgs/s",
                "rate vs direct",
                "proxy CPU us/msg",
                "err/short",
            ],
            rows,
        )
    )
    print(
        f"\nmedian [min-max] over {rounds} rounds; d p50 = TTFB p50 minus direct's in the same round; "
        "proxy CPU =\n"
        "the proxy process's CPU time (/proc, 10 ms ticks) per streamed message, request costs included."
    )
    for name, phs in results.items():
        for p in phs:
            if p.errors:
                print(f"  errors {name}: {p.errors[:3]}")
                break

    def agg(kind: str, conc: int, name: str, what: str) -> float:
        base = results.get((kind, conc, "direct"), [])
        phs = results.get((kind, conc, name), [])
        if not phs or not base:
            return float("nan")
        if what == "d50":
            return median(pct(p.ttfb_ms, 0.5) - pct(b.ttfb_ms, 0.5) for p, b in zip(phs, base, strict=False))
        return median(p.rate / b.rate for p, b in zip(phs, base, strict=False))

    print("\nTargets (medians over rounds):")
    for name in ("service", "jupyter-ext"):
        if name not in names:
            continue
        for kind in ROUTES:
            d = agg(kind, 1, name, "d50")
            ok = d <= TARGET_TTFB_MS
            checks.append((f"{name} {kind} TTFB p50 overhead {d:+.2f} ms <= {TARGET_TTFB_MS} ms", ok))
            for conc in (1, 32):
                r = agg(kind, conc, name, "rate")
                checks.append(
                    (
                        f"{name} {kind} rate at {conc:>2} streams {r:.2f}x >= {TARGET_RATE}x direct",
                        r >= TARGET_RATE,
                    )
                )
            if "jsp" in names:
                dj = agg(kind, 1, "jsp", "d50")
                rj = [agg(kind, c, "jsp", "rate") for c in (1, 32)]
                rs = [agg(kind, c, name, "rate") for c in (1, 32)]
                better = d < dj and all(a > b for a, b in zip(rs, rj, strict=True))
                checks.append(
                    (
                        f"{name} {kind} less overhead than jupyter-server-proxy "
                        f"(TTFB {d:+.2f} vs {dj:+.2f} ms, "
                        f"rate {rs[0]:.2f}/{rs[1]:.2f}x vs {rj[0]:.2f}/{rj[1]:.2f}x at 1/32)",
                        better,
                    )
                )
    for text, ok in checks:
        print(f"  {verdict(ok)}  {text}")
    return checks


def profile(args: argparse.Namespace) -> None:
    """Run the service under cProfile through a streaming load, print its hot spots."""
    import pstats
    import tempfile

    children: list[Child] = []
    out = tempfile.mktemp(prefix="llm-af-bench-", suffix=".prof")
    try:
        bport = free_port()
        backend = Child(
            "backend",
            [
                PY,
                os.path.abspath(__file__),
                "--serve-backend",
                "--port",
                str(bport),
                "--chunks",
                str(args.chunks),
            ],
        )
        children.append(backend)
        backend.wait_ready(f"http://127.0.0.1:{bport}/", timeout=30)
        sport = free_port()
        svc = Child(
            "service",
            [
                PY,
                os.path.abspath(__file__),
                "--serve-profiled",
                out,
                "--",
                "--port",
                str(sport),
                "--token",
                TOKEN,
                "--backend",
                "upstream",
                "--upstream-url",
                f"http://127.0.0.1:{bport}",
                "--LLMService.max_concurrent=64",
                "--LLMService.max_queue_per_user=64",
            ],
        )
        children.append(svc)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        svc.wait_ready(f"http://127.0.0.1:{sport}/", headers=auth, timeout=60)
        t = Target(
            "service",
            f"http://127.0.0.1:{sport}",
            {"Accept": "text/event-stream", "Content-Type": "application/json", **auth},
        )

        async def load() -> None:
            t.client = httpx.AsyncClient(timeout=30, trust_env=False, limits=httpx.Limits(max_connections=64))
            try:
                for kind in ROUTES:
                    ph = await run_phase(t, kind, args.n1, 1, args.chunks, 30)
                    ph32 = await run_phase(t, kind, args.n32, 32, args.chunks, 30)
                    print(
                        f"  {kind}: 1 stream p50 TTFB {pct(ph.ttfb_ms, 0.5):.2f} ms, {ph.rate:.0f} msgs/s; "
                        f"32 streams {ph32.rate:.0f} msgs/s (under cProfile)"
                    )
            finally:
                await t.client.aclose()

        asyncio.run(load())
        svc.stop()
        children.remove(svc)
        st = pstats.Stats(out)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(35)
    finally:
        for c in reversed(children):
            c.stop()
        if os.path.exists(out):
            os.unlink(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-profiled"]:
        rest = argv[2:]
        serve_profiled(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunks", type=int, default=200, help="messages per streamed response")
    p.add_argument(
        "--n1", type=int, default=200, help="requests per target and route at 1 stream (all rounds)"
    )
    p.add_argument(
        "--n32", type=int, default=320, help="requests per target and route at 32 streams (all rounds)"
    )
    p.add_argument(
        "--time-cap",
        type=float,
        default=140.0,
        help="seconds for the whole run (start-up included); phases are cut short to fit",
    )
    p.add_argument("--targets", default="service,jupyter-ext,jsp")
    p.add_argument("--profile", action="store_true", help="profile the standalone service instead")
    p.add_argument("--serve-backend", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_backend:
        serve_backend(args.port, args.chunks)
        return 0
    if args.profile:
        profile(args)
        return 0
    need = {s.strip() for s in args.targets.split(",") if s.strip()}
    t0 = time.monotonic()
    print(
        f"proxy overhead: {args.chunks} messages per stream, {args.n1} requests at 1 stream, "
        f"{args.n32} at 32, "
        f"{args.rounds} rounds; {machine_note()}",
        flush=True,
    )
    children: list[Child] = []
    try:
        targets = start_stack(children, args.chunks, need)
        print(f"  started {', '.join(c.name for c in children)} in {time.monotonic() - t0:.1f} s", flush=True)
        results = asyncio.run(bench(args, targets, args.time_cap - (time.monotonic() - t0)))
    finally:
        for c in reversed(children):
            c.stop()
    report(results, list(targets), args.rounds)
    print(f"\ntotal {time.monotonic() - t0:.0f} s; {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
