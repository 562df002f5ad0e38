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
  prev, prev-jupyter-ext   the service / extension as of ``--prev-commit`` (801755e: before the route
               table / pipeline redesign of issue 12), from a git worktree in /tmp/llm-af-prev (removed at
               the end; the child runs there with ``PYTHONPATH`` on it, checked before it starts)

in two client modes (``--modes``): ``new``, a new TCP connection per request (as curl and many scripts
do: httpx with no keep-alive), and ``pooled``, keep-alive connections (as SDKs do). Besides TTFB,
"whole vs direct" is direct's whole-response p50 divided by the target's (issue 12: >= 0.9x).

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

Targets (vs direct, same round): TTFB p50 overhead <= 0.5 ms and whole response >= 0.9x at 1 stream
(both modes), not slower than prev; pooled: message rate >= 0.95x at
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
import socket  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PY,
    REPO,
    Child,
    Worktree,
    cpu_seconds,
    free_port,
    jupyter_env,
    machine_note,
    median,
    pct,
    rng,
    table,
    upstream_service_args,
    verdict,
)

TOKEN = "bench-" + os.urandom(8).hex()
MODEL = "bench:1b"
TARGET_TTFB_MS = 0.5
TARGET_RATE = 0.95
TARGET_WHOLE = 0.9  # whole-response time ratio, direct / target (issue 12)
ROUTES = {"ndjson": "/api/chat", "sse": "/v1/chat/completions"}
# "pooled": keep-alive clients (SDKs); "new": a new TCP connection per request (curl, many scripts)
MODES = ("new", "pooled")
PREV_COMMIT = "801755e"  # the request path before the route table / pipeline redesign (issue 12)
PREV_DIR = "/tmp/llm-af-prev"


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


async def serve_until_signalled(handle: Any, port: int) -> None:
    """An asyncio server for ``handle`` on loopback ``port`` until SIGINT or SIGTERM."""
    import signal

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def serve_backend(port: int, n_chunks: int, pace_s: float = 0.0) -> None:
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
                    for i, c in enumerate(chunks_for(path, body)):  # one write (one send) per message
                        if pace_s and i:
                            await asyncio.sleep(pace_s)  # a model's pace: the next token comes later
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

    asyncio.run(serve_until_signalled(handle, port))


