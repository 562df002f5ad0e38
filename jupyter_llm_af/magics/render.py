"""What ``%llm`` shows: the live answer, its value, the waiting line, status, models and errors.

The sentences about the backend are the service's (``message`` of ``backend/state``, see
:mod:`jupyter_llm_af.state`); whether it serves is its ``serving`` field. Nothing here works
either out from the state name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from IPython.display import display

from .. import clients

CURSOR = " ▌"


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


class LiveOutput:
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


def waiting_line(
    state: Mapping[str, Any] | None, queue_doc: Mapping[str, Any] | None, model: str | None
) -> str:
    """Why a request waits: the service's sentence while it is not serving, and this user's queue place."""
    parts: list[str] = []
    if state and not state.get("serving") and state.get("message"):
        parts.append(str(state["message"]).rstrip(".…"))
    mine = (queue_doc or {}).get("mine") or []
    waiting = [e for e in mine if e.get("state") == "waiting" and e.get("position")]
    if model and any(e.get("model") == model for e in waiting):
        waiting = [e for e in waiting if e.get("model") == model]
    if waiting:
        parts.append(f"position {min(e['position'] for e in waiting)} in queue")
    if not parts:
        return f"Waiting for the first words from {model or 'the model'}"
    return " · ".join(parts)


def status_markdown(state: Mapping[str, Any], queue_doc: Mapping[str, Any]) -> str:
    """``%llm status`` as a few Markdown lines."""
    serving = "serving" if state.get("serving") else "not serving"
    lines = [f"**LLM service** ({serving}): {state.get('message') or state.get('state', 'unknown')}"]
    models = [m for m in state.get("models") or [] if m]
    if models:
        default = state.get("default_model")
        names = [f"`{m}`" + (" (default)" if m == default else "") for m in models]
        lines.append("**Models:** " + ", ".join(names))
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


def models_markdown(
    tags: list[Mapping[str, Any]],
    loaded: set[str],
    default: str | None,
    notes: Mapping[str, str] | None = None,
) -> str:
    """``%llm models``: a table of ``api/tags``; a note column when the service has notes on models
    (the entry's ``note``, else the state's ``model_notes``: e.g. that a model is a base model)."""
    if not tags:
        return "The service lists no models."

    def note_of(tag: Mapping[str, Any], name: str) -> str:
        return str(tag.get("note") or (notes or {}).get(name) or "").replace("|", "\\|").strip()

    names = [str(m.get("name") or m.get("model") or "") for m in tags]
    with_notes = any(note_of(m, n) for m, n in zip(tags, names, strict=True))
    header = "| model | size | parameters | quantization | |" + (" note |" if with_notes else "")
    rows = [header, "|---|---|---|---|---|" + ("---|" if with_notes else "")]
    for m, name in zip(tags, names, strict=True):
        details = m.get("details") or {}
        size = f"{m['size'] / 1e9:.1f} GB" if m.get("size") else ""
        marks = ", ".join(n for n, on in (("default", name == default), ("loaded", name in loaded)) if on)
        row = (
            f"| `{name}` | {size} | {details.get('parameter_size', '')} | "
            f"{details.get('quantization_level', '')} | {marks} |"
        )
        rows.append(row + (f" {note_of(m, name)} |" if with_notes else ""))
    return "\n".join(rows)


def show_markdown(text: str, rich: bool) -> None:
    if rich:
        display({"text/markdown": text, "text/plain": text}, raw=True)
    else:
        print(text)


def admin_buttons() -> None:
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


def error_line(error: Any) -> str:
    """A failed request as the one line the magic raises (no traceback)."""
    if error is None:
        return "LLM request cancelled."
    if isinstance(error, clients.ServiceError):
        message = error.message
        if error.status == 404 and "model" in message.lower():
            message += " — `%llm models` lists the available ones."
        return message
    return f"LLM request failed: {type(error).__name__}: {error}"
