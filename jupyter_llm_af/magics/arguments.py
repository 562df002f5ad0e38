"""What ``%llm`` reads from its line: options first, then the prompt verbatim.

Pure text handling (no IPython display, no network). The prompt is not shell-split, so
apostrophes and question marks are fine in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from IPython.core.error import UsageError

#: The sub-commands of ``%llm`` (a line that is exactly one of these, and no cell body).
COMMANDS = ("help", "models", "status", "reset")

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


@dataclass
class Options:
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
_NUMBERS: dict[str, type] = {"temperature": float, "max_tokens": int}


def parse_line(line: str) -> tuple[Options, str]:
    """Leading options, then the prompt verbatim (not shell-split: apostrophes are fine in it)."""
    opts = Options()
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
        try:
            setattr(opts, field, _NUMBERS.get(field, str)(inline))
        except ValueError:
            raise UsageError(f"{name} needs a number, not {inline!r}") from None
    if opts.out is not None and not opts.out.isidentifier():
        raise UsageError(f"-o needs a variable name, not {opts.out!r}")
    return opts, line[pos:].strip()


_ENDS_IN_QUESTION = re.compile(
    r"^(?P<indent>\s*)(?P<assign>[\w.]+\s*=\s*)?%(?P<name>llm_af|llm)\s+(?P<rest>\S.*\?)\s*$"
)


def keep_question_mark(line: str, is_ours: Callable[[str], bool]) -> str:
    """``%llm What is a job?`` as the call IPython would make, so the ``?`` stays in the prompt.

    Without this IPython reads a trailing ``?`` as a help request. ``is_ours(name)`` says whether
    the magic of that name is this package's (another package's ``%llm`` is left alone).
    ``%llm?`` (nothing before the ``?``) keeps meaning help.
    """
    m = _ENDS_IN_QUESTION.match(line.rstrip("\n"))
    if not m or not is_ours(m["name"]):
        return line
    call = f"get_ipython().run_line_magic({m['name']!r}, {m['rest']!r})"
    return f"{m['indent']}{m['assign'] or ''}{call}\n"
