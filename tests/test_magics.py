"""``%llm`` magics and zero-config clients, run in a REAL ipykernel against a running service.

The service is the real standalone one (``python -m jupyter_llm_af serve --backend upstream``) in
front of ``FakeService`` (below) as its backend, or, with ``JUPYTER_LLM_AF_TEST_SERVICE=fake`` or
before the standalone command exists, ``FakeService`` itself: a stand-in for the service that
speaks Ollama's and OpenAI's APIs under a path prefix with a token, plus ``backend/state`` and
``queue``. Model names choose its behaviour: ``slow`` (answers after 2.5 s, meanwhile "pending job
1234, position 2"), ``endless`` (streams until the client goes away), ``busy`` (429 +
Retry-After), anything unlisted (404). Every answer streams 8 chunks 0.2 s apart.

Each kernel gets the environment from ``kernel_environment()`` only (no OLLAMA_*/OPENAI_* of the
test machine), a private IPYTHONDIR, and this checkout on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from jupyter_llm_af.kernel_env import kernel_environment

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-8f3a"
MODELS = ["smollm2:135m", "tiny", "slow", "endless", "busy"]
CHUNKS = 8
CHUNK_DELAY = 0.2
SLOW_WAIT = 2.5
TINY_NOTE = "A base model: it continues text and may echo the prompt."


# -- the stand-in service ---------------------------------------------------------------------


def reply_for(messages: list[dict[str, Any]]) -> str:
    """Deterministic answer: how many messages came, and the last user message."""
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    if isinstance(last, list):  # OpenAI content parts
        last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    return f"**Echo {len(messages)}**: {str(last).strip()[-60:]}"


def pieces(text: str, n: int = CHUNKS) -> list[str]:
    step = -(-len(text) // n)
    return [text[i : i + step] for i in range(0, len(text), step)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    # responses -------------------------------------------------------------------------------

    def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        raw = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(doc, str) else "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _stream(self, lines: Iterator[bytes], content_type: str, model: str) -> None:
        # HTTP/1.0 without Content-Length: the body ends when the connection closes
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        try:
            for line in lines:
                self.wfile.write(line)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.fake.events.append(("disconnected", model, time.monotonic()))

    def _error(self, api: str, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if api == "openai":
            body: dict[str, Any] = {
                "error": {"message": message, "type": "api_error", "param": None, "code": None}
            }
        elif api == "anthropic":
            body = {"type": "error", "error": {"type": "api_error", "message": message}}
        else:
            body = {"error": message}
        self._send(status, body, headers)

    # routing ---------------------------------------------------------------------------------

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        path = urlsplit(self.path).path
        if not path.startswith(fake.prefix):
            return self._error("ollama", 404, "not under the service prefix")
        route = path[len(fake.prefix) :]
        api = "ollama"
        if route.startswith("v1/"):
            api = "anthropic" if route.startswith("v1/messages") else "openai"
        auth = self.headers.get("Authorization", "")
        authorized = auth in (f"Bearer {TOKEN}", f"token {TOKEN}")
        fake.requests.append(
            {"method": self.command, "route": route, "auth": authorized, "body": body, "t": time.monotonic(),
             "x-api-key": self.headers.get("x-api-key")}
        )  # fmt: skip
        if route == "":
            return self._send(200, "Ollama is running")
        if not authorized and fake.require_auth:
            return self._error(api, 401, "missing or wrong token")
        handler = getattr(self, "r_" + route.replace("/", "_"), None)
        if handler is None:
            return self._error(api, 404, f"{route} not found")
        handler(body)

    # Ollama API ------------------------------------------------------------------------------

    def r_api_tags(self, _body: dict) -> None:
        entries = [
            {"name": m, "model": m, "size": 270_000_000,
             "details": {"parameter_size": "135M", "quantization_level": "Q8_0", "family": "llama"}}
            for m in MODELS
        ]  # fmt: skip
        entries[1]["note"] = TINY_NOTE  # how the service marks e.g. a base model
        self._send(200, {"models": entries})

    def r_api_ps(self, _body: dict) -> None:
        self._send(200, {"models": [{"name": MODELS[0], "model": MODELS[0]}]})

    def r_api_show(self, body: dict) -> None:
        self._send(200, {"modelfile": "", "details": {"family": "llama"}, "capabilities": ["completion"]})

    def _check_model(self, api: str, model: str) -> bool:
        if model == "busy":
            self._error(api, 429, "Too many of your requests are waiting (16)", {"Retry-After": "7"})
            return False
        if model not in MODELS:
            self._error(api, 404, f"model '{model}' not found")
            return False
        return True

    def _answer(self, model: str, text: str) -> Iterator[str]:
        fake = self.server.fake
        if model == "slow":
            fake.waiting += 1
            try:
                time.sleep(SLOW_WAIT)
            finally:
                fake.waiting -= 1
        if model == "endless":
            for i in range(300):  # bounded: 60 s
                time.sleep(CHUNK_DELAY)
                yield f"word{i} "
            return
        for piece in pieces(text):
            time.sleep(CHUNK_DELAY)
            yield piece

    def r_api_chat(self, body: dict) -> None:
        self._ollama_generate(body, chat=True)

    def r_api_generate(self, body: dict) -> None:
        self._ollama_generate(body, chat=False)

    def _ollama_generate(self, body: dict, chat: bool) -> None:
        model = body.get("model", "")
        if not self._check_model("ollama", model):
            return
        messages = body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}]
        text = reply_for(messages)

        def piece(content: str, done: bool) -> dict[str, Any]:
            doc: dict[str, Any] = {"model": model, "created_at": "2025-01-01T00:00:00Z", "done": done}
            if chat:
                doc["message"] = {"role": "assistant", "content": content}
            else:
                doc["response"] = content
            if done:
                doc.update({"done_reason": "stop", "eval_count": CHUNKS, "eval_duration": 1_000_000,
                            "total_duration": 2_000_000, "prompt_eval_count": 3})  # fmt: skip
            return doc

        if body.get("stream", True) is False:
            return self._send(200, piece("".join(self._answer(model, text)), True))

        def lines() -> Iterator[bytes]:
            for content in self._answer(model, text):
                yield (json.dumps(piece(content, False)) + "\n").encode()
            yield (json.dumps(piece("", True)) + "\n").encode()

        self._stream(lines(), "application/x-ndjson", model)

    def r_api_embed(self, body: dict) -> None:
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        vectors = [[(len(t) % 7) / 7, 0.5, 0.25, 1.0] for t in inputs]
        self._send(200, {"model": body.get("model"), "embeddings": vectors})

    # OpenAI API ------------------------------------------------------------------------------

    def r_v1_models(self, _body: dict) -> None:
        self._send(
            200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "x"} for m in MODELS]}
        )

    def r_v1_chat_completions(self, body: dict) -> None:
        model = body.get("model", "")
        if not self._check_model("openai", model):
            return
        text = reply_for(body.get("messages") or [])
        base = {"id": "chatcmpl-1", "created": 0, "model": model}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 3, "completion_tokens": CHUNKS, "total_tokens": 3 + CHUNKS}
            return self._send(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})

        def lines() -> Iterator[bytes]:
            def event(choice: dict[str, Any]) -> bytes:
                doc = {**base, "object": "chat.completion.chunk", "choices": [choice]}
                return f"data: {json.dumps(doc)}\n\n".encode()

            for content in self._answer(model, text):
                yield event({"index": 0, "delta": {"content": content}, "finish_reason": None})
            yield event({"index": 0, "delta": {}, "finish_reason": "stop"})
            yield b"data: [DONE]\n\n"

        self._stream(lines(), "text/event-stream", model)

    def r_v1_embeddings(self, body: dict) -> None:
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]} for i in range(len(inputs))
        ]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        self._send(200, {"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    # Anthropic Messages API -------------------------------------------------------------------

    def r_v1_messages(self, body: dict) -> None:
        model = body.get("model", "")
        if not self._check_model("anthropic", model):
            return
        text = reply_for(body.get("messages") or [])
        self._send(200, {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": CHUNKS},
        })  # fmt: skip

    # the service's own routes ----------------------------------------------------------------

    def r_backend_state(self, _body: dict) -> None:
        fake = self.server.fake
        if fake.waiting:
            doc = {"state": "pending", "serving": False,
                   "message": "Waiting for a GPU: job 1234 pending (Resources)",
                   "job": {"id": "1234", "state": "PENDING", "reason": "Resources"}}  # fmt: skip
        else:
            doc = {"state": "ready", "serving": True, "message": "Ready on gpu017 (job 1234)",
                   "job": {"id": "1234", "state": "RUNNING", "reason": None, "node": "gpu017"}}  # fmt: skip
        totals = {"waiting": 2 * fake.waiting, "running": 0}
        doc.update(
            {"kind": "slurm", "models": MODELS, "queue": totals, "user": {"name": "tester", "admin": True}}
        )
        self._send(200, doc)

    def r_queue(self, _body: dict) -> None:
        fake = self.server.fake
        mine = [
            {"id": "r9", "model": "slow", "state": "waiting", "position": 2, "waited_s": 1.0}
        ] * fake.waiting
        self._send(200, {"mine": mine, "totals": {"waiting": 2 * fake.waiting, "running": 0}})

    def r_backend_start(self, _body: dict) -> None:
        self._send(200, {"message": "Submitted job 1235"})

    def r_backend_stop(self, _body: dict) -> None:
        self._send(200, {"message": "Cancelled job 1234"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeService


@dataclass
class FakeService:
    """The stand-in, served from a thread of the test process (the kernel reaches it by loopback)."""

    prefix: str = "/llm/"
    require_auth: bool = True  # off behind the real service, which never forwards users' tokens
    requests: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    waiting: int = 0

    def __post_init__(self) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.prefix}"

    def start(self) -> FakeService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def since(self, mark: int, route: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests[mark:] if route is None or r["route"] == route]


# -- the service under test: real standalone in front of the fake, or the fake itself ----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str  # the prefix P
    fake: FakeService  # where requests end up (the backend, for the real service)
    real: bool


def _use_real_service() -> bool:
    choice = os.environ.get("JUPYTER_LLM_AF_TEST_SERVICE", "auto")
    if choice in ("fake", "real"):
        return choice == "real"
    return (REPO / "jupyter_llm_af" / "cli.py").exists()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    if not _use_real_service():
        fake = FakeService().start()
        yield Service(fake.url, fake, real=False)
        fake.stop()
        return
    fake = FakeService(prefix="/", require_auth=False).start()
    port = _free_port()
    log = (tmp_path_factory.mktemp("service") / "service.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "jupyter_llm_af",
        "serve",
        "--port",
        str(port),
        "--backend",
        "upstream",
        "--upstream-url",
        fake.url.rstrip("/"),
        "--token",
        TOKEN,
        "--LLMService.max_concurrent=1",
    ]  # fmt: skip  (one slot: test_queue_position can fill it)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_clean_env())
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the service exited: {Path(log.name).read_text()[-2000:]}"
            try:
                if httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not start in 30 s"
            time.sleep(0.2)
        yield Service(url, fake, real=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        fake.stop()


# -- a real kernel ----------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """This process's environment without any LLM client settings of the machine running the tests."""
    prefixes = ("JUPYTER_LLM_AF_", "OLLAMA_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Run:
    reply: dict[str, Any]
    messages: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return self.reply["status"]

    def stream(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.messages if m["msg_type"] == "stream"
                       and m["content"]["name"] == name)  # fmt: skip

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    def outputs(self, *types: str) -> list[dict[str, Any]]:
        types = types or ("display_data", "update_display_data", "execute_result")
        return [m for m in self.messages if m["msg_type"] in types]

    def text(self) -> str:
        """Everything shown: streams, every display's markdown/plain text, error tracebacks."""
        parts = [self.stdout, self.stderr]
        for m in self.outputs():
            data = m["content"]["data"]
            parts.append(data.get("text/markdown") or data.get("text/plain") or "")
        parts += ["\n".join(m["content"]["traceback"]) for m in self.messages if m["msg_type"] == "error"]
        return "\n".join(parts)


class Kernel:
    """An ipykernel subprocess (this Python) with exactly the given environment."""

    def __init__(self, env: dict[str, str], workdir: Path):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        spec_dir = workdir / "kernels" / "llmaf-test"
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec_dir / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": "t", "language": "python"})
        )
        env = {**env, "IPYTHONDIR": str(workdir / "ipython")}
        ksm = KernelSpecManager(kernel_dirs=[str(workdir / "kernels")], ensure_native_kernel=False)
        self.km = KernelManager(kernel_name="llmaf-test", kernel_spec_manager=ksm)
        self.km.start_kernel(env=env, cwd=str(workdir))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 30) -> Run:
        messages: list[dict[str, Any]] = []
        reply = self.kc.execute_interactive(
            code, output_hook=messages.append, timeout=timeout, allow_stdin=False
        )
        return Run(reply["content"], messages)

    def ok(self, code: str, timeout: float = 30) -> Run:
        run = self.run(code, timeout)
        assert run.status == "ok", run.text()
        return run

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def kernel_env_for(url: str) -> dict[str, str]:
    base = _clean_env()
    return {**base, **kernel_environment(url, TOKEN, base)}


