"""Where a request's time to first byte goes through the standalone service: a wall-clock timeline.

    .venv/bin/python benchmarks/hop_timeline.py [--chunks 200] [--requests 300] [--keep-alive]

A raw-socket client (no HTTP library: its own cost would hide the service's) sends streamed
``POST /api/chat`` requests, a new TCP connection each (``--keep-alive``: one connection), first to
proxy_overhead.py's backend directly, then through ``jupyter-llm-af serve`` started here with
stamps at each stage (monotonic clock, which client and service share on Linux): accepted,
head parsed, handler, telemetry begun, pipeline, admission, lease, request to the backend, its
answer's head, the first flush, the first socket write, the client's first byte. Prints the p50 of
each step over the requests, and the time to first byte of both. The stamps wrap internals
(Tornado's and this package's) from outside; nothing of the package is changed.

What it showed (issue 12): with 200 messages per response, most of the added time is the last
step, the client waiting for a core behind the backend and the service that are both still busy
with the same response (on 2 cores); with ``--chunks 1`` that step takes ~0.05 ms.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _HERE:
    sys.path[0] = os.path.dirname(_HERE)  # benchmarks/queue.py would shadow the stdlib queue

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks._common import PY, Child, free_port, machine_note, upstream_service_args  # noqa: E402
from benchmarks.proxy_overhead import start_backend  # noqa: E402

TOKEN = "timeline-" + os.urandom(6).hex()
STEPS = [
    ("c_sent", "client: connected and request sent"),
    ("accept", "service: connection accepted"),
    ("headers", "Tornado: request head parsed"),
    ("prepare", "Tornado: handler made, auth begins"),
    ("tel_begin", "body read, identity; telemetry begun"),
    ("pipe_in", "request built; pipeline entered"),
    ("adm_slot", "body parsed and checked; admission asked"),
    ("to_backend", "slot granted; lease asked"),
    ("exch_in", "endpoint leased; request bytes to the backend"),
    ("exch_out", "backend's answer head read"),
    ("pipe_out", "reply made"),
    ("flush1", "first chunk in hand; first flush"),
    ("sent1", "first socket write begins"),
    ("c_first", "client: first byte read"),
]


# -- the stamped service ------------------------------------------------------------------------
def serve_stamped(out: str, argv: list[str]) -> None:
    import tornado.iostream
    import tornado.routing
    import tornado.tcpserver
    import tornado.web

    from jupyter_llm_af import admission, forwarding, pipeline, telemetry
    from jupyter_llm_af.standalone import ServeApp

    records: list[dict[str, float]] = []
    current: dict[str, float] = {}
    clock = time.perf_counter

    def stamp(tag: str) -> None:
        current.setdefault(tag, clock())

    def wrap(cls: Any, name: str, tag: str, is_async: bool = False, tag_after: str = "") -> None:
        """Stamp ``tag`` when ``cls.name`` is called (and ``tag_after`` when a coroutine returns)."""
        orig = getattr(cls, name)
        if is_async:

            async def awrapper(*a: Any, **k: Any) -> Any:
                stamp(tag)
                try:
                    return await orig(*a, **k)
                finally:
                    if tag_after:
                        stamp(tag_after)

            setattr(cls, name, awrapper)
        else:

            def wrapper(*a: Any, **k: Any) -> Any:
                stamp(tag)
                return orig(*a, **k)

            setattr(cls, name, wrapper)

    accept = tornado.tcpserver.TCPServer._handle_connection

    def on_accept(self: Any, *a: Any, **k: Any) -> Any:
        if current:  # one request at a time: the previous one is complete
            records.append(dict(current))
            current.clear()
        stamp("accept")
        return accept(self, *a, **k)

    tornado.tcpserver.TCPServer._handle_connection = on_accept  # type: ignore[method-assign]
    head = tornado.routing._RoutingDelegate.headers_received

    def on_head(self: Any, *a: Any, **k: Any) -> Any:
        if "pipe_in" in current:  # keep-alive: a new request on the same connection
            records.append(dict(current))
            current.clear()
        stamp("headers")
        return head(self, *a, **k)

    tornado.routing._RoutingDelegate.headers_received = on_head  # type: ignore[method-assign]
    wrap(tornado.web.RequestHandler, "prepare", "prepare")
    wrap(telemetry.Telemetry, "begin", "tel_begin")
    wrap(admission.Admission, "slot", "adm_slot")
    wrap(pipeline.Pipeline, "_to_backend", "to_backend", is_async=True)
    wrap(tornado.web.RequestHandler, "flush", "flush1")
    wrap(tornado.iostream.BaseIOStream, "_handle_write", "sent1")
    wrap(pipeline.Pipeline, "handle", "pipe_in", is_async=True, tag_after="pipe_out")
    wrap(forwarding.Upstream, "_exchange", "exch_in", is_async=True, tag_after="exch_out")
    app = ServeApp()
    app.initialize(argv)
    try:
        app.start()
    finally:
        if current:
            records.append(dict(current))
        with open(out, "w") as f:
            json.dump(records, f)


# -- the client ---------------------------------------------------------------------------------
def run_client(port: int, path: str, n: int, keep_alive: bool) -> list[dict[str, float]]:
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("" if keep_alive else "Connection: close\r\n")
        + "\r\n"
    )
    request = head.encode() + body
    out: list[dict[str, float]] = []
    sock: socket.socket | None = None
    for _ in range(n):
        t0 = time.perf_counter()
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        t_sent = time.perf_counter()
        data = sock.recv(65536)
        t_first = time.perf_counter()
        while data and not (keep_alive and data.endswith(b"0\r\n\r\n")):
            more = sock.recv(65536)
            if not more:
                break
            data = more
        out.append({"c0": t0, "c_sent": t_sent, "c_first": t_first, "c_end": time.perf_counter()})
        if not keep_alive:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return out


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main() -> int:
    if sys.argv[1:2] == ["--serve-stamped"]:
        serve_stamped(sys.argv[2], sys.argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=200, help="messages per streamed response")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--keep-alive", action="store_true", help="one connection for all requests")
    p.add_argument("--pace-ms", type=float, default=0.0, help="the backend's pause between messages")
    args = p.parse_args()
    n = max(20, min(args.requests, 5000))
    print(f"hop timeline: {args.chunks} messages per response, {n} requests; {machine_note()}", flush=True)
    children: list[Child] = []
    tmp = tempfile.mkdtemp(prefix="llm-af-timeline-")
    stamps_file = os.path.join(tmp, "stamps.json")
    try:
        bport, sport = start_backend(children, args.chunks, args.pace_ms), free_port()
        service = Child(
            "service",
            [
                PY,
                os.path.abspath(__file__),
                "--serve-stamped",
                stamps_file,
                "serve",
                *upstream_service_args(sport, TOKEN, f"http://127.0.0.1:{bport}"),
            ],
        )
        children.append(service)
        service.wait_ready(
            f"http://127.0.0.1:{sport}/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        run_client(bport, "/api/chat", 30, args.keep_alive)  # warm-up
        run_client(sport, "/api/chat", 30, args.keep_alive)
        direct = run_client(bport, "/api/chat", n, args.keep_alive)
        through = run_client(sport, "/api/chat", n, args.keep_alive)
        direct += run_client(bport, "/api/chat", n, args.keep_alive)  # before and after: shared noise
    finally:
        for c in reversed(children):
            c.stop()
    with open(stamps_file) as f:
        stamps = [r for r in json.load(f) if "pipe_in" in r][-len(through) :]
    shutil.rmtree(tmp, ignore_errors=True)
    rows = [{**c, **s} for c, s in zip(through, stamps, strict=False)]
    print(f"\n{'step (p50, ms)':<52} {'ms':>7}")
    prev = "c0"
    for key, what in STEPS:
        deltas = [r[key] - r[prev] for r in rows if key in r and prev in r]
        print(f"  {what:<50} {p50_ms(deltas):7.3f}")
        prev = key
    d_ttfb = p50_ms([r["c_first"] - r["c0"] for r in direct])
    s_ttfb = p50_ms([r["c_first"] - r["c0"] for r in through])
    d_whole = p50_ms([r["c_end"] - r["c0"] for r in direct])
    s_whole = p50_ms([r["c_end"] - r["c0"] for r in through])
    print(
        f"\nTTFB p50: direct {d_ttfb:.3f} ms, service {s_ttfb:.3f} ms (+{s_ttfb - d_ttfb:.3f}); "
        f"whole response p50: direct {d_whole:.3f} ms, service {s_whole:.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
