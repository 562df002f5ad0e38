"""``jupyter-llm-af``: ``serve`` (the standalone service) and ``setup-local`` (the embedded backend)."""

from __future__ import annotations

import sys

USAGE = """usage: jupyter-llm-af COMMAND [options]

commands:
  serve         run the service on its own port (Ollama + OpenAI APIs); --help-all for every option
  setup-local   build/install the embedded llama.cpp backend and its small models
  version       print the version
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from .standalone import main as serve

        return serve(rest)
    if command == "setup-local":
        from .setup_local import main as setup

        return setup(rest)
    if command in ("version", "--version"):
        from . import __version__

        print(__version__)
        return 0
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2
