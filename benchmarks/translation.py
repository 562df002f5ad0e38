"""Translation benchmark (issue 4): Ollama's /api/chat translated onto llama.cpp vs llama.cpp directly.

    .venv/bin/python benchmarks/translation.py [--reps 20] [--num-predict 64] [--model smollm2:135m]
                                               [--time-cap 100] [--fast-requests 100]

Part 1. Starts ``jupyter-llm-af serve --backend local`` (the embedded default: llama.cpp's router
with SmolLM2-135M) with the benchmark's user as an admin, reads the router's URL from
``GET /backend/state`` (``backend_url``, admins only) and sends the same generation both ways,
alternating (the order flips every pair), ``--reps`` times each after one warm-up each (the time
cap may stop it earlier):

  direct      POST {backend_url}/v1/chat/completions   SSE, stream_options.include_usage
  translated  POST {service}/api/chat                  NDJSON, translated to the request above

Same prompt, ``temperature 0``, 64 tokens (``options.num_predict`` / ``max_tokens``), one stream at
a time. Per request: time to first token (first non-empty content), decode tokens/s
((tokens - 1) / (last token - first token), as the client sees them), and llama.cpp's own prompt
time and decode rate for that request (``timings``, passed on as ``prompt_eval_duration`` /
``eval_duration``). Raw figures compare pairs as the client sees them; "net" ones take llama.cpp's
per-request figures out, because on a small shared machine llama.cpp's own speed varies between
two requests far more than anything the service adds.

Part 2 (``--fast-requests``, 0 skips it): the service's own cost without llama.cpp: direct, ``/v1``
pass-through and translated ``/api/chat`` against benchmarks/proxy_overhead.py's fake backend
(OpenAI mode, ``--num-predict`` tokens at once), taking turns request by request; TTFT, tokens/s
and the service's CPU time per token.

Targets: >= 0.97x direct tokens/s, <= 2 ms added TTFT (medians of pairs). Prints PASS/MISS, exits 0
either way.
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
import glob  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import httpx  # noqa: E402

from benchmarks._common import (  # noqa: E402
    PY,
    Child,
    free_port,
    machine_note,
    median,
    pct,
    rng,
    table,
    upstream_service_args,
    verdict,
)

TOKEN = "bench-" + os.urandom(8).hex()
PROMPT = "Write a short paragraph about the history of the telescope."
TARGET_RATE = 0.97
TARGET_TTFT_MS = 2.0


@dataclass
class Sample:
    path: str
    ttft_ms: float
    tokens: int
    decode_tps: float  # as the client sees it
    total_s: float
    backend_tps: float  # llama.cpp's own figure for this request
    prompt_ms: float  # llama.cpp's prompt processing time for this request
    text: str

    @property
    def ttft_net_ms(self) -> float:
        """TTFT less llama.cpp's prompt time: the latency outside the model (hops, queues, translation)."""
        return self.ttft_ms - self.prompt_ms


async def direct(client: httpx.AsyncClient, url: str, model_id: str, n: int) -> Sample:
    body = {
        "model": model_id,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": n,
    }
    stamps: list[float] = []
    text: list[str] = []
    backend_tps = prompt_ms = float("nan")
    t0 = time.perf_counter()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"direct: {r.status_code} {r.text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            for ch in ev.get("choices") or []:
                piece = (ch.get("delta") or {}).get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
            timings = ev.get("timings") or {}
            if timings.get("predicted_per_second"):
                backend_tps = float(timings["predicted_per_second"])
                prompt_ms = float(timings.get("prompt_ms", "nan"))
    return _sample("direct", t0, stamps, text, backend_tps, prompt_ms)


async def translated(client: httpx.AsyncClient, url: str, model: str, n: int) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "options": {"temperature": 0, "num_predict": n},
    }
    stamps: list[float] = []
    text: list[str] = []
    backend_tps = prompt_ms = float("nan")
    t0 = time.perf_counter()
    async with client.stream("POST", url + "/api/chat", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"translated: {r.status_code} {r.text[:300]}")
        async for line in r.aiter_lines():
            if not line.strip():
                continue
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(f"translated: {obj['error']}")
            piece = (obj.get("message") or {}).get("content")
            if piece:
                stamps.append(time.perf_counter())
                text.append(piece)
            if obj.get("done") and obj.get("eval_duration"):
                # llama.cpp's predicted_n / predicted_ms, passed on as Ollama's eval_count / eval_duration
                backend_tps = obj["eval_count"] / (obj["eval_duration"] / 1e9)
                prompt_ms = obj.get("prompt_eval_duration", float("nan")) / 1e6
    return _sample("translated", t0, stamps, text, backend_tps, prompt_ms)


