"""One chat round as an iterator of events: the loop the CLI and the WebUI accordion both run.

    for event in ask(backend, conversation, "a dragon over a castle", settings, stop):
        ...  # TextDelta, CanvasUpdate, Progress, BudgetWarning, then Finished or Failed

The answer is parsed while it streams (the canvas grows call by call). On Finished the conversation holds the
new turn (also for "length" and "stopped", so the partial canvas can be kept, undone or retried); on Failed
it is left exactly as it was. `stop` (a threading.Event) may be set from any thread.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from lib_omost.llm.conversation import Conversation, budget
from lib_omost.llm.events import (BudgetWarning, CanvasUpdate, Event, Failed, Finished, GenerationSettings,
                                  LLMError, Progress)

PROGRESS_INTERVAL = 0.5  # seconds between Progress events


def ask(backend, conversation: Conversation, request: str, settings: GenerationSettings | None = None,
        stop: threading.Event | None = None, progress_interval: float = PROGRESS_INTERVAL) -> Iterator[Event]:
    """Send `request` after the conversation so far; on success the conversation gains the turn."""
    if not isinstance(request, str) or not request.strip():
        yield Failed("the request is empty: describe the image (or the change) you want")
        return
    messages = conversation.messages(request)
    snapshot = list(conversation.turns)

    def commit(answer: str) -> None:
        conversation.add_turn(request, answer)

    yield from _round(backend, conversation, snapshot, messages, conversation.last_answer, commit,
                      settings, stop, progress_interval)


def retry(backend, conversation: Conversation, settings: GenerationSettings | None = None,
          stop: threading.Event | None = None, progress_interval: float = PROGRESS_INTERVAL) -> Iterator[Event]:
    """Ask the last request again; on success its answer is replaced (a failed retry keeps the old one)."""
    if not conversation.turns:
        yield Failed("nothing to retry: the conversation has no turns")
        return
    _, messages = conversation.retry_request()
    snapshot = list(conversation.turns)
    previous = snapshot[-2].assistant if len(snapshot) > 1 else None
    yield from _round(backend, conversation, snapshot, messages, previous, conversation.replace_last_answer,
                      settings, stop, progress_interval)


def _round(backend, conversation: Conversation, snapshot: list, messages: list[dict], previous: str | None,
           commit: Callable[[str], None], settings: GenerationSettings | None, stop: threading.Event | None,
           progress_interval: float) -> Iterator[Event]:
    from lib_omost.canvas import CanvasError, IncrementalParser, parse_answer

    settings = settings or GenerationSettings()
    stop = stop or threading.Event()
    parts: list[str] = []
    try:
        warning = budget_warning(backend, messages, previous, settings)
        if warning:
            yield BudgetWarning(warning)
        parser, parse_failed = IncrementalParser(), False
        shown = (False, 0)  # (has a global description, regions) of the last CanvasUpdate
        tokens, start = 0, time.perf_counter()
        next_progress = start + progress_interval
        stream = backend.stream(messages, settings, stop)
        try:
            for event in stream:
                if isinstance(event, Finished):
                    finished = event
                    break
                parts.append(event.text)
                tokens = event.tokens
                yield event
                if not parse_failed:
                    try:
                        result = parser.feed(event.text)
                    except CanvasError:  # the answer is not a valid program: the final parse reports why
                        parse_failed = True
                    else:
                        state = _canvas_state(result)
                        if state != shown:
                            shown = state
                            yield CanvasUpdate(result, state[1])
                now = time.perf_counter()
                if now >= next_progress:
                    next_progress = now + progress_interval
                    yield Progress(tokens, now - start, shown[1])
            else:
                raise LLMError(f"{backend.describe()} ended the answer without finishing it")
        finally:
            stream.close()
    except LLMError as exc:
        yield Failed(str(exc))
        return
    text = "".join(parts)
    if conversation.turns != snapshot:
        yield Failed("the conversation was changed while the answer was generated; the answer was not kept")
        return
    result, parse_error = None, None
    try:
        result = parse_answer(text)
    except CanvasError as exc:
        parse_error = str(exc)
    commit(text)
    seconds = time.perf_counter() - start
    regions = len(result.canvas.regions) if result is not None and result.canvas is not None else 0
    yield Progress(finished.tokens, seconds, regions)
    yield Finished(finished.reason, text, finished.tokens, seconds, result, parse_error)


def _canvas_state(result) -> tuple[bool, int]:
    canvas = getattr(result, "canvas", None)
    if canvas is None:
        return False, 0
    return bool(canvas.global_region.description), len(canvas.regions)


def budget_warning(backend, messages: list[dict], previous_answer: str | None,
                   settings: GenerationSettings) -> str | None:
    """A warning when the next answer may not fit the model's context (None when it fits or is unknown)."""
    context = backend.context_length()
    if context is None:
        return None
    prompt_tokens, exact = backend.count_tokens(messages)
    previous = None
    if previous_answer is not None:
        previous, _ = backend.count_tokens([{"role": "assistant", "content": previous_answer}])
    return budget(prompt_tokens, exact, context, settings.max_new_tokens, previous).warning