@pytest.fixture(scope="module")
def kernel(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    k = Kernel(kernel_env_for(service.url), tmp_path_factory.mktemp("kernel"))
    try:
        k.ok("%load_ext jupyter_llm_af")
        yield k
    finally:
        k.shutdown()


@pytest.fixture
def fresh_kernel(service: Service, tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel(kernel_env_for(service.url), tmp_path)
    try:
        yield k
    finally:
        k.shutdown()


# -- tests ------------------------------------------------------------------------------------


def test_cell_magic_streams_then_renders_markdown(kernel: Kernel, service: Service) -> None:
    mark = len(service.fake.requests)
    run = kernel.ok("%%llm -m tiny\nSay hello to the notebook", timeout=60)
    expected = reply_for([{"role": "user", "content": "Say hello to the notebook"}])

    first = run.outputs("display_data")
    updates = run.outputs("update_display_data")
    assert len(first) == 1 and first[0]["content"]["transient"]["display_id"]
    display_id = first[0]["content"]["transient"]["display_id"]
    assert all(u["content"]["transient"]["display_id"] == display_id for u in updates)
    states = [first[0]["content"]["data"]["text/markdown"]] + [
        u["content"]["data"]["text/markdown"] for u in updates
    ]
    partial = [s for s in states if s.endswith("▌")]
    assert len(partial) >= 4, states  # it streamed: several growing states before the end
    assert all(len(a) <= len(b) for a, b in zip(partial, partial[1:], strict=False)), states
    assert states[-1] == expected  # the final one: the Markdown text, no cursor
    assert not run.outputs("execute_result")  # already on screen: not shown twice
    assert run.stderr == "" and run.stdout == ""
    (chat,) = service.fake.since(mark, "api/chat")
    assert chat["body"]["stream"] is True and chat["body"]["model"] == "tiny"
    assert chat["auth"] or service.real  # the real service sends the backend no user token

    check = kernel.ok("print(type(_).__name__, repr(str(_)))")
    assert check.stdout.strip() == f"LLMResult {expected!r}"
    # shown again later (a cell ending in `_`), it displays as Markdown
    shown = kernel.ok("_")
    assert [m["content"]["data"]["text/markdown"] for m in shown.outputs()] == [expected]


def test_line_magic_out_variable_and_assignment(kernel: Kernel, service: Service) -> None:
    mark = len(service.fake.requests)
    run = kernel.ok("%llm -m tiny -o answer what's 2+2? (it's easy)", timeout=60)
    assert run.outputs()[-1]["content"]["data"]["text/markdown"].endswith("what's 2+2? (it's easy)")
    kernel.ok("assert isinstance(answer, str) and answer.startswith('**Echo 1**'), answer")
    kernel.ok("x = %llm -m tiny -t 0.3 --system 'Be terse.' assigned", timeout=60)
    last = service.fake.since(mark, "api/chat")[-1]["body"]
    assert last["messages"][0] == {"role": "system", "content": "Be terse."}
    assert last["options"]["temperature"] == 0.3
    shown = kernel.ok("x")  # an assigned result is not left muted
    assert shown.outputs("execute_result") or shown.outputs("display_data")
    assert "Echo 2" in shown.text()


def test_a_trailing_question_mark_is_part_of_the_prompt(kernel: Kernel, service: Service) -> None:
    """IPython reads `%magic words?` as a help request; ours keeps the question."""
    mark = len(service.fake.requests)
    run = kernel.ok("%llm -m tiny -n 5 what is a Slurm job?", timeout=60)
    assert run.outputs()[-1]["content"]["data"]["text/markdown"].endswith("what is a Slurm job?")
    kernel.ok("y = %llm -m tiny and you?\nfor i in range(1):\n    z = %llm -m tiny in a loop?", timeout=60)
    kernel.ok("assert y.endswith('and you?') and z.endswith('in a loop?'), (y, z)")
    bodies = [r["body"] for r in service.fake.since(mark, "api/chat")]
    assert [b["messages"][-1]["content"] for b in bodies] == [
        "what is a Slurm job?",
        "and you?",
        "in a loop?",
    ]
    assert bodies[0]["options"] == {"num_predict": 5}
    helped = kernel.ok("%llm?")  # still the help of the magic itself
    assert "Ask the shared LLM service" in json.dumps(helped.reply.get("payload", [])) + helped.text()


def test_default_model_is_the_services_first(kernel: Kernel, service: Service) -> None:
    mark = len(service.fake.requests)
    kernel.ok("%llm hi", timeout=60)
    (chat,) = service.fake.since(mark, "api/chat")
    assert chat["body"]["model"] == MODELS[0]
    kernel.ok("%config LLMMagics.default_model = 'tiny'")
    try:
        mark = len(service.fake.requests)
        kernel.ok("%llm hi", timeout=60)
        assert service.fake.since(mark, "api/chat")[0]["body"]["model"] == "tiny"
    finally:
        kernel.ok("%config LLMMagics.default_model = ''")


def test_chat_keeps_the_conversation(kernel: Kernel, service: Service) -> None:
    kernel.ok("%llm reset")
    mark = len(service.fake.requests)
    kernel.ok("%llm --chat -m tiny first question", timeout=60)
    kernel.ok("%%llm --chat -m tiny\nsecond question", timeout=60)
    kernel.ok("%llm --chat --reset -m tiny third", timeout=60)
    bodies = [r["body"] for r in service.fake.since(mark, "api/chat")]
    assert [len(b["messages"]) for b in bodies] == [1, 3, 1]
    assert bodies[1]["messages"][1]["content"].startswith("**Echo 1**")


def test_waiting_status_while_no_token_yet(kernel: Kernel, service: Service) -> None:
    run = kernel.ok("%llm -m slow are you there", timeout=60)
    states = [
        m["content"]["data"]["text/markdown"] for m in run.outputs("display_data", "update_display_data")
    ]
    waiting = [s for s in states if s.startswith("⏳")]
    assert len(waiting) >= 2, states  # polled about every second while waiting
    if not service.real:  # the fake reports a pending job and a queue place
        assert any("job 1234 pending (Resources)" in s and "position 2 in queue" in s for s in waiting), (
            waiting
        )
    assert states[-1].startswith("**Echo 1**")


def test_queue_position_while_the_slot_is_taken(kernel: Kernel, service: Service) -> None:
    """Real service with one slot: an endless request holds it, the magic's request waits in the queue."""
    if not service.real:
        pytest.skip("needs the real service's admission queue")
    stop = threading.Event()

    def hold_the_slot() -> None:
        body = {"model": "endless", "messages": [{"role": "user", "content": "hold"}]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.stream("POST", service.url + "api/chat", json=body, headers=headers, timeout=60) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    break

    holder = threading.Thread(target=hold_the_slot, daemon=True)
    mark = len(service.fake.requests)
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not service.fake.since(mark, "api/chat"):
            assert time.monotonic() < deadline, "the holding request never reached the backend"
            time.sleep(0.05)
        kc = kernel.kc
        msg_id = kc.execute("%llm -m tiny waiting my turn")
        states: list[str] = []
        deadline = time.monotonic() + 20
        while not any("position 1 in queue" in s for s in states):
            assert time.monotonic() < deadline, states
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id and "data" in msg["content"]:
                states.append(msg["content"]["data"].get("text/markdown", ""))
    finally:
        stop.set()
        holder.join(10)
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
    assert states[0].startswith("⏳")
    kernel.ok("assert _.endswith('waiting my turn'), _")


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        ("%llm -m nope:1b hello", r"model 'nope:1b' not found.*%llm models"),
        ("%llm -m busy hello", r"retry in 7 s"),
        ("%llm --bogus hello", r"unknown option --bogus"),
    ],
)
def test_errors_are_one_readable_line(kernel: Kernel, code: str, expect: str) -> None:
    run = kernel.run(code, timeout=60)
    assert run.status == "error"
    shown = run.text()
    assert re.search(expect, shown), shown
    assert "Traceback" not in shown and not run.outputs("error")
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_backend_down_is_one_readable_line(fresh_kernel: Kernel) -> None:
    down = f"http://127.0.0.1:{_free_port()}/llm/"
    fresh_kernel.ok(f"import os; os.environ['JUPYTER_LLM_AF_URL'] = {down!r}\n%load_ext jupyter_llm_af")
    run = fresh_kernel.run("%llm -m tiny hello", timeout=60)
    assert run.status == "error"
    assert "Cannot reach the LLM service" in run.stderr and "Traceback" not in run.text()


def test_interrupt_cancels_the_request(kernel: Kernel, service: Service) -> None:
    kc = kernel.kc
    msg_id = kc.execute("%llm -m endless go on forever")
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30

    def collect_until(predicate: Any) -> None:
        while not predicate():
            assert time.monotonic() < deadline, [m["msg_type"] for m in messages]
            msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == msg_id:
                messages.append(msg)

    def streaming() -> bool:
        return sum(m["msg_type"] == "update_display_data" for m in messages) >= 3

    def idle() -> bool:
        return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in messages)

    collect_until(streaming)
    interrupted = time.monotonic()
    kernel.km.interrupt_kernel()
    collect_until(idle)
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "error"
    run = Run(reply["content"], messages)
    assert "cancelled" in run.outputs()[-1]["content"]["data"]["text/markdown"]
    assert "cancelled" in run.stderr and "Traceback" not in run.text()
    # the connection was closed: the backend noticed and stopped generating
    wait = time.monotonic() + 5
    while not any(e[0] == "disconnected" and e[1] == "endless" for e in service.fake.events):
        assert time.monotonic() < wait, "the backend never saw the client go away"
        time.sleep(0.1)
    gone = next(e[2] for e in service.fake.events if e[0] == "disconnected")
    assert gone - interrupted < 3
    kernel.ok("%llm -m tiny still works after a cancel", timeout=60)


