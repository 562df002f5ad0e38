"""``%llm`` / ``%%llm``: ask the shared LLM service from a notebook, with the answer streaming in.

``%load_ext jupyter_llm_af`` registers the magics. If another package (e.g. Cellmage) already
defines ``%llm``, that one is kept and ours is reachable as ``%llm_af`` / ``%%llm_af`` (always
registered too).

Layout: :mod:`.arguments` reads the line, :mod:`.client` streams the request in a worker thread,
:mod:`.render` shows the answer, the waiting line, status and models; this module registers the
magics and runs a request: the kernel's main thread takes the worker's events and owns all
output (see :mod:`.client` for why, and for how an interrupt cancels the request).
"""

from __future__ import annotations

import os
import queue
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Float, Unicode

from .. import clients
from .arguments import COMMANDS, HELP, Options, keep_question_mark, parse_line
from .client import ChatRequest, chat_body
from .render import (
    CURSOR,
    LiveOutput,
    LLMResult,
    admin_buttons,
    error_line,
    models_markdown,
    show_markdown,
    status_markdown,
    waiting_line,
)

__all__ = ["LLMMagics", "LLMResult", "load_ipython_extension"]


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
        if not (cell or "").strip() and command in (*COMMANDS, ""):
            getattr(self, f"_cmd_{command or 'help'}")()
            return None
        opts, prompt = parse_line(line)
        if opts.help:
            self._cmd_help()
            return None
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
        if opts.out and self.shell is not None:
            self.shell.user_ns[opts.out] = result
        return result

    # -- asking -------------------------------------------------------------------------------

    def _ask(self, opts: Options, prompt: str) -> LLMResult:
        model = opts.model or self._resolve_default_model()
        system = opts.system if opts.system is not None else self.system
        user = {"role": "user", "content": prompt}
        if opts.chat:
            if system and not self.conversation:
                self.conversation.append({"role": "system", "content": system})
            messages = [*self.conversation, user]
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [user]

        text, final = self._stream(chat_body(model, messages, opts.temperature, opts.max_tokens), model)

        if opts.chat:
            self.conversation.extend([user, {"role": "assistant", "content": text}])
        result = LLMResult(text)
        result.model = model
        result.stats = {k: v for k, v in final.items() if k not in ("message", "done")}
        result._quiet = True
        self._quiet_result = result
        return result

    def _stream(self, body: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
        out = LiveOutput(self.update_interval, self._rich)
        request = ChatRequest(body, self.poll_interval, self.first_status_after)
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
                    state, queue_doc = value
                    waited = time.monotonic() - started
                    out.show(f"⏳ *{waiting_line(state, queue_doc, model)}… ({waited:.0f} s)*", force=True)
                elif kind == "done":
                    out.finish(text)
                    return text, value
                elif kind in ("error", "cancelled"):
                    out.finish(text)
                    raise UsageError(error_line(value))
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
            names = [state.get("default_model"), *(state.get("models") or [])]
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
        show_markdown(HELP, rich=self._rich)

    def _cmd_reset(self) -> None:
        self.conversation.clear()
        print("Conversation cleared.")

    def _cmd_models(self) -> None:
        try:
            tags = clients.get_json("api/tags", timeout=clients.TIMEOUT).get("models", [])
        except clients.ServiceError as exc:
            raise UsageError(exc.message) from None
        try:
            loaded = {m.get("name") for m in clients.get_json("api/ps").get("models", [])}
        except clients.ServiceError:
            loaded = set()
        try:
            notes = clients.state().get("model_notes") or {}
        except clients.ServiceError:  # a plain Ollama has no backend/state
            notes = {}
        try:
            default: str | None = self._resolve_default_model()
        except UsageError:
            default = None
        show_markdown(models_markdown(tags, loaded, default, notes), rich=self._rich)

    def _cmd_status(self) -> None:
        try:
            state = clients.state()
        except clients.ServiceError as exc:
            raise UsageError(exc.message) from None
        try:
            queue_doc = clients.queue()
        except clients.ServiceError:
            queue_doc = {}
        show_markdown(status_markdown(state, queue_doc), rich=self._rich)
        if self._rich and (state.get("user") or {}).get("admin"):
            admin_buttons()

    @property
    def _rich(self) -> bool:
        return getattr(self.shell, "kernel", None) is not None


def _keep_question_marks(lines: list[str]) -> list[str]:
    """Input transformer (run before IPython's own): ``%llm What is a job?`` keeps its ``?``."""
    if not lines or lines[0].startswith("%%"):  # a cell magic takes its body verbatim anyway
        return lines
    return [keep_question_mark(line, _is_ours) for line in lines]


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
        # (IPython types @line_cell_magic as a decorator factory: mypy cannot bind it)
        manager.register_function(magics.llm, magic_kind="line_cell", magic_name=name)  # type: ignore[misc]
    cleanup = ipython.input_transformers_cleanup
    cleanup[:] = [t for t in cleanup if getattr(t, "__name__", "") != _keep_question_marks.__name__]
    cleanup.append(_keep_question_marks)
    if taken:
        print(
            "jupyter_llm_af: %llm is already defined by another package (Cellmage?); it is kept. "
            "Use %llm_af / %%llm_af for this service."
        )