def _sample(
    path: str, t0: float, stamps: list[float], text: list[str], backend_tps: float, prompt_ms: float
) -> Sample:
    end = time.perf_counter()
    if not stamps:
        raise RuntimeError(f"{path}: no tokens")
    span = stamps[-1] - stamps[0]
    tps = (len(stamps) - 1) / span if span > 0 else float("nan")
    return Sample(
        path, (stamps[0] - t0) * 1000, len(stamps), tps, end - t0, backend_tps, prompt_ms, "".join(text)
    )


def start_service(model: str) -> tuple[Child, str, dict[str, str]]:
    port = free_port()
    svc = Child(
        "service",
        [
            PY,
            "-m",
            "jupyter_llm_af",
            "serve",
            "--backend",
            "local",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--LLMService.admin_users=['user']",
        ],
    )
    return svc, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}


async def bench(args: argparse.Namespace) -> int:
    from jupyter_llm_af import embedded

    if not (embedded.find_llama_server() and embedded.load_manifest()):
        print("embedded backend not set up (run `jupyter-llm-af setup-local`): nothing measured")
        return 0
    t_start = time.monotonic()
    svc, url, auth = start_service(args.model)
    try:
        svc.wait_ready(url + "/", headers=auth, timeout=60)
        backend_url = None
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient(headers=auth, timeout=httpx.Timeout(60.0), trust_env=False) as sclient:
            while time.monotonic() < deadline:
                st = (await sclient.get(url + "/backend/state")).json()
                if st.get("state") == "ready" and st.get("backend_url"):
                    backend_url = st["backend_url"]
                    break
                if st.get("state") == "failed":
                    raise RuntimeError(f"backend failed: {st.get('message')}")
                await asyncio.sleep(0.2)
            if not backend_url:
                raise RuntimeError(f"backend not ready (or backend_url not shown to admins): {st}")
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False) as dclient:
                models = (await dclient.get(backend_url + "/v1/models")).json().get("data", [])
                model_id = next(
                    (m["id"] for m in models if args.model in (m.get("aliases") or []) + [m["id"]]), None
                )
                if model_id is None:
                    raise RuntimeError(
                        f"{args.model} not offered by the backend: {[m.get('id') for m in models]}"
                    )
                print(
                    f"  service up in {time.monotonic() - t_start:.1f} s; backend {backend_url}, model "
                    f"{args.model} = router id {model_id!r}",
                    flush=True,
                )
                # warm-up: loads the model, fills llama.cpp's prompt cache for this prompt, opens connections
                await translated(sclient, url, args.model, args.num_predict)
                await direct(dclient, backend_url, model_id, args.num_predict)
                samples: dict[str, list[Sample]] = {"direct": [], "translated": []}
                stop_at = t_start + args.time_cap
                for i in range(args.reps):
                    if time.monotonic() > stop_at:
                        print(f"  (time cap reached after {i} pairs)")
                        break
                    order = ("direct", "translated") if i % 2 == 0 else ("translated", "direct")
                    for which in order:
                        if which == "direct":
                            s = await direct(dclient, backend_url, model_id, args.num_predict)
                        else:
                            s = await translated(sclient, url, args.model, args.num_predict)
                        samples[which].append(s)
    finally:
        svc.stop()  # stops its llama.cpp router (own process group) too
        # the files this run's service left in the temp dir: the router's preset file and log
        tmp = tempfile.gettempdir()
        for leftover in glob.glob(os.path.join(tmp, f"llm-af-presets-{svc.pid}.ini")) + glob.glob(
            os.path.join(tmp, f"jupyter-llm-af-local-{svc.pid}-*.log")
        ):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    report(samples, args)
    return 0


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> None:
    d, t = samples["direct"], samples["translated"]
    rows = []
    for name, ss in samples.items():
        rows.append(
            [
                name,
                str(len(ss)),
                rng([s.ttft_ms for s in ss]),
                rng([s.ttft_net_ms for s in ss]),
                rng([s.decode_tps for s in ss], "{:.1f}"),
                rng([s.backend_tps for s in ss], "{:.1f}"),
                rng([s.tokens for s in ss], "{:.0f}"),
                rng([s.total_s * 1000 for s in ss], "{:.0f}"),
            ]
        )
    print()
    print(
        table(
            [
                "path",
                "n",
                "TTFT ms",
                "TTFT - prompt ms",
                "decode tok/s (client)",
                "llama.cpp tok/s",
                "tokens",
                "total ms",
            ],
            rows,
        )
    )
    n = min(len(d), len(t))
    if not n:
        print("no samples")
        return
    # Pairs measured back to back share the machine's state: their differences are the figure to read.
    pair_ttft = [t[i].ttft_ms - d[i].ttft_ms for i in range(n)]
    pair_rate = [t[i].decode_tps / d[i].decode_tps for i in range(n)]
    # Backend-normalised: llama.cpp's own prompt time / decode rate for the same request taken out,
    # so that what the (shared, busy) CPU does to llama.cpp between two requests cancels.
    net_ttft = [t[i].ttft_net_ms - d[i].ttft_net_ms for i in range(n)]
    rel = [(t[i].decode_tps / t[i].backend_tps) / (d[i].decode_tps / d[i].backend_tps) for i in range(n)]
    same = sum(t[i].text == d[i].text for i in range(n))
    print(f"\nmedian [min-max] over {n} interleaved pairs ({args.num_predict} tokens, temperature 0):")
    print(f"  added TTFT, translated - direct:                       {rng(pair_ttft, '{:+.2f}')} ms")
    print(f"  added TTFT net of llama.cpp's prompt time:             {rng(net_ttft, '{:+.2f}')} ms")
    print(f"  tokens/s ratio, translated / direct:                   {rng(pair_rate, '{:.3f}')}x")
    print(f"  tokens/s ratio, each over llama.cpp's own rate:        {rng(rel, '{:.3f}')}x")
    print(
        f"  llama.cpp's own decode rate, translated / direct:      "
        f"{rng([t[i].backend_tps / d[i].backend_tps for i in range(n)], '{:.3f}')}x"
        "  (backend noise; 1.0 ideally)"
    )
    print(f"  identical text both ways: {same}/{n} pairs")
    print("\nTargets (raw = as the client sees it; net = llama.cpp's own per-request figures taken out):")
    for label, ratio, added in (
        ("raw", median(pair_rate), median(pair_ttft)),
        ("net", median(rel), median(net_ttft)),
    ):
        print(f"  {verdict(ratio >= TARGET_RATE)}  {label} tokens/s {ratio:.3f}x >= {TARGET_RATE}x direct")
        print(
            f"  {verdict(added <= TARGET_TTFT_MS)}  {label} added TTFT {added:+.2f} ms <= {TARGET_TTFT_MS} ms"
        )


