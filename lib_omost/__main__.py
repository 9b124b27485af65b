"""Command line: ``omost layout ...`` and ``omost chat ...`` (the console command of ``pip install .``), or
``python -m lib_omost layout ...`` from the repository folder."""

from __future__ import annotations

import importlib
import os
import sys

from lib_omost import __version__
from lib_omost.extras import install_hint

USAGE = """usage: omost COMMAND [ARGS]    (from the repository folder without installing: python -m lib_omost)

commands:
  layout [INPUT]   show a canvas (LLM answer, canvas code or JSON) as a table and write PNG/JSON files
  chat PROMPT      ask an Omost LLM (local or OpenAI-compatible) for a canvas, streaming the answer

options:
  -h, --help       show this help
  --version        show the version

run 'omost COMMAND --help' for the options of one command, with examples."""

COMMANDS = {"layout": "lib_omost.canvas.cli", "chat": "lib_omost.llm.cli"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"omost (sd-forge-omost) {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; expected 'layout' or 'chat'\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[command]).main(rest)
    except ModuleNotFoundError as exc:  # an optional piece that is not installed: say what to install
        hint = install_hint(exc.name)
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader left (`omost layout | head`): stop quietly, as cat and ls do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a command ended by a closed pipe


if __name__ == "__main__":
    sys.exit(main())
