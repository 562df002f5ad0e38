"""What ``%llm`` shows: the live answer, its value, the waiting line, status, models and errors.

The sentences about the backend are the service's (``message`` of ``backend/state``, see
:mod:`jupyter_llm_af.state`); whether it serves is its ``serving`` field. Nothing here works
either out from the state name.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
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
    text = "  \n".join(lines)
    jobs = jobs_markdown(state)
    return f"{text}\n\n{jobs}" if jobs else text


# -- several Slurm jobs and pools (the panel's "GPU jobs" section says the same) ---------------------

PoolView = tuple[str, Mapping[str, Any] | None, list[Mapping[str, Any]]]

# Slurm pending reasons worth no words
_NO_REASON = {"", "none", "n/a"}


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 12 min``, ``2 d 5 h`` (as the panel writes durations)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _clock(value: Any) -> str | None:
    """A server time (ISO 8601) as the reader's local ``HH:MM``; None for Slurm's "N/A" and the like."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone().strftime("%H:%M")


def pool_views(state: Mapping[str, Any]) -> list[PoolView] | None:
    """The pools of a service with several Slurm jobs or pools, each as (name, pool doc, its jobs) in
    the server's order (jobs of a pool the state does not list get one of their own, doc None).
    None for a one-job service — no ``jobs``/``pools``, or one job and one default pool of at most
    one job — which ``%llm status`` shows as it always did."""
    pools: Sequence[Mapping[str, Any]] = state.get("pools") or []
    listed: Sequence[Mapping[str, Any]] = state.get("jobs") or []
    one_job = (
        len(listed) <= 1
        and len(pools) <= 1
        and all(p.get("name") == "default" and (p.get("max_jobs") or 1) <= 1 for p in pools)
    )
    if one_job:
        return None
    jobs = listed or [j for j in (state.get("job"), state.get("successor")) if j]
    views: list[PoolView] = [(str(p.get("name")), p, []) for p in pools]
    for job in jobs:
        name = str(job.get("pool") or "default")
        view = next((v for v in views if v[0] == name), None)
        if view is None:
            view = (name, None, [])
            views.append(view)
        view[2].append(job)
    return views


def pool_heading(pool: Mapping[str, Any]) -> str:
    """``1/2 jobs · min 1 · gpu:a100:2 · 80 GB each`` and the models sent there."""
    count, most = pool.get("jobs") or 0, pool.get("max_jobs") or 0
    noun = "jobs" if most or count != 1 else "job"
    parts = [f"{count}{f'/{most}' if most else ''} {noun}"]
    if pool.get("min_jobs"):
        parts.append(f"min {pool['min_jobs']}")
    if pool.get("gres"):
        parts.append(str(pool["gres"]))
    if pool.get("gpu_memory_gb"):
        parts.append(f"{pool['gpu_memory_gb']:g} GB each")
    if pool.get("models"):
        parts.append(", ".join(f"`{m}`" for m in pool["models"]))
    return " · ".join(parts)


def job_line(job: Mapping[str, Any]) -> str:
    """``running · gpu017 · 3 h 12 min left · `gemma3:27b` · 2 in flight``; the role when not current."""
    state = str(job.get("state") or "unknown").lower()
    reason = str(job.get("reason") or "").strip()
    parts = [f"{state} ({reason})" if state == "pending" and reason.lower() not in _NO_REASON else state]
    if job.get("node"):
        parts.append(str(job["node"]))
    estimated = _clock(job.get("estimated_start"))
    if estimated and not job.get("started_at"):
        parts.append(f"est. start {estimated}")
    if isinstance(job.get("time_left_s"), (int, float)):
        parts.append(f"{_duration(job['time_left_s'])} left")
    if job.get("models"):
        parts.append(", ".join(f"`{m}`" for m in job["models"]))
    if isinstance(job.get("inflight"), int):
        parts.append(f"{job['inflight']} in flight")
    if job.get("role") and job["role"] != "current":
        parts.append(str(job["role"]))
    return " · ".join(parts)


def jobs_markdown(state: Mapping[str, Any]) -> str:
    """Every Slurm job of every pool as a Markdown list (the pool's own sentence from the server);
    empty for a one-job service."""
    views = pool_views(state)
    if views is None:
        return ""
    lines = ["**GPU jobs:**", ""]
    for name, pool, jobs in views:
        head = f"- `{name}`"
        if pool is not None:
            head += f" ({pool_heading(pool)})"
            if pool.get("message"):
                head += f": {pool['message']}"
        lines.append(head)
        lines.extend(f"  - job `{job.get('id')}`: {job_line(job)}" for job in jobs)
    return "\n".join(lines)


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
