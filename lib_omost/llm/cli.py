"""``omost chat PROMPT ...`` (or ``python -m lib_omost chat``): ask an Omost LLM for a canvas, streaming the
answer.

The answer streams to stdout; progress (tokens, tokens/s, regions so far), warnings and errors go to stderr.
The canvas is then shown as a table and written as ``layout`` writes it (--png, --json, --comfyui, --code).
What the model or the server wrote is printed with control characters escaped (``terminal.printable``), and
every message with the API key and the URL's credentials masked (``redaction.redact``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from lib_omost.extras import require
from lib_omost.llm.chat import ask
from lib_omost.llm.conversation import Conversation
from lib_omost.llm.events import (SAMPLING_SETTINGS, BudgetWarning, Failed, Finished, GenerationSettings, Progress,
                                  TextDelta, finish_note)
from lib_omost.llm.redaction import redact, url_secrets
from lib_omost.terminal import printable

CLI_PROGRESS_INTERVAL = 2.0  # seconds


CHAT_EXAMPLES = """examples:
  omost chat "a cat and a dog on a sofa" --endpoint http://127.0.0.1:8080 --png out.png --json canvas.json
  omost chat "make the dog smaller" --edit canvas.json --endpoint http://127.0.0.1:11434/v1 --model omost
  omost chat "a cat and a dog on a sofa" --model-path lllyasviel/omost-llama-3-8b-4bits
      (a local model needs the [local] extra: pip install '.[local]')"""


def _arguments(argv: list[str]) -> argparse.Namespace:
    defaults = GenerationSettings()
    p = argparse.ArgumentParser(
        prog="omost chat", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ask an Omost LLM (a local transformers model or an OpenAI-compatible server) for a "
                    "canvas. The answer is parsed, never executed.",
        epilog=CHAT_EXAMPLES)
    p.add_argument("prompt", metavar="PROMPT", help="the image you want (or, with --edit, the change)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", metavar="URL",
                       help="OpenAI-compatible server, e.g. http://127.0.0.1:8080 (llama.cpp) or "
                            "http://127.0.0.1:11434/v1 (Ollama)")
    where.add_argument("--model-path", metavar="PATH",
                       help="local model: a Hugging Face name (e.g. lllyasviel/omost-llama-3-8b-4bits) or folder")
    p.add_argument("--model", metavar="NAME", help="model name on the server (default: the first it lists)")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the server's API key")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="seconds (default 10)")
    p.add_argument("--read-timeout", type=float, default=120.0, metavar="S",
                   help="seconds without data before giving up (default 120)")
    p.add_argument("--context-length", type=int, metavar="N",
                   help="the server model's context in tokens, for the budget warning (default: ask the server)")
    p.add_argument("--device", help="local model device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="local model dtype")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a local model run the Python code shipped with it (only for repositories you trust)")
    for setting in SAMPLING_SETTINGS:
        p.add_argument("--" + setting.name.replace("_", "-"), type=int if setting.whole else float,
                       default=setting.default, help=f"{setting.minimum:g}-{setting.maximum:g}{setting.note} "
                                                     f"(default {setting.default:g})")
    p.add_argument("--seed", type=int, help="random seed (default: random)")
    p.add_argument("--max-answer-chars", type=int, default=defaults.max_answer_chars, metavar="N",
                   help=f"stop reading an answer longer than this, keeping what came (default "
                        f"{defaults.max_answer_chars:,}; a guard against servers that ignore --max-new-tokens)")
    p.add_argument("--prompt-lookup", choices=["auto", "on", "off"], default="auto",
                   help="prompt-lookup decoding for local models (auto: when greedy or editing)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--system-prompt-file", metavar="FILE", help="use this system prompt instead")
    prompt.add_argument("--generic-prompt", action="store_true",
                        help="the longer system prompt with an example, for models not fine-tuned on Omost")
    p.add_argument("--edit", metavar="CANVAS",
                   help="a canvas to edit (LLM answer, canvas code or JSON): PROMPT is the change to make")
    p.add_argument("--png", metavar="OUT.png", help="write the colour preview and the labelled overlay")
    p.add_argument("--json", metavar="OUT.json", help="write our JSON form (omost-canvas v1)")
    p.add_argument("--comfyui", metavar="OUT.json", help="write the ComfyUI_omost list form")
    p.add_argument("--code", metavar="OUT.py", help="write the canonical Omost code")
    p.add_argument("--answer", metavar="OUT.md", help="write the model's whole answer")
    p.add_argument("--quiet", action="store_true", help="do not print the answer while it streams")
    args = p.parse_args(argv)
    if args.model_path and (args.model or args.api_key_env or args.context_length):
        p.error("--model, --api-key-env and --context-length go with --endpoint "
                "(a local model is given with --model-path)")
    if args.endpoint and (args.device or args.dtype or args.trust_remote_code):
        p.error("--device, --dtype and --trust-remote-code go with --model-path")
    return args


def _backend(args):
    if args.endpoint:
        require("httpx")
        from lib_omost.llm.openai_compat import EndpointConfig, OpenAIBackend, api_key_from_env
        key = api_key_from_env(args.api_key_env) if args.api_key_env else None
        return OpenAIBackend(EndpointConfig(args.endpoint, model=args.model, api_key=key,
                                            connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
                                            context_length=args.context_length))
    require("torch", "transformers")
    from lib_omost.llm.local import OMOST_MODELS, LocalBackend, LocalModelSpec
    known = OMOST_MODELS.get(args.model_path)
    if known is not None and known.note:
        print(f"note: {args.model_path}: {known.note}", file=sys.stderr)
    return LocalBackend(LocalModelSpec(args.model_path, device=args.device, dtype=args.dtype,
                                       trust_remote_code=args.trust_remote_code))


def _settings(args) -> GenerationSettings:
    lookup = {"auto": None, "on": True, "off": False}[args.prompt_lookup]
    return GenerationSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                              seed=args.seed, prompt_lookup=lookup, max_answer_chars=args.max_answer_chars)


def _secrets(args) -> tuple[str, ...]:
    """What no message may show: the API key (from its environment variable) and the URL's credentials."""
    key = os.environ.get(args.api_key_env, "").strip() if args.api_key_env else ""
    return ((key,) if key else ()) + url_secrets(args.endpoint)


