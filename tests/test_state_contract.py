"""The panel's types (``labextension/src/tokens.ts``) say what ``jupyter_llm_af/state.py`` says.

``GET backend/state`` is one contract with two readers: the Python side (``state.py``, filled by
the launchers and the service) and the TypeScript side (the sidebar). These checks read
``tokens.ts`` as text, so that a field or state added on one side and not the other fails here,
not in a user's browser.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from jupyter_llm_af.backends.base import Backend

# (not `from jupyter_llm_af import state`: the package exports a function of that name)
state = importlib.import_module("jupyter_llm_af.state")

TOKENS = Path(__file__).resolve().parents[1] / "labextension" / "src" / "tokens.ts"


def _source() -> str:
    """tokens.ts without comments (a comment may mention braces, quotes or field names)."""
    text = TOKENS.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _union(name: str) -> set[str]:
    """The string literals of ``export type NAME = 'a' | 'b' ...;``."""
    m = re.search(rf"export type {name}\s*=\s*([^;]+);", _source())
    assert m, f"no `export type {name}` in {TOKENS}"
    members = [part.strip() for part in m.group(1).split("|") if part.strip()]
    assert all(re.fullmatch(r"'[^']*'", p) for p in members), members
    return {p.strip("'") for p in members}


def _set_const(name: str) -> set[str]:
    """The string literals of ``export const NAME ... = new Set...([ 'a', 'b' ]);``."""
    m = re.search(rf"export const {name}\b[^=]*=\s*new Set[^(]*\(\[([^\]]*)\]\)", _source())
    assert m, f"no `export const {name} = new Set([...])` in {TOKENS}"
    return set(re.findall(r"'([^']*)'", m.group(1)))


def _interface_keys(name: str) -> set[str]:
    """The top-level keys of ``export interface NAME { ... }`` (nested object types skipped)."""
    source = _source()
    m = re.search(rf"export interface {name}\b[^{{]*\{{", source)
    assert m, f"no `export interface {name}` in {TOKENS}"
    depth, start, i = 1, m.end(), m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    body = source[start : i - 1]
    top = []  # the body with nested {...} blanked out
    depth = 0
    for ch in body:
        depth += ch == "{"
        top.append(ch if depth == 0 else " ")
        depth -= ch == "}"
    return set(re.findall(r"^\s*(\w+)\??\s*:", "".join(top), flags=re.M))


def _keys(typed_dict: type) -> set[str]:
    return set(typed_dict.__required_keys__) | set(typed_dict.__optional_keys__)  # type: ignore[attr-defined]


def test_state_names() -> None:
    assert _union("BackendStateName") == {s.value for s in state.BackendState}


def test_active_states() -> None:
    assert _set_const("ACTIVE_STATES") == {s.value for s in state.ACTIVE_STATES}


@pytest.mark.parametrize(
    ("interface", "typed_dict"),
    [
        ("IBackendState", state.StateDoc),
        ("IJob", state.JobDoc),
        ("IPool", state.PoolDoc),
        ("IQueueTotals", state.QueueTotals),
        ("IUser", state.UserDoc),
    ],
)
def test_document_keys(interface: str, typed_dict: type) -> None:
    ts, py = _interface_keys(interface), _keys(typed_dict)
    assert ts == py, f"only in tokens.ts: {sorted(ts - py)}; only in state.py: {sorted(py - ts)}"


def test_backend_kinds() -> None:
    """``BackendKind`` is the list documented on ``LauncherState.kind``; every launcher's kind is in it."""
    comment = re.search(r"^\s*kind: str\s*#\s*(.+)$", Path(state.__file__).read_text(), flags=re.M)
    assert comment, "LauncherState.kind lost its comment listing the kinds"
    documented = {k.strip() for k in comment.group(1).split("|")}
    assert _union("BackendKind") == documented

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    import jupyter_llm_af.service  # noqa: F401  (imports every launcher)

    kinds = {c.kind for c in subclasses(Backend)}  # type: ignore[attr-defined]
    assert kinds <= documented, kinds - documented


def test_the_parser_sees_nested_and_optional_keys() -> None:
    """The reader above is strict enough to catch drift (a check that cannot fail is no check)."""
    keys = _interface_keys("IGpuFit")
    assert keys == {"gpu_memory_gb", "models", "largest_set", "largest_set_gb", "note"}
    assert "fits" not in keys  # inside the nested `models` element type