def serve_relay(port: int, upstream_port: int) -> None:
    """The floor of any process hop: a byte relay with no HTTP at all. Each client connection gets
    its own backend connection (kept as long as the client keeps its own), and every read is
    written on at once. What the service adds beyond this is what its HTTP, auth, queue and
    telemetry cost; what this adds over direct is the hop itself on this machine (its wake-ups,
    and the third process that the client's first byte waits behind on a machine with 2 cores)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        for w in (writer, b_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(reader, b_writer), pipe(b_reader, writer))

    asyncio.run(serve_until_signalled(handle, port))


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
    client: httpx.AsyncClient | None = None  # the client of the mode being measured
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)  # per mode

    def open_clients(self) -> None:
        self.clients = {
            "pooled": httpx.AsyncClient(
                timeout=httpx.Timeout(30.0),
                trust_env=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            ),
            # no connection kept: every request connects anew (and the connection closes after it)
            "new": httpx.AsyncClient(
                timeout=httpx.Timeout(30.0),
                trust_env=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
            ),
        }

    def use(self, mode: str) -> None:
        self.client = self.clients[mode]

    async def close_clients(self) -> None:
        for c in self.clients.values():
            await c.aclose()
        self.clients = {}
        self.client = None

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid) if self.pid else float("nan")


@dataclass
class Phase:
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)  # whole response, request sent to last byte
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
    ph.total_ms.append((end - t0) * 1000)
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


def _jupyter(name: str, port: int, config: str, extra: list[str], prev: Worktree | None = None) -> Child:
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
        env={**env, **(prev.env if prev else {})},
        cwd=prev.path if prev else REPO,
    )
    child.cleanup_dirs.append(tmp)
    return child


def in_script(name: str, *args: str) -> Child:
    """A server of this script (``--serve-backend``, ``--serve-relay``) as a child process."""
    return Child(name, [PY, os.path.abspath(__file__), *args])


def start_backend(children: list[Child], chunks: int, pace_ms: float = 0.0) -> int:
    """The streaming backend (appended to ``children``), ready; returns its port."""
    port = free_port()
    backend = in_script(
        "backend", "--serve-backend", "--port", str(port), "--chunks", str(chunks), "--pace-ms", str(pace_ms)
    )
    children.append(backend)
    backend.wait_ready(f"http://127.0.0.1:{port}/", timeout=30)
    return port


def start_stack(
    children: list[Child], chunks: int, need: set[str], prev: Worktree | None = None, pace_ms: float = 0.0
) -> dict[str, Target]:
    """Start the backend and one process per proxy (appended to ``children`` as they start, for the
    caller to stop); each proxy in its own process so that its CPU time can be read from /proc."""
    bport = start_backend(children, chunks, pace_ms)
    burl = f"http://127.0.0.1:{bport}"
    hdrs = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    jauth = {"Authorization": f"token {TOKEN}"}
    llm_settings = ["--LLMService.max_concurrent=64", "--LLMService.max_queue_per_user=64"]
    targets = {"direct": Target("direct", burl, dict(hdrs))}
    if "relay" in need:
        port = free_port()
        c = in_script("relay", "--serve-relay", "--port", str(port), "--upstream-port", str(bport))
        children.append(c)
        c.wait_ready(f"http://127.0.0.1:{port}/", timeout=30)
        targets["relay"] = Target("relay", f"http://127.0.0.1:{port}", dict(hdrs), pid=c.pid)
    waits: list[tuple[Child, str, dict[str, str]]] = []
    for name in ("prev", "service"):  # all started at once, then waited for
        if name not in need or (name == "prev" and prev is None):
            continue
        port = free_port()
        c = Child(
            name,
            [
                PY,
                "-m",
                "jupyter_llm_af",
                "serve",
                *upstream_service_args(port, TOKEN, burl),
                *llm_settings,
            ],
            env=prev.env if name == "prev" and prev else None,
            cwd=prev.path if name == "prev" and prev else REPO,
        )
        children.append(c)
        waits.append((c, f"http://127.0.0.1:{port}/", auth))
        targets[name] = Target(name, f"http://127.0.0.1:{port}", {**hdrs, **auth}, pid=c.pid)
    for name in ("prev-jupyter-ext", "jupyter-ext"):
        if name not in need or (name == "prev-jupyter-ext" and prev is None):
            continue
        port = free_port()
        c = _jupyter(
            name,
            port,
            "",
            ["--LLMService.backend=upstream", f"--LLMService.upstream_url={burl}", *llm_settings],
            prev=prev if name.startswith("prev") else None,
        )
        children.append(c)
        waits.append((c, f"http://127.0.0.1:{port}/llm/", jauth))
        targets[name] = Target(name, f"http://127.0.0.1:{port}/llm", {**hdrs, **jauth}, pid=c.pid)
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
    """results[(mode, kind, conc, target)] = one Phase per round.

    Per round, mode (new connection / pooled) and route: the 1-stream requests interleaved across
    targets, then one 32-stream phase per target (order rotated per round). Requests are split
    evenly over the rounds; the time budget is split over the phases up front, so a slow machine
    cuts every phase short alike.
    """
    results: dict[tuple[str, str, int, str], list[Phase]] = {}
    names = list(targets)
    modes = args.modes
    n1 = max(1, args.n1 // args.rounds)
    n32 = max(32, args.n32 // args.rounds)
    for t in targets.values():
        t.open_clients()
    try:
        # warm-up: open the pooled connections, import lazily-loaded code, fill caches
        t_warm = time.monotonic()
        for mode in modes:
            for t in targets.values():
                t.use(mode)
                for kind in ROUTES:
                    await run_phase(t, kind, 32, 32, args.chunks, 5)
                    await run_phase(t, kind, 5, 1, args.chunks, 5)
        budget_s -= time.monotonic() - t_warm
        # the 1-stream phases get 2/3 of the time: they carry the targets
        unit = max(0.5, budget_s / (args.rounds * len(modes) * len(ROUTES) * 1.5 * len(names)))
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for mode in modes:
                for t in targets.values():
                    t.use(mode)
                for kind in ROUTES:
                    got = await run_interleaved(
                        [targets[n] for n in order], kind, n1, args.chunks, unit * len(names)
                    )
                    for name, ph in got.items():
                        results.setdefault((mode, kind, 1, name), []).append(ph)
                    for name in order:
                        ph = await run_phase(targets[name], kind, n32, 32, args.chunks, unit / 2)
                        results.setdefault((mode, kind, 32, name), []).append(ph)
            print(f"  round {rnd + 1}/{args.rounds} done", flush=True)
    finally:
        for t in targets.values():
            await t.close_clients()
    return results


def _paired(phs: list[Phase], base: list[Phase], fn: Any) -> list[float]:
    return [fn(p, b) for p, b in zip(phs, base, strict=False)]


def _d50(p: Phase, b: Phase) -> float:
    return pct(p.ttfb_ms, 0.5) - pct(b.ttfb_ms, 0.5)


def _whole(p: Phase, b: Phase) -> float:
    """Whole-response time ratio, direct / target (p50 of each, same round): 1.0 = as fast as direct."""
    return pct(b.total_ms, 0.5) / pct(p.total_ms, 0.5)


def report(
    results: dict, names: list[str], rounds: int, modes: list[str], prev_commit: str = PREV_COMMIT
) -> list[tuple[str, bool]]:
    rows = []
    checks: list[tuple[str, bool]] = []
    for mode in modes:
        for kind in ROUTES:
            for conc in (1, 32):
                base = results.get((mode, kind, conc, "direct"), [])
                for name in names:
                    phs = results.get((mode, kind, conc, name), [])
                    if not phs:
                        continue
                    p50 = [pct(p.ttfb_ms, 0.5) for p in phs]
                    p99 = [pct(p.ttfb_ms, 0.99) for p in phs]
                    tot = [pct(p.total_ms, 0.5) for p in phs]
                    rate = [p.rate for p in phs]
                    if name == "direct":
                        d50 = ratio = whole = "-"
                    else:
                        d50 = rng(_paired(phs, base, _d50), "{:+.2f}")
                        ratio = rng(_paired(phs, base, lambda p, b: p.rate / b.rate), "{:.2f}x")
                        whole = rng(_paired(phs, base, _whole), "{:.2f}x")
                    errs = sum(len(p.errors) for p in phs)
                    short = sum(p.short for p in phs)
                    reqs = sum(p.requests for p in phs)
                    cpu = (
                        "-"
                        if name == "direct"
                        else rng(
                            [p.cpu_s * 1e6 / p.messages if p.messages else float("nan") for p in phs],
                            "{:.0f}",
                        )
                    )
                    first = name == names[0]
                    rows.append(
                        [
                            mode if first else "",
                            f"{ROUTES[kind]} ({kind})" if first else "",
                            str(conc) if first else "",
                            name,
                            str(reqs),
                            rng(p50),
                            d50,
                            rng(p99),
                            rng(tot),
                            whole,
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
                "conn",
                "route",
                "conc",
                "target",
                "reqs",
                "TTFB p50 ms",
                "d p50 ms",
                "TTFB p99 ms",
                "whole p50 ms",
                "whole vs direct",
                "msgs/s",
                "rate vs direct",
                "proxy CPU us/msg",
                "err/short",
            ],
            rows,
        )
    )
    print(
        f"\nmedian [min-max] over {rounds} rounds; conn new = a new TCP connection per request, pooled = "
        "keep-alive;\nd p50 = TTFB p50 minus direct's in the same round; whole vs direct = direct's "
        "whole-response p50 / the target's\n(1.00x = as fast as direct); proxy CPU = the proxy "
        "process's CPU time (/proc, 10 ms ticks) per streamed\nmessage, request costs included."
    )
    for key, phs in results.items():
        for p in phs:
            if p.errors:
                print(f"  errors {key}: {p.errors[:3]}")
                break

    def agg(mode: str, kind: str, conc: int, name: str, what: str) -> float:
        base = results.get((mode, kind, conc, "direct"), [])
        phs = results.get((mode, kind, conc, name), [])
        if not phs or not base:
            return float("nan")
        fn = {"d50": _d50, "whole": _whole}.get(what, lambda p, b: p.rate / b.rate)
        return median(_paired(phs, base, fn))

    # the issue-12 summary: 1 stream, added TTFB p50 and whole-response ratio, every target
    summary = []
    for name in names:
        if name == "direct":
            continue
        row = [name]
        for mode in modes:
            for kind in ROUTES:
                row.append(
                    f"{agg(mode, kind, 1, name, 'd50'):+.2f} ms / {agg(mode, kind, 1, name, 'whole'):.2f}x"
                )
        summary.append(row)
    print("\nSummary, 1 stream (added TTFB p50 / whole response direct/target, medians over rounds):")
    print(table(["target", *(f"{m} {k}" for m in modes for k in ROUTES)], summary))

    print("\nTargets (medians over rounds):")
    for name in ("service", "jupyter-ext"):
        if name not in names:
            continue
        for mode in modes:
            for kind in ROUTES:
                d = agg(mode, kind, 1, name, "d50")
                w = agg(mode, kind, 1, name, "whole")
                checks.append(
                    (
                        f"{name} {mode} {kind} TTFB p50 overhead {d:+.2f} ms <= {TARGET_TTFB_MS} ms",
                        d <= TARGET_TTFB_MS,
                    )
                )
                checks.append(
                    (
                        f"{name} {mode} {kind} whole response {w:.2f}x >= {TARGET_WHOLE}x direct",
                        w >= TARGET_WHOLE,
                    )
                )
                if mode != "pooled":
                    continue
                for conc in (1, 32):
                    r = agg(mode, kind, conc, name, "rate")
                    checks.append(
                        (
                            f"{name} {mode} {kind} rate at {conc:>2} streams {r:.2f}x >= {TARGET_RATE}x",
                            r >= TARGET_RATE,
                        )
                    )
                if "jsp" in names:
                    dj = agg(mode, kind, 1, "jsp", "d50")
                    rj = [agg(mode, kind, c, "jsp", "rate") for c in (1, 32)]
                    rs = [agg(mode, kind, c, name, "rate") for c in (1, 32)]
                    better = d < dj and all(a > b for a, b in zip(rs, rj, strict=True))
                    checks.append(
                        (
                            f"{name} {mode} {kind} less overhead than jupyter-server-proxy "
                            f"(TTFB {d:+.2f} vs {dj:+.2f} ms, "
                            f"rate {rs[0]:.2f}/{rs[1]:.2f}x vs {rj[0]:.2f}/{rj[1]:.2f}x at 1/32)",
                            better,
                        )
                    )
        prev = "prev" if name == "service" else "prev-jupyter-ext"
        if prev in names:
            for mode in modes:
                for kind in ROUTES:
                    d, dp = agg(mode, kind, 1, name, "d50"), agg(mode, kind, 1, prev, "d50")
                    w, wp = agg(mode, kind, 1, name, "whole"), agg(mode, kind, 1, prev, "whole")
                    checks.append(
                        (
                            f"{name} {mode} {kind} not slower than {prev} ({prev_commit}): "
                            f"TTFB {d:+.2f} vs {dp:+.2f} ms, whole {w:.2f}x vs {wp:.2f}x",
                            d <= dp + 0.1 and w >= wp - 0.02,
                        )
                    )
    for text, ok in checks:
        print(f"  {verdict(ok)}  {text}")
    if "relay" in names:
        # not a target: what the hop itself costs here, and what the service adds beyond it
        print("\nFloor (the relay: bytes only, no HTTP), 1 stream, medians over rounds:")
        for mode in modes:
            for kind in ROUTES:
                floor = agg(mode, kind, 1, "relay", "d50")
                above = "  ".join(
                    f"{n} {agg(mode, kind, 1, n, 'd50') - floor:+.2f} ms"
                    for n in names
                    if n not in ("direct", "relay")
                )
                print(f"  {mode} {kind}: the relay adds {floor:+.2f} ms TTFB; above it: {above}")
    return checks


def profile(args: argparse.Namespace) -> None:
    """Run the service under cProfile through a streaming load, print its hot spots."""
    import pstats
    import tempfile

    children: list[Child] = []
    out = tempfile.mktemp(prefix="llm-af-bench-", suffix=".prof")
    try:
        bport = start_backend(children, args.chunks, args.pace_ms)
        sport = free_port()
        svc = Child(
            "service",
            [
                PY,
                os.path.abspath(__file__),
                "--serve-profiled",
                out,
                "--",
                *upstream_service_args(sport, TOKEN, f"http://127.0.0.1:{bport}"),
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
            t.open_clients()
            try:
                for mode in args.modes:
                    t.use(mode)
                    for kind in ROUTES:
                        ph = await run_phase(t, kind, args.n1, 1, args.chunks, 30)
                        line = (
                            f"  {mode} {kind}: 1 stream p50 TTFB {pct(ph.ttfb_ms, 0.5):.2f} ms, whole "
                            f"{pct(ph.total_ms, 0.5):.2f} ms, {ph.rate:.0f} msgs/s"
                        )
                        if not args.profile_1:
                            ph32 = await run_phase(t, kind, args.n32, 32, args.chunks, 30)
                            line += f"; 32 streams {ph32.rate:.0f} msgs/s"
                        print(line + " (under cProfile)", flush=True)
            finally:
                await t.close_clients()

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
    p.add_argument(
        "--targets",
        default="relay,prev,service,prev-jupyter-ext,jupyter-ext,jsp",
        help="relay: a byte relay (the floor of any process hop); prev / prev-jupyter-ext: the "
        "service / extension as of --prev-commit, from a git worktree",
    )
    p.add_argument("--prev-commit", default=PREV_COMMIT)
    p.add_argument(
        "--modes", default="new,pooled", help="new: a new TCP connection per request; pooled: keep-alive"
    )
    p.add_argument("--profile", action="store_true", help="profile the standalone service instead")
    p.add_argument("--profile-1", action="store_true", help="--profile: the 1-stream phases only")
    p.add_argument("--serve-backend", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-relay", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="the backend waits this long between messages (0: all at once, a burst)",
    )
    p.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_backend:
        serve_backend(args.port, args.chunks, args.pace_ms / 1000)
        return 0
    if args.serve_relay:
        serve_relay(args.port, args.upstream_port)
        return 0
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip() in MODES]
    if args.profile:
        profile(args)
        return 0
    need = {s.strip() for s in args.targets.split(",") if s.strip()}
    order = [
        "direct",
        *(n for n in ("relay", "prev", "service", "prev-jupyter-ext", "jupyter-ext", "jsp") if n in need),
    ]
    t0 = time.monotonic()
    print(
        f"proxy overhead: {args.chunks} messages per stream"
        + (f" ({args.pace_ms} ms apart)" if args.pace_ms else " (at once)")
        + f", {args.n1} requests at 1 stream, "
        f"{args.n32} at 32, "
        f"{args.rounds} rounds; {machine_note()}",
        flush=True,
    )
    children: list[Child] = []
    prev: Worktree | None = None
    try:
        if need & {"prev", "prev-jupyter-ext"}:
            prev = Worktree(args.prev_commit, PREV_DIR)
            where = prev.module_file("jupyter_llm_af")
            if not where.startswith(PREV_DIR + "/"):
                raise RuntimeError(f"the prev child would import jupyter_llm_af from {where}")
            print(f"  prev: {args.prev_commit} in {PREV_DIR} (imports {where})", flush=True)
        targets = start_stack(children, args.chunks, need, prev, args.pace_ms)
        targets = {n: targets[n] for n in order if n in targets}
        print(f"  started {', '.join(c.name for c in children)} in {time.monotonic() - t0:.1f} s", flush=True)
        results = asyncio.run(bench(args, targets, args.time_cap - (time.monotonic() - t0)))
    finally:
        for c in reversed(children):
            c.stop()
        if prev is not None:
            prev.remove()
    report(results, list(targets), args.rounds, args.modes, args.prev_commit)
    print(f"\ntotal {time.monotonic() - t0:.0f} s; {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