def _say(message: str, secrets: tuple[str, ...]) -> None:
    """A message line on stderr: secrets masked, control characters escaped."""
    print(printable(redact(message, secrets)), file=sys.stderr)


def _conversation(args) -> Conversation:
    from lib_omost.llm.prompts import system_prompt
    text = system_prompt("generic" if args.generic_prompt else "omost", path=args.system_prompt_file)
    conversation = Conversation(text)
    if args.edit:
        from lib_omost.canvas import load_canvas_text
        with open(args.edit, encoding="utf-8-sig") as f:
            conversation.replace_last_answer_with_canvas(load_canvas_text(f.read()).canvas)
    return conversation


def _progress_line(tokens: int, seconds: float, regions: int) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    return f"[omost] {tokens} tokens, {rate:.1f} tokens/s, {regions} regions"


class _Printer:
    """Answer text to stdout as it streams; progress lines to stderr, only where the text is at a line
    start, so a terminal showing both never gets a line cut in two."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.at_line_start = True
        self.pending: str | None = None

    def text(self, text: str) -> None:
        if self.quiet or not text:
            return
        sys.stdout.write(printable(text))
        self.at_line_start = text.endswith("\n")
        if self.at_line_start and self.pending:
            self.progress(self.pending)

    def progress(self, line: str) -> None:
        if self.at_line_start:
            sys.stdout.flush()
            print(printable(line), file=sys.stderr, flush=True)
            self.pending = None
        else:
            self.pending = line

    def end_text(self) -> None:
        if not self.at_line_start:
            sys.stdout.write("\n")
            self.at_line_start = True
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(list(sys.argv[1:] if argv is None else argv))
    from lib_omost.canvas import CanvasError
    from lib_omost.canvas.cli import format_region_table, write_canvas_outputs
    secrets = _secrets(args)
    try:
        settings = _settings(args)
        backend = _backend(args)
        conversation = _conversation(args)
    except (ValueError, OSError) as exc:  # CanvasError is a ValueError
        _say(f"error: {exc}", secrets)
        return 2
    printer = _Printer(args.quiet)
    finished = None
    try:
        for event in ask(backend, conversation, args.prompt, settings, threading.Event(), CLI_PROGRESS_INTERVAL):
            if isinstance(event, TextDelta):
                printer.text(event.text)
            elif isinstance(event, Progress):
                printer.progress(_progress_line(event.tokens, event.seconds, event.regions))
            elif isinstance(event, BudgetWarning):
                printer.progress(f"warning: {event.message}")
            elif isinstance(event, Failed):
                printer.end_text()
                _say(f"error: {event.message}", secrets)
                return 1
            elif isinstance(event, Finished):
                finished = event
    except KeyboardInterrupt:
        printer.end_text()
        print("interrupted", file=sys.stderr)
        return 130
    printer.end_text()
    print(f"[omost] finished ({finished.reason}): {finished.tokens} tokens in {finished.seconds:.1f} s "
          f"({finished.tokens_per_second:.1f} tokens/s)", file=sys.stderr)
    note = finish_note(finished.reason, settings)
    if note:
        _say(f"warning: {note}", secrets)
    try:
        if args.answer:
            with open(args.answer, "w", encoding="utf-8", errors="backslashreplace") as f:
                f.write(finished.text)
        if finished.result is None:
            _say(f"error: no canvas in the answer: {finished.parse_error}", secrets)
            return 1
        print(format_region_table(finished.result.canvas))
        for note in finished.result.notes:
            print(printable(f"note: {note}"))
        written = write_canvas_outputs(finished.result.canvas, png=args.png, json_path=args.json,
                                       comfyui=args.comfyui, code=args.code)
    except (OSError, CanvasError) as exc:
        _say(f"error: {exc}", secrets)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