def test_models_status_help(kernel: Kernel, service: Service) -> None:
    models = kernel.ok("%llm models", timeout=60).text()
    assert "| `smollm2:135m` |" in models and "default" in models
    # the service's note on a model (api/tags `note`) is shown where users pick models
    assert f"| `tiny` | 0.3 GB | 135M | Q8_0 |  | {TINY_NOTE} |" in models, models
    run = kernel.ok("%llm status", timeout=60)
    # the service's own sentence and its `serving` field, nothing worked out by the magic
    state = httpx.get(service.url + "backend/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert f"**LLM service** (serving): {state['message']}" in run.text()
    if not service.real:  # the fake says: a job, and the user is an admin -> Start/Stop buttons
        assert "job 1234" in run.text()
        assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"] for m in run.outputs())
    helptext = kernel.ok("%llm help").text()
    assert "--chat" in helptext and "%llm models" in helptext


def test_coexists_with_another_llm_magic(fresh_kernel: Kernel) -> None:
    """Like Cellmage: %llm exists first. It is kept; ours is %llm_af."""
    setup = (
        "from IPython.core.magic import register_line_cell_magic\n"
        "@register_line_cell_magic\n"
        "def llm(line, cell=None):\n"
        "    return 'cellmage:' + line\n"
    )
    fresh_kernel.ok(setup)
    loaded = fresh_kernel.ok("%load_ext jupyter_llm_af")
    assert "%llm_af" in loaded.stdout and len(loaded.stdout.strip().splitlines()) == 1
    assert "cellmage:x" in fresh_kernel.ok("%llm x").text()
    run = fresh_kernel.ok("%%llm_af -m tiny\nhello from the alias", timeout=60)
    assert run.outputs()[-1]["content"]["data"]["text/markdown"].endswith("hello from the alias")


ZERO_CONFIG = """
import ollama, openai
r = ollama.chat(model="tiny", messages=[{"role": "user", "content": "via ollama"}])
print("OLLAMA", r.message.content)
print("STREAM", "".join(c.message.content for c in ollama.Client().chat(
    model="tiny", messages=[{"role": "user", "content": "streamed"}], stream=True)))
print("LIST", [m.model for m in ollama.list().models][:2])
print("EMBED", len(ollama.embed(model="tiny", input=["a", "b"]).embeddings))
c = openai.OpenAI()
r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "via openai"}])
print("OPENAI", r.choices[0].message.content)
s = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "sse"}], stream=True)
print("OSTREAM", "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices))
print("OEMBED", len(c.embeddings.create(model="tiny", input="x").data[0].embedding))
print("MODELS", [m.id for m in c.models.list()][:2])
"""


def test_zero_config_clients_in_the_kernel(fresh_kernel: Kernel, service: Service) -> None:
    mark = len(service.fake.requests)
    out = fresh_kernel.ok(ZERO_CONFIG, timeout=90).stdout
    assert "OLLAMA **Echo 1**: via ollama" in out
    assert "STREAM **Echo 1**: streamed" in out
    assert "LIST ['smollm2:135m', 'tiny']" in out
    assert "EMBED 2" in out
    assert "OPENAI **Echo 1**: via openai" in out
    assert "OSTREAM **Echo 1**: sse" in out
    assert "OEMBED 4" in out and "MODELS ['smollm2:135m', 'tiny']" in out
    seen = service.fake.since(mark)
    if not service.real:  # the requests kept the /llm/ prefix and carried the token
        assert {r["route"] for r in seen} >= {"api/chat", "api/tags", "api/embed", "v1/chat/completions"}
        assert all(r["auth"] for r in seen)


def test_package_clients_in_the_kernel(fresh_kernel: Kernel) -> None:
    code = (
        "import jupyter_llm_af as af\n"
        "from jupyter_llm_af import clients\n"
        "m = [{'role': 'user', 'content': 'pkg'}]\n"
        "print(af.ollama_client().chat(model='tiny', messages=m).message.content)\n"
        "print(af.openai_client().chat.completions.create(model='tiny',"
        " messages=[{'role': 'user', 'content': 'pkg2'}]).choices[0].message.content)\n"
        "print('STATE', clients.state()['state'], 'tiny' in clients.models())\n"
    )
    out = fresh_kernel.ok(code, timeout=60).stdout
    assert "**Echo 1**: pkg\n" in out and "**Echo 1**: pkg2" in out and "True" in out


@pytest.mark.jupyter_ai
@pytest.mark.parametrize("provider", ["ollama:smollm2:135m", "openai-chat-custom:smollm2:135m"])
def test_jupyter_ai_2_through_the_service(fresh_kernel: Kernel, service: Service, provider: str) -> None:
    pytest.importorskip("jupyter_ai_magics", reason="jupyter-ai 2.x is not installed")
    mark = len(service.fake.requests)
    fresh_kernel.ok("%load_ext jupyter_ai_magics", timeout=120)
    run = fresh_kernel.ok(f"%%ai {provider} -f text\nhello from jupyter-ai", timeout=120)
    assert "hello from jupyter-ai" in run.text() and "Echo" in run.text()
    routes = {r["route"] for r in service.fake.since(mark)}
    assert ("api/chat" if provider.startswith("ollama") else "v1/chat/completions") in routes


def test_demo_notebook_runs(service: Service, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "llmaf-test"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "t", "language": "python"})
    )
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    nb = nbformat.read(REPO / "examples" / "demo.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must not be stored"
    km = KernelManager(kernel_name="llmaf-test", kernel_spec_manager=ksm)
    client = nbclient.NotebookClient(nb, km=km, timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**kernel_env_for(service.url), "IPYTHONDIR": str(tmp_path / "ipython")})
    shown = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "Echo" in shown and "Traceback" not in shown
