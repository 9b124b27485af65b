"""Command line: ``python -m lib_omost layout ...`` and ``python -m lib_omost chat ...``."""

from __future__ import annotations

import sys

USAGE = """usage: python -m lib_omost COMMAND [ARGS]

commands:
  layout [INPUT]   show a canvas (LLM answer, canvas code or JSON) as a table and write PNG/JSON files
  chat PROMPT      ask an Omost LLM (local or OpenAI-compatible) for a canvas, streaming the answer

run 'python -m lib_omost COMMAND --help' for the options of one command."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "layout":
        from lib_omost.canvas.cli import main as run
    elif command == "chat":
        from lib_omost.llm.cli import main as run
    else:
        print(f"unknown command {command!r}; expected 'layout' or 'chat'\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