# -- part 2: the translation's own cost, on a backend that answers at once -------------------------
async def fast_backend(args: argparse.Namespace, budget_s: float) -> None:
    """The same three ways to a fast fake OpenAI backend (benchmarks/proxy_overhead.py's): what the
    service itself spends per request and per token, without llama.cpp's run-to-run noise."""
    from benchmarks import proxy_overhead as po

    t_start = time.monotonic()
    children: list[Child] = []
    try:
        bport = free_port()
        backend = Child(
            "backend",
            [PY, po.__file__, "--serve-backend", "--port", str(bport), "--chunks", str(args.num_predict)],
        )
        children.append(backend)
        backend.wait_ready(f"http://127.0.0.1:{bport}/", timeout=30)
        sport = free_port()
        svc = Child(
            "service",
            [
                PY,
                "-m",
                "jupyter_llm_af",
                "serve",
                *upstream_service_args(sport, TOKEN, f"http://127.0.0.1:{bport}"),
                "--protocol",
                "openai",
            ],
        )
        children.append(svc)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        svc.wait_ready(f"http://127.0.0.1:{sport}/", headers=auth, timeout=60)
        hdrs = {"Content-Type": "application/json"}
        chat = {"model": po.MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        openai_body = json.dumps({**chat, "max_tokens": args.num_predict}).encode()
        ollama_body = json.dumps({**chat, "options": {"num_predict": args.num_predict}}).encode()
        n = args.num_predict
        ways = [  # name, target, path, body, sse, messages expected (tokens + closing events)
            (
                "direct /v1",
                po.Target("direct", f"http://127.0.0.1:{bport}", hdrs),
                "/v1/chat/completions",
                openai_body,
                True,
                n + 2,
            ),
            (
                "pass-through /v1",
                po.Target("pass", f"http://127.0.0.1:{sport}", {**hdrs, **auth}, pid=svc.pid),
                "/v1/chat/completions",
                openai_body,
                True,
                n + 2,
            ),
            (
                "translated /api/chat",
                po.Target("transl", f"http://127.0.0.1:{sport}", {**hdrs, **auth}, pid=svc.pid),
                "/api/chat",
                ollama_body,
                False,
                n + 1,
            ),
        ]
        phases = {name: po.Phase() for name, *_ in ways}
        cpu = {name: 0.0 for name, *_ in ways}
        for _, t, *_ in ways:
            t.client = httpx.AsyncClient(timeout=30, trust_env=False)
        try:
            stop_at = time.monotonic() + budget_s - (time.monotonic() - t_start)
            for i in range(args.fast_requests + 10):
                if time.monotonic() > stop_at:
                    break
                for name, t, path, body, sse, expected in ways[i % 3 :] + ways[: i % 3]:
                    ph = phases[name] if i >= 10 else po.Phase()  # the first 10 rounds warm up
                    c0 = t.cpu_s()
                    await po.one_request(t, path, body, sse, expected, ph)
                    if i >= 10:
                        cpu[name] += t.cpu_s() - c0
        finally:
            for _, t, *_ in ways:
                await t.client.aclose()  # type: ignore[union-attr]
    finally:
        for c in reversed(children):
            c.stop()
    base = phases["direct /v1"]
    rows = []
    for name, ph in phases.items():
        tok_s = ph.requests * n / ph.busy_s if ph.busy_s else float("nan")
        base_tok_s = base.requests * n / base.busy_s if base.busy_s else float("nan")
        d = pct(ph.ttfb_ms, 0.5) - pct(base.ttfb_ms, 0.5)
        cpu_tok = (
            cpu[name] * 1e6 / (ph.requests * n) if ph.requests and name != "direct /v1" else float("nan")
        )
        rows.append(
            [
                name,
                str(ph.requests),
                f"{pct(ph.ttfb_ms, 0.5):.2f}",
                "-" if ph is base else f"{d:+.2f}",
                f"{pct(ph.ttfb_ms, 0.99):.2f}",
                f"{tok_s:.0f}",
                "-" if ph is base else f"{tok_s / base_tok_s:.2f}x",
                "-" if ph is base else f"{cpu_tok:.0f}",
                f"{len(ph.errors)}/{ph.short}",
            ]
        )
    print(
        f"\nThe service's own cost: a fake OpenAI backend streaming {n} tokens at once, one stream, "
        "the three "
        "ways taking turns request by request:"
    )
    print(
        table(
            [
                "way",
                "reqs",
                "TTFT p50 ms",
                "d p50 ms",
                "TTFT p99 ms",
                "tokens/s",
                "vs direct",
                "service CPU us/token",
                "err/short",
            ],
            rows,
        )
    )
    print(
        "  (service CPU from /proc in 10 ms ticks, request costs included; "
        "tokens/s is this machine's ceiling "
        "for one stream, not a model's speed)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--reps",
        type=int,
        default=20,
        help="requests per path (>= 5), interleaved; the time cap may stop it earlier",
    )
    p.add_argument("--num-predict", type=int, default=64)
    p.add_argument("--model", default="smollm2:135m")
    p.add_argument(
        "--time-cap",
        type=float,
        default=100.0,
        help="seconds for the llama.cpp part (start-up included); stops early",
    )
    p.add_argument(
        "--fast-requests",
        type=int,
        default=100,
        help="requests per way in the fake-backend part (0: skip it)",
    )
    args = p.parse_args(argv)
    print(
        f"translation: /api/chat (translated) vs llama.cpp /v1/chat/completions, {args.model}, "
        f"{args.num_predict} tokens, {args.reps} reps each; {machine_note()}",
        flush=True,
    )
    t0 = time.monotonic()
    asyncio.run(bench(args))
    if args.fast_requests > 0:
        asyncio.run(fast_backend(args, 45.0))
    print(f"\ntotal {time.monotonic() - t0:.0f} s; {machine_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
