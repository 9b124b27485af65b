"""One chat round as an iterator of events: the loop the CLI and the WebUI accordion both run.

    for event in ask(backend, conversation, "a dragon over a castle", settings, stop):
        ...  # TextDelta, CanvasUpdate, Progress, BudgetWarning, then Finished or Failed

The answer is parsed while it streams (the canvas grows call by call). On Finished the conversation holds the
new turn (also for "length", "stopped" and "answer_cap", so the partial canvas can be kept, undone or
retried); on Failed it is left exactly as it was. `stop` (a threading.Event) may be set from any thread.

The backend runs on a worker thread and this loop waits for its events at most POLL_SECONDS at a time, so
Stop ends the answer at once, keeping what has arrived, even while the backend waits for a silent server
(the worker ends at the backend's next read or at its read timeout). The answer is capped at
settings.max_answer_chars characters: a server that ignores max_tokens cannot grow it without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from lib_omost.llm.conversation import Conversation, budget
from lib_omost.llm.events import (BudgetWarning, CanvasUpdate, Event, Failed, Finished, GenerationSettings,
                                  LLMError, Progress, TextDelta)

PROGRESS_INTERVAL = 0.5  # seconds between Progress events (also while the backend is silent)
POLL_SECONDS = 0.1  # how long the loop waits for the backend before it looks at Stop again
QUEUE_EVENTS = 256  # events the backend may run ahead of the loop


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
    halt = _StopOrHalt(stop)
    answer = _Answer(settings.max_answer_chars)
    parser, parse_failed = IncrementalParser(), False
    shown = (False, 0)  # (has a global description, regions) of the last CanvasUpdate
    tokens, start = 0, time.perf_counter()
    next_progress = start + progress_interval
    worker = _Worker(lambda: _backend_events(backend, messages, previous, settings, halt), halt)
    finished = None
    try:
        for item in worker.items(stop):
            if item is _STOPPED:
                finished = Finished("stopped", "", tokens, time.perf_counter() - start)
                break
            if isinstance(item, Finished):
                finished = item
                break
            if isinstance(item, BudgetWarning):
                yield item
                continue
            if item is not _IDLE:
                text, capped = answer.add(item.text)
                tokens = item.tokens
                if text:
                    yield TextDelta(text, tokens) if capped else item
                if text and not parse_failed:
                    try:
                        result = parser.feed(text)
                    except CanvasError:  # the answer is not a valid program: the final parse reports why
                        parse_failed = True
                    else:
                        state = _canvas_state(result)
                        if state != shown:
                            shown = state
                            yield CanvasUpdate(result, state[1])
                if capped:
                    finished = Finished("answer_cap", "", tokens, time.perf_counter() - start)
                    break
            now = time.perf_counter()
            if tokens and now >= next_progress:
                next_progress = now + progress_interval
                yield Progress(tokens, now - start, shown[1])
        else:
            raise LLMError(f"{backend.describe()} ended the answer without finishing it")
    except LLMError as exc:
        yield Failed(str(exc))
        return
    finally:
        halt.set()  # the backend ends at its next check (it may still be waiting for a silent server)
    text = answer.text()
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


def _backend_events(backend, messages: list[dict], previous: str | None, settings: GenerationSettings,
                    stop: threading.Event) -> Iterator[BudgetWarning | TextDelta | Finished]:
    """What the worker thread runs: the budget check (it may ask the server), then the backend's stream."""
    warning = budget_warning(backend, messages, previous, settings)
    if warning:
        yield BudgetWarning(warning)
    yield from backend.stream(messages, settings, stop)


@dataclass
class _Answer:
    """The answer's text so far, capped at `cap` characters."""

    cap: int
    parts: list[str] = field(default_factory=list)
    length: int = 0

    def add(self, text: str) -> tuple[str, bool]:
        """The part of `text` within the cap (kept), and whether the cap cut it."""
        room = self.cap - self.length
        capped = len(text) > room
        if capped:
            text = text[:room]
        self.parts.append(text)
        self.length += len(text)
        return text, capped

    def text(self) -> str:
        return "".join(self.parts)


class _StopOrHalt(threading.Event):
    """The flag the backend watches: set by the user's Stop, or by the chat loop itself (the answer cap, the
    caller gone). Backends poll `is_set()`."""

    def __init__(self, user_stop: threading.Event):
        super().__init__()
        self._user_stop = user_stop

    def is_set(self) -> bool:
        return self._user_stop.is_set() or super().is_set()


_IDLE, _STOPPED, _END = object(), object(), object()


@dataclass(frozen=True)
class _Raised:
    error: Exception


class _Worker:
    """Runs an iterator of events on a daemon thread and hands them over a bounded queue, so the chat loop can
    wait for them without ever blocking Stop (a backend may sit in a read for its whole read timeout)."""

    def __init__(self, events: Callable[[], Iterator], halt: threading.Event):
        self._queue: queue.Queue = queue.Queue(QUEUE_EVENTS)
        self._halt = halt
        threading.Thread(target=self._run, args=(events,), daemon=True, name="omost-llm-answer").start()

    def _run(self, events: Callable[[], Iterator]) -> None:
        try:
            iterator = events()
            try:
                for item in iterator:
                    if not self._put(item):
                        return
            finally:
                iterator.close()
        except Exception as exc:  # noqa: BLE001 - handed to the chat loop, which raises it there
            self._put(_Raised(exc))
            return
        self._put(_END)

    def _put(self, item) -> bool:
        """Queue `item`; False when the chat loop has gone (halted) and the queue stays full."""
        while True:
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                if self._halt.is_set():
                    return False

    def items(self, stop: threading.Event) -> Iterator:
        """The worker's events as they come; _IDLE when none came for POLL_SECONDS. After the user's Stop:
        the events already queued, then _STOPPED, without waiting for the backend."""
        while True:
            if stop.is_set():
                yield from self._queued()
                yield _STOPPED
                return
            try:
                item = self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                yield _IDLE
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    def _queued(self) -> Iterator:
        """The events queued now (an error or the end after Stop no longer matters: the answer is kept)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _END and not isinstance(item, _Raised):
                yield item


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
