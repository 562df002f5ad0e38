"""Per-user usage accounting: requests, prompt and completion tokens (the backend's own counts),
queue wait and time in the backend, by day; the queue depth over the last hour; an optional
JSON-lines accounting file a site ships to its own systems.

Imports nothing from Jupyter. Memory is bounded: day buckets older than ``retention_days`` are
dropped (the accounting file is the long-term record, and is read back at start so a restart
keeps today's figures), and each user-day keeps at most ``max_models`` model names. Days are the
service's local calendar days. Neither the book nor the file ever holds prompt text, answers or
credentials.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .errors import BadRequest, Forbidden

if TYPE_CHECKING:
    from .telemetry import RequestRecord

log = logging.getLogger("jupyter_llm_af")

DEFAULT_DAYS = 7  # the panel's chart
MAX_REPLAY_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_wait_s: float = 0.0
    backend_s: float = 0.0

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.queue_wait_s += other.queue_wait_s
        self.backend_s += other.backend_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "queue_wait_s": round(self.queue_wait_s, 3),
            "backend_s": round(self.backend_s, 3),
        }


@dataclass(slots=True)
class _UserDay:
    totals: Totals = field(default_factory=Totals)
    models: dict[str, Totals] = field(default_factory=dict)


def _one(rec: Mapping[str, Any]) -> Totals:
    status = int(rec.get("status") or 0)
    return Totals(
        requests=1,
        errors=1 if status >= 400 or rec.get("error") else 0,
        prompt_tokens=int(rec.get("prompt_tokens") or 0),
        completion_tokens=int(rec.get("completion_tokens") or 0),
        queue_wait_s=float(rec.get("queue_wait_s") or 0.0),
        backend_s=float(rec.get("backend_s") or 0.0),
    )


def accounting_line(rec: RequestRecord) -> dict[str, Any]:
    """One line of the accounting file (no prompts, no credentials, no query strings)."""
    return {
        "time": datetime.fromtimestamp(rec.ended_at, timezone.utc).isoformat(timespec="milliseconds"),
        "user": rec.user,
        "groups": list(rec.groups),
        "route": rec.route.split("?", 1)[0],
        "api": rec.api,
        "model": rec.model,
        "status": rec.status,
        "stream": rec.stream,
        "queue_wait_s": round(rec.queue_wait_s, 4),
        "backend_s": round(rec.backend_s, 4),
        "duration_s": round(rec.duration_s, 4),
        "ttft_s": None if rec.ttft_s is None else round(rec.ttft_s, 4),
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "job_id": rec.job_id,
        "error": rec.error,
    }


class QueueHistory:
    """Queue depth over the last ``window_s``: per ``step_s`` slot the largest depth seen, carried
    forward through quiet slots (the depth stays what it last was)."""

    def __init__(self, window_s: int = 3600, step_s: int = 30, clock: Callable[[], float] = time.time):
        self.step_s = step_s
        self.slots = window_s // step_s
        self._clock = clock
        # [slot, max waiting, max running, last waiting, last running]
        self._entries: deque[list[int]] = deque(maxlen=self.slots + 1)

    def sample(self, waiting: int, running: int) -> None:
        slot = int(self._clock() // self.step_s)
        entries = self._entries
        if entries and entries[-1][0] == slot:
            e = entries[-1]
            e[1], e[2], e[3], e[4] = max(e[1], waiting), max(e[2], running), waiting, running
        else:
            entries.append([slot, waiting, running, waiting, running])

    def history(self) -> dict[str, Any]:
        """``{"start", "step_s", "waiting": [...], "running": [...]}``, oldest first, ending now."""
        now_slot = int(self._clock() // self.step_s)
        first = now_slot - self.slots + 1
        entries = list(self._entries)
        i, last = 0, (0, 0)
        while i < len(entries) and entries[i][0] < first:
            last = (entries[i][3], entries[i][4])
            i += 1
        waiting: list[int] = []
        running: list[int] = []
        for slot in range(first, now_slot + 1):
            if i < len(entries) and entries[i][0] == slot:
                waiting.append(entries[i][1])
                running.append(entries[i][2])
                last = (entries[i][3], entries[i][4])
                i += 1
            else:
                waiting.append(last[0])
                running.append(last[1])
        return {"start": first * self.step_s, "step_s": self.step_s, "waiting": waiting, "running": running}


class _JsonLinesFile:
    """Appends one JSON object per line; reopens when the file is rotated away (logrotate)."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._ino: int | None = None
        self._failed = False

    def write(self, doc: Mapping[str, Any]) -> None:
        data = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
        try:
            try:
                ino: int | None = os.stat(self.path).st_ino
            except FileNotFoundError:
                ino = None
            if self._fd is None or ino != self._ino:
                self._reopen()
            assert self._fd is not None
            os.write(self._fd, data)  # O_APPEND: one write per line, whole lines even if shared
            self._failed = False
        except OSError as e:
            if not self._failed:
                log.warning("jupyter_llm_af: cannot write the usage file %s: %s", self.path, e)
            self._failed = True

    def _reopen(self) -> None:
        self.close()
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._ino = os.fstat(self._fd).st_ino

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class UsageBook:
    def __init__(
        self,
        log_file: str = "",
        retention_days: int = 62,
        max_models: int = 32,
        clock: Callable[[], float] = time.time,
    ):
        self.retention_days = retention_days
        self.max_models = max_models
        self._clock = clock
        self._days: dict[date, dict[str, _UserDay]] = {}
        self.queue = QueueHistory(clock=clock)
        self._file: _JsonLinesFile | None = None
        if log_file:
            path = os.path.expanduser(log_file)
            self.replay(path)
            self._file = _JsonLinesFile(path)

    def today(self) -> date:
        return date.fromtimestamp(self._clock())

    # -- writing -------------------------------------------------------------------------
    def add(self, rec: RequestRecord) -> None:
        line = accounting_line(rec)
        self._add(date.fromtimestamp(rec.ended_at), rec.user, rec.model, _one(line))
        if self._file is not None:
            self._file.write(line)

    def _add(self, day: date, user: str, model: str, one: Totals) -> None:
        users = self._days.get(day)
        if users is None:
            if day < self.today() - timedelta(days=self.retention_days):
                return
            users = self._days[day] = {}
            self._prune()
        entry = users.get(user)
        if entry is None:
            entry = users[user] = _UserDay()
        entry.totals.add(one)
        name = model or "none"
        per_model = entry.models.get(name)
        if per_model is None:
            if len(entry.models) >= self.max_models:
                name = "other"
            per_model = entry.models.setdefault(name, Totals())
        per_model.add(one)

    def _prune(self) -> None:
        oldest = self.today() - timedelta(days=self.retention_days)
        for day in [d for d in self._days if d < oldest]:
            del self._days[day]

    def queue_sample(self, waiting: int, running: int) -> None:
        self.queue.sample(waiting, running)

    def replay(self, path: str) -> int:
        """Read the retention period back from an accounting file (its last 256 MiB); returns the
        number of lines taken."""
        try:
            size = os.path.getsize(path)
        except OSError:
            return 0
        oldest = self.today() - timedelta(days=self.retention_days)
        taken = 0
        with open(path, "rb") as f:
            if size > MAX_REPLAY_BYTES:
                f.seek(size - MAX_REPLAY_BYTES)
                f.readline()  # a partial line
            for raw in f:
                try:
                    doc = json.loads(raw)
                    day = date.fromtimestamp(datetime.fromisoformat(doc["time"]).timestamp())
                except (ValueError, KeyError, TypeError):
                    continue
                if day < oldest or not doc.get("user"):
                    continue
                self._add(day, str(doc["user"]), str(doc.get("model") or ""), _one(doc))
                taken += 1
        return taken

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    # -- reading -------------------------------------------------------------------------
    def _range(self, since: date, until: date) -> Iterator[date]:
        day = since
        while day <= until:
            yield day
            day += timedelta(days=1)

    def summary(
        self, user: str | None, since: date | None = None, until: date | None = None
    ) -> dict[str, Any]:
        """One user's usage (``user=None``: everyone's, with a per-user table) from ``since`` to
        ``until`` (inclusive; default: the last 7 days up to today), with one entry per day."""
        today = self.today()
        until = until or today
        since = since or until - timedelta(days=DEFAULT_DAYS - 1)
        if since > until:
            raise BadRequest(f"'since' ({since}) is after 'until' ({until})")
        since = max(since, min(until, today) - timedelta(days=self.retention_days))
        totals = Totals()
        models: dict[str, Totals] = {}
        users: dict[str, Totals] = {}
        days = []
        for day in self._range(since, until):
            day_totals = Totals()
            for name, entry in self._days.get(day, {}).items():
                if user is not None and name != user:
                    continue
                day_totals.add(entry.totals)
                users.setdefault(name, Totals()).add(entry.totals)
                for model, t in entry.models.items():
                    models.setdefault(model, Totals()).add(t)
            totals.add(day_totals)
            days.append({"date": day.isoformat(), **day_totals.as_dict()})
        doc: dict[str, Any] = {
            "user": user,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "totals": totals.as_dict(),
            "days": days,
            "models": {m: t.as_dict() for m, t in sorted(models.items())},
        }
        if user is None:
            doc["users"] = {u: t.as_dict() for u, t in sorted(users.items())}
        return doc

    def queue_history(self) -> dict[str, Any]:
        return self.queue.history()


