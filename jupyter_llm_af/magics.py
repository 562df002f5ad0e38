"""``%llm`` / ``%%llm``: ask the shared LLM service from a notebook, with the answer streaming in.

``%load_ext jupyter_llm_af`` registers the magics. If another package (e.g. Cellmage) already
defines ``%llm``, that one is kept and ours is reachable as ``%llm_af`` / ``%%llm_af`` (always
registered too).

How a request runs: a worker thread with its own asyncio loop streams ``POST {P}api/chat``
(Ollama's NDJSON) and, until the first token, polls ``backend/state`` and ``queue`` every second;
it hands events to the kernel's main thread through a ``queue.Queue``. The main thread owns all
output (display updates from other threads would land in whatever cell runs then) and waits on
that queue in short slices, so a kernel interrupt (SIGINT -> KeyboardInterrupt in the main
thread) arrives promptly; it then cancels the worker's task, which closes the connection, so the
service drops the request from its queue or stops generating.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import Float, Unicode

from . import clients

CURSOR = " ▌"

HELP = """\
**%llm / %%llm** — ask the shared LLM service (answers stream in and render as Markdown)

```
%llm [options] PROMPT          one line
%%llm [options] [PROMPT]       the cell is the prompt (after PROMPT, if any)
  -m, --model NAME             model (default: the service's default, see `%llm models`)
  -s, --system TEXT            system prompt (quote it if it has spaces)
  -t, --temperature FLOAT      sampling temperature
  -n, --max-tokens N           stop after N tokens (small models can ramble)
  --chat                       continue the conversation of earlier --chat cells
  --reset                      forget that conversation first
  -o, --out NAME               also store the answer in variable NAME
%llm models                    list the models
%llm status                    backend job, queue, your waiting requests
%llm reset                     forget the --chat conversation
%llm help                      this text
```
The answer is the cell's value: `_` (or `Out[n]`) holds it as a string. Interrupt the kernel to cancel.
Settings: `%config LLMMagics.default_model = "NAME"` (or `$JUPYTER_LLM_AF_MODEL`), `LLMMagics.system`.
"""


class LLMResult(str):
    """The answer text. Displays as Markdown, except right after the magic that streamed it."""

    model: str = ""
    stats: dict[str, Any]
    _quiet: bool = False

    def _ipython_display_(self) -> None:
        # The displayhook calls this for the magic's return value; the text is already on screen,
        # so that one call shows nothing (but `_`/Out still get the value).
        if self._quiet:
            self._quiet = False
            return
        display({"text/markdown": str(self), "text/plain": str(self)}, raw=True)


@dataclass
class _Options:
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    chat: bool = False
    reset: bool = False
    out: str | None = None
    help: bool = False


_TOKEN = re.compile(r"\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+)")
_VALUE_OPTS = {
    "-m": "model",
    "--model": "model",
    "-s": "system",
    "--system": "system",
    "-t": "temperature",
    "--temperature": "temperature",
    "-n": "max_tokens",
    "--max-tokens": "max_tokens",
    "-o": "out",
    "--out": "out",
}
_FLAG_OPTS = {"--chat": "chat", "--reset": "reset", "-h": "help", "--help": "help"}


def parse_line(line: str) -> tuple[_Options, str]:
    """Leading options, then the prompt verbatim (not shell-split: apostrophes are fine in it)."""
    opts = _Options()
    pos = 0
    while True:
        m = _TOKEN.match(line, pos)
        if not m or not m.group(1).startswith("-") or m.group(1) == "-":
            break
        word, pos = m.group(1), m.end()
        if word == "--":
            break
        name, _, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in _FLAG_OPTS:
            setattr(opts, _FLAG_OPTS[name], True)
            continue
        if name not in _VALUE_OPTS:
            raise UsageError(f"unknown option {name} (see %llm help)")
        if not inline:
            v = _TOKEN.match(line, pos)
            if not v:
                raise UsageError(f"option {name} needs a value")
            inline, pos = v.group(1), v.end()
        if inline[:1] in "\"'" and inline[-1:] == inline[:1] and len(inline) > 1:
            inline = inline[1:-1].replace('\\"', '"')
        field = _VALUE_OPTS[name]
        convert = {"temperature": float, "max_tokens": int}.get(field, str)
        try:
            setattr(opts, field, convert(inline))
        except ValueError:
            raise UsageError(f"{name} needs a number, not {inline!r}") from None
    if opts.out is not None and not opts.out.isidentifier():
        raise UsageError(f"-o needs a variable name, not {opts.out!r}")
    return opts, line[pos:].strip()


# -- status sentence ---------------------------------------------------------------------------


def status_sentence(state: dict[str, Any] | None, queue_doc: dict[str, Any] | None, model: str | None) -> str:
    """One sentence on why a request waits: the job's state and this user's queue position."""
    parts: list[str] = []
    if state and state.get("state") not in ("ready", "renewing", None):
        parts.append(str(state.get("message") or f"backend {state.get('state')}").rstrip(".…"))
    mine = (queue_doc or {}).get("mine") or []
    waiting = [e for e in mine if e.get("state") == "waiting" and e.get("position")]
    if model and any(e.get("model") == model for e in waiting):
        waiting = [e for e in waiting if e.get("model") == model]
    if waiting:
        parts.append(f"position {min(e['position'] for e in waiting)} in queue")
    if not parts:
        return f"Waiting for the first words from {model or 'the model'}"
    return " · ".join(parts)


# -- the streaming request --------------------------------------------------------------------


class _ChatRequest:
    """``POST api/chat`` streamed in a worker thread; events come out of ``self.events``."""

    def __init__(self, body: dict[str, Any], poll_interval: float, first_status_after: float):
        self.body = body
        self.poll_interval = poll_interval
        self.first_status_after = first_status_after
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="jupyter-llm-af-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self, wait: float = 5.0) -> None:
        """Cancel from the main thread; returns when the connection is closed (or after ``wait``)."""
        try:
            # callbacks queued before the loop runs still run first thing, so no race with _run
            self._loop.call_soon_threadsafe(self._cancel_in_loop)
        except RuntimeError:  # loop already closed: the request had finished
            pass
        self._thread.join(wait)

    def _cancel_in_loop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            self.events.put(("cancelled", None))
        except httpx.TransportError as exc:
            self.events.put(("error", clients.ServiceError.from_transport(exc, clients.service_url())))
        except Exception as exc:  # shown as one line by the main thread
            self.events.put(("error", exc))
        finally:
            # finalize httpx's line iterator here, not in a closed loop ("Task was destroyed...")
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        url = clients.service_url()
        headers = clients.auth_headers()
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=clients.TIMEOUT) as http:
            poller = asyncio.create_task(self._poll(http))
            try:
                async with http.stream("POST", "api/chat", json=self.body) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        self.events.put(("error", clients.ServiceError.from_response(response)))
                        return
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        try:
                            chunk = json.loads(line)
                        except ValueError:  # e.g. an HTML login page: the URL is not the service
                            raise clients.ServiceError(
                                f"{url} did not answer in Ollama's format: is it the LLM service?"
                            ) from None
                        if chunk.get("error"):  # an error after the stream started
                            self.events.put(("error", clients.ServiceError(str(chunk["error"]))))
                            return
                        message = chunk.get("message") or {}
                        if message.get("content") or chunk.get("done"):
                            poller.cancel()
                        if message.get("content"):
                            self.events.put(("chunk", message["content"]))
                        elif message.get("thinking"):
                            self.events.put(("thinking", message["thinking"]))
                        if chunk.get("done"):
                            self.events.put(("done", chunk))
                            return
                self.events.put(("error", clients.ServiceError("The answer stopped before it was complete.")))
            finally:
                poller.cancel()

    async def _poll(self, http: httpx.AsyncClient) -> None:
        await asyncio.sleep(self.first_status_after)  # quick answers need no status line
        while True:
            state, queue_doc = await asyncio.gather(
                self._get(http, "backend/state"), self._get(http, "queue")
            )
            self.events.put(("status", (state, queue_doc)))
            await asyncio.sleep(self.poll_interval)

    @staticmethod
    async def _get(http: httpx.AsyncClient, path: str) -> dict[str, Any] | None:
        try:
            response = await http.get(path, timeout=clients.QUICK_TIMEOUT)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):  # a plain Ollama has no such route: just say "waiting"
            return None


# -- output -----------------------------------------------------------------------------------


class _LiveOutput:
    """One output area updated in place, at most every ``interval`` seconds (plain text outside a kernel)."""

    def __init__(self, interval: float, rich: bool):
        self.interval = interval
        self.rich = rich
        self.handle: Any = None
        self.pending: str | None = None
        self.last = 0.0
        self.printed = 0  # terminal: how much of the answer is printed

    def show(self, markdown: str, force: bool = False) -> None:
        self.pending = markdown
        if force or time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.pending is None or not self.rich:
            return
        data = {"text/markdown": self.pending, "text/plain": self.pending}
        if self.handle is None:
            self.handle = display(data, raw=True, display_id=True)
        else:
            self.handle.update(data, raw=True)
        self.pending = None
        self.last = time.monotonic()

    def stream_plain(self, text: str) -> None:
        if not self.rich:  # a terminal: print the new part of the answer as it comes
            print(text[self.printed :], end="", flush=True)
            self.printed = len(text)

    def finish(self, text: str, note: str = "") -> None:
        """Final state: the answer as Markdown, plus a note such as "cancelled"."""
        if self.rich:
            final = f"{text}\n\n{note}" if text and note else text or note
            if self.handle is not None or final:
                self.show(final, force=True)
        elif self.printed or note:
            print(f"\n{note}" if note else "", flush=True)


# -- the magics -------------------------------------------------------------------------------


@magics_class
class LLMMagics(Magics):
    """The ``%llm`` magics. Configurable with ``%config LLMMagics.<name> = ...``."""

    default_model = Unicode(
        "", help="Model used when -m is not given; empty: $JUPYTER_LLM_AF_MODEL, else the service's default."
    ).tag(config=True)
    system = Unicode("", help="System prompt used when -s is not given.").tag(config=True)
    update_interval = Float(0.1, help="Seconds between output updates while streaming.").tag(config=True)
    poll_interval = Float(1.0, help="Seconds between state/queue polls before the first token.").tag(
        config=True
    )
    first_status_after = Float(0.5, help="Seconds without an answer before a status shows.").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell, **kwargs)
        self.conversation: list[dict[str, str]] = []
        self._service_default: str | None = None
        self._quiet_result: LLMResult | None = None
        if shell is not None:
            shell.events.register("post_run_cell", self._post_run_cell)

    def _post_run_cell(self, *_: Any) -> None:
        # If the result was assigned (x = %llm ...) the displayhook never saw it: show it normally later.
        if self._quiet_result is not None:
            self._quiet_result._quiet = False
            self._quiet_result = None

    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> LLMResult | None:
        """Ask the shared LLM service; ``%llm help`` for the options."""
        command = line.strip()
        if not (cell or "").strip() and command in ("help", "models", "status", "reset", ""):
            return getattr(self, f"_cmd_{command or 'help'}")()
        opts, prompt = parse_line(line)
        if opts.help:
            return self._cmd_help()
        if opts.reset:
            self.conversation.clear()
        if cell is not None and cell.strip():
            prompt = f"{prompt}\n\n{cell}" if prompt else cell
        prompt = prompt.strip()
        if not prompt:
            if opts.reset:
                print("Conversation cleared.")
                return None
            raise UsageError("no prompt: write it after %llm, or in the cell below %%llm (see %llm help)")
        result = self._ask(opts, prompt)
        if opts.out:
            self.shell.user_ns[opts.out] = result
        return result

    # -- asking -------------------------------------------------------------------------------

    def _ask(self, opts: _Options, prompt: str) -> LLMResult:
        model = opts.model or self._resolve_default_model()
        system = opts.system if opts.system is not None else self.system
        user = {"role": "user", "content": prompt}
        if opts.chat:
            if system and not self.conversation:
                self.conversation.append({"role": "system", "content": system})
            messages = [*self.conversation, user]
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [user]
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        options = {"temperature": opts.temperature, "num_predict": opts.max_tokens}
        if any(v is not None for v in options.values()):
            body["options"] = {k: v for k, v in options.items() if v is not None}

        text, final = self._stream(body, model)

        if opts.chat:
            self.conversation.extend([user, {"role": "assistant", "content": text}])
        result = LLMResult(text)
        result.model = model
        result.stats = {k: v for k, v in final.items() if k not in ("message", "done")}
        result._quiet = True
        self._quiet_result = result
        return result

    def _stream(self, body: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
        rich = getattr(self.shell, "kernel", None) is not None
        out = _LiveOutput(self.update_interval, rich)
        request = _ChatRequest(body, self.poll_interval, self.first_status_after)
        started = time.monotonic()
        text = ""
        request.start()
        try:
            while True:
                try:
                    kind, value = request.events.get(timeout=0.1)
                except queue.Empty:
                    out.flush()  # the throttled last update
                    continue
                if kind == "chunk":
                    text += value
                    out.show(text + CURSOR)
                    out.stream_plain(text)
                elif kind == "thinking" and not text:
                    out.show(f"💭 *{model} is thinking…*")
                elif kind == "status" and not text:
                    waited = time.monotonic() - started
                    out.show(f"⏳ *{status_sentence(*value, model)}… ({waited:.0f} s)*", force=True)
                elif kind == "done":
                    out.finish(text)
                    return text, value
                elif kind in ("error", "cancelled"):
                    out.finish(text)
                    raise UsageError(_error_line(value, model))
        except KeyboardInterrupt:
            request.cancel()
            out.finish(text, "*⏹ cancelled*")
            raise UsageError("LLM request cancelled (kernel interrupt).") from None

    def _resolve_default_model(self) -> str:
        configured = self.default_model or os.environ.get("JUPYTER_LLM_AF_MODEL")
        if configured:
            return configured
        if self._service_default:
            return self._service_default
        try:
            state = clients.state()
            names = [state.get("default_model"), *(_model_name(m) for m in state.get("models") or [])]
        except clients.ServiceError as exc:
            if exc.status != 404:  # 404: a plain Ollama without /backend/state
                raise UsageError(exc.message) from None
            names = []
        names = [n for n in names if n]
        if not names:
            try:
                names = clients.models()
            except clients.ServiceError as exc:
                raise UsageError(exc.message) from None
        if not names:
            raise UsageError("The LLM service lists no models; name one with -m MODEL.")
        self._service_default = names[0]
        return names[0]

    # -- commands -----------------------------------------------------------------------------

    def _cmd_help(self) -> None:
        _show_markdown(HELP, rich=self._rich)

    def _cmd_reset(self) -> None:
        self.conversation.clear()
        print("Conversation cleared.")

    def _cmd_models(self) -> None:
        try:
            tags = clients.get_json("api/tags", timeout=clients.TIMEOUT).get("models", [])
            try:
                loaded = {m.get("name") for m in clients.get_json("api/ps").get("models", [])}
            except clients.ServiceError:
                loaded = set()
        except clients.ServiceError as exc:
            raise UsageError(exc.message) from None
        try:
            default = self._resolve_default_model()
        except UsageError:
            default = None
        rows = ["| model | size | parameters | quantization | |", "|---|---|---|---|---|"]
        for m in tags:
            name = m.get("name") or m.get("model", "")
            details = m.get("details") or {}
            size = f"{m['size'] / 1e9:.1f} GB" if m.get("size") else ""
            notes = ", ".join(n for n, on in (("default", name == default), ("loaded", name in loaded)) if on)
            rows.append(
                f"| `{name}` | {size} | {details.get('parameter_size', '')} | "
                f"{details.get('quantization_level', '')} | {notes} |"
            )
        if not tags:
            rows = ["The service lists no models."]
        _show_markdown("\n".join(rows), rich=self._rich)

    def _cmd_status(self) -> None:
        try:
            state = clients.state()
        except clients.ServiceError as exc:
            raise UsageError(exc.message) from None
        try:
            queue_doc = clients.queue()
        except clients.ServiceError:
            queue_doc = {}
        _show_markdown(describe_status(state, queue_doc), rich=self._rich)
        if self._rich and (state.get("user") or {}).get("admin"):
            _admin_buttons(state)

    @property
    def _rich(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None


def describe_status(state: dict[str, Any], queue_doc: dict[str, Any]) -> str:
    """``%llm status`` as a few Markdown lines."""
    lines = [f"**LLM service:** {state.get('message') or state.get('state', 'unknown')}"]
    job = state.get("job") or {}
    if job:
        bits = [f"job {job.get('id')}", str(job.get("state") or "").lower()]
        if job.get("reason") and job.get("reason") not in ("None", "(null)"):
            bits.append(f"({job['reason']})")
        if job.get("node"):
            bits.append(f"on {job['node']}")
        lines.append("**Job:** " + " ".join(b for b in bits if b))
    models = [_model_name(m) for m in state.get("models") or []]
    if models:
        lines.append("**Models:** " + ", ".join(f"`{m}`" for m in models if m))
    mine = queue_doc.get("mine") or []
    waiting = [e for e in mine if e.get("state") == "waiting"]
    running = [e for e in mine if e.get("state") == "running"]
    if mine:
        parts = []
        if running:
            parts.append(f"{len(running)} running")
        if waiting:
            positions = ", ".join(str(e.get("position")) for e in waiting)
            parts.append(f"{len(waiting)} waiting (position {positions})")
        lines.append("**Your requests:** " + "; ".join(parts))
    totals = queue_doc.get("totals") or state.get("queue") or {}
    if totals:
        lines.append(f"**Everyone:** {totals.get('running', 0)} running, {totals.get('waiting', 0)} waiting")
    return "  \n".join(lines)


def _model_name(model: Any) -> str | None:
    if isinstance(model, dict):
        return model.get("name") or model.get("model")
    return str(model) if model else None


def _show_markdown(text: str, rich: bool) -> None:
    if rich:
        display({"text/markdown": text, "text/plain": text}, raw=True)
    else:
        print(text)


def _admin_buttons(state: dict[str, Any]) -> None:
    """Start / Stop buttons for admins (POST backend/start|stop); silently absent without ipywidgets."""
    try:
        import ipywidgets as widgets
    except ImportError:
        return
    start = widgets.Button(description="Start backend", icon="play")
    stop = widgets.Button(description="Stop backend", icon="stop", button_style="warning")
    label = widgets.Label()

    def act(action: str) -> None:
        try:
            doc = clients.post_json(f"backend/{action}")
            label.value = str(doc.get("message") or f"{action}: done")
        except clients.ServiceError as exc:
            label.value = exc.message

    start.on_click(lambda _b: act("start"))
    stop.on_click(lambda _b: act("stop"))
    display(widgets.HBox([start, stop, label]))


def _error_line(error: Any, model: str) -> str:
    if error is None:
        return "LLM request cancelled."
    if isinstance(error, clients.ServiceError):
        message = error.message
        if error.status == 404 and "model" in message.lower():
            message += " — `%llm models` lists the available ones."
        return message
    return f"LLM request failed: {type(error).__name__}: {error}"


_ENDS_IN_QUESTION = re.compile(
    r"^(?P<indent>\s*)(?P<assign>[\w.]+\s*=\s*)?%(?P<name>llm_af|llm)\s+(?P<rest>\S.*\?)\s*$"
)


def _keep_question_marks(lines: list[str]) -> list[str]:
    """``%llm What is a job?``: without this IPython reads the trailing ``?`` as a help request.

    An input transformer (run before IPython's own) that turns such a line into the call IPython
    would have made, so the question mark stays part of the prompt. ``%llm?`` keeps meaning help.
    """
    if not lines or lines[0].startswith("%%"):  # a cell magic takes its body verbatim anyway
        return lines
    out = []
    for line in lines:
        m = _ENDS_IN_QUESTION.match(line.rstrip("\n"))
        if m and _is_ours(m["name"]):
            call = f"get_ipython().run_line_magic({m['name']!r}, {m['rest']!r})"
            line = f"{m['indent']}{m['assign'] or ''}{call}\n"
        out.append(line)
    return out


def _is_ours(name: str) -> bool:
    from IPython import get_ipython

    ip = get_ipython()
    func = ip.magics_manager.magics["line"].get(name) if ip is not None else None
    return isinstance(getattr(func, "__self__", None), LLMMagics)


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%llm``/``%%llm`` (unless taken by another package) and ``%llm_af``/``%%llm_af``."""
    manager = ipython.magics_manager
    existing = manager.magics["line"].get("llm") or manager.magics["cell"].get("llm")
    owner = getattr(existing, "__self__", None)
    taken = existing is not None and not isinstance(owner, LLMMagics) and type(owner).__name__ != "LLMMagics"
    old = manager.registry.get("LLMMagics")
    if isinstance(old, LLMMagics) and old.shell is not None:  # %reload_ext: drop the old instance's hook
        try:
            old.shell.events.unregister("post_run_cell", old._post_run_cell)
        except ValueError:
            pass
    magics = LLMMagics(shell=ipython, parent=ipython)  # parent: c.LLMMagics.* from ipython_config
    manager.registry["LLMMagics"] = magics  # so %config LLMMagics finds it
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    names = ["llm_af"] if taken else ["llm", "llm_af"]
    for name in names:
        manager.register_function(magics.llm, magic_kind="line_cell", magic_name=name)
    cleanup = ipython.input_transformers_cleanup
    cleanup[:] = [t for t in cleanup if getattr(t, "__name__", "") != _keep_question_marks.__name__]
    cleanup.append(_keep_question_marks)
    if taken:
        print(
            "jupyter_llm_af: %llm is already defined by another package (Cellmage?); it is kept. "
            "Use %llm_af / %%llm_af for this service."
        )