def _parse_day(name: str, value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"'{name}' must be a date like 2025-01-31, not {value!r}", param=name) from None


def usage_answer(book: UsageBook, user: str, admin: bool, query: Mapping[str, str]) -> dict[str, Any]:
    """The ``GET …/usage`` document. Query: ``since``/``until`` (YYYY-MM-DD, inclusive) or ``days``
    (the last N days, default 7); ``user`` (admins: whose usage; others only their own).

    ``usage``: the chosen user's summary; ``all`` (admins only): everyone's with a per-user table;
    ``queue``: the queue depth over the last hour (counts only, no names)."""
    since, until = _parse_day("since", query.get("since")), _parse_day("until", query.get("until"))
    days = query.get("days")
    if days and since is None:
        try:
            n = int(days)
        except ValueError:
            raise BadRequest(f"'days' must be a number of days, not {days!r}", param="days") from None
        if not 1 <= n <= book.retention_days + 1:
            raise BadRequest(f"'days' must be between 1 and {book.retention_days + 1}", param="days")
        since = (until or book.today()) - timedelta(days=n - 1)
    who = query.get("user") or user
    if who != user and not admin:
        raise Forbidden("only admins may see other users' usage")
    doc: dict[str, Any] = {
        "user": who,
        "admin": admin,
        "today": book.today().isoformat(),
        "usage": book.summary(who, since, until),
        "queue": book.queue_history(),
    }
    if admin:
        doc["all"] = book.summary(None, since, until)
    return doc
