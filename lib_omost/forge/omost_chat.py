"""The Omost accordion's chat, as plain functions over a ChatSession (the Gradio handlers call these).

A ChatSession lives in the browser session's gr.State: the conversation and the stop flag of the answer
being streamed. Every handler returns the full visible state (chat pairs, canvas JSON, status line), so
the UI never shows a half-updated conversation; errors become the status line, never a traceback, and every
status line has the API key and the URL's credentials masked.

While an answer streams, the chat is updated at most every `update_interval` (the Chatbot takes the whole
text on each update, so updates are spaced by the answer's length): the work per token stays O(token).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field, fields

from lib_omost.canvas import CanvasError, canvas_to_json, load_canvas_text
from lib_omost.features.omost import FEATURE
from lib_omost.llm import (Conversation, EndpointConfig, Failed, Finished, GenerationSettings, LocalBackend,
                           LocalModelSpec, OpenAIBackend, Progress, TextDelta, CanvasUpdate, BudgetWarning,
                           ask, retry, system_prompt)
from lib_omost.llm.events import DEFAULT_MAX_ANSWER_CHARS, MAX_NEW_TOKENS, TEMPERATURE, TOP_P, finish_note
from lib_omost.llm.openai_compat import DEFAULT_READ_TIMEOUT
from lib_omost.llm.redaction import redact, shown_url, url_secrets

SERVER, LOCAL = "OpenAI-compatible server", "Local model (transformers)"
BACKENDS = (SERVER, LOCAL)
UPDATE_SECONDS = 0.1  # the chat shows new answer text at most this often ...
UPDATE_CHARS_PER_SECOND = 200_000  # ... and re-sends at most about this many characters a second
_log = logging.getLogger("sd-forge-omost")


def update_interval(shown_chars: int) -> float:
    """Seconds between two chat updates while `shown_chars` characters are shown: each update re-sends the
    whole answer, so updates are spaced by its length; the work per second stays bounded however long the
    answer grows."""
    return max(UPDATE_SECONDS, shown_chars / UPDATE_CHARS_PER_SECOND)


def ui_number(value, label: str, whole: bool = False) -> float | int:
    """A number from a UI control or a setting; a ValueError naming the control and what it takes otherwise."""
    kind = "a whole number" if whole else "a number"
    try:
        number = float(value) if not isinstance(value, bool) and value not in (None, "") else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise ValueError(f"{label} must be {kind}, got {value!r}")
    return int(number) if whole else number


def canvas_json_text(canvas) -> str:
    """The canvas as the accordion's JSON box shows it (the editor writes the same indented form)."""
    return json.dumps(canvas_to_json(canvas), ensure_ascii=False, indent=2)


def example_json_text() -> str:
    return FEATURE.by_name["canvas"].default


@dataclass
class LLMChoice:
    """The LLM settings of the accordion (never written to images; the API key is held as a Secret)."""
    backend: str = SERVER
    endpoint: str = ""
    model: str = ""
    api_key: str = ""
    local_model: str = ""
    trust_remote_code: bool = False
    temperature: float = TEMPERATURE.default
    top_p: float = TOP_P.default
    max_new_tokens: int = MAX_NEW_TOKENS.default
    seed: int = -1
    read_timeout: float = DEFAULT_READ_TIMEOUT  # Settings → Omost
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS  # Settings → Omost

    def make_backend(self):
        if self.backend == SERVER:
            if not self.endpoint.strip():
                raise ValueError("set the server URL (e.g. http://127.0.0.1:8080/v1) in LLM settings")
            return OpenAIBackend(EndpointConfig(
                self.endpoint.strip(), model=self.model.strip() or None, api_key=self.api_key,
                read_timeout=ui_number(self.read_timeout, "the read timeout (Settings → Omost, seconds)")))
        if self.backend == LOCAL:
            return LocalBackend(LocalModelSpec(self.local_model.strip(), trust_remote_code=self.trust_remote_code))
        raise ValueError(f"unknown LLM backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def settings(self) -> GenerationSettings:
        seed = -1 if self.seed in (None, "") else ui_number(self.seed, "LLM seed (-1 = random)", whole=True)
        return GenerationSettings(
            temperature=ui_number(self.temperature, "temperature"), top_p=ui_number(self.top_p, "top p"),
            max_new_tokens=ui_number(self.max_new_tokens, "max new tokens", whole=True),
            seed=None if seed < 0 else seed,
            max_answer_chars=ui_number(self.max_answer_chars, "the answer cap (Settings → Omost, characters)",
                                       whole=True))

    def __repr__(self) -> str:
        """Every field but the API key, the server URL's credentials masked."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}
        shown["endpoint"] = shown_url(str(self.endpoint))
        return "LLMChoice(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"

    def secrets(self) -> tuple[str, ...]:
        """What no status line may show: the API key and the server URL's credentials."""
        key = str(self.api_key or "").strip()
        return ((key,) if key else ()) + url_secrets(str(self.endpoint or "").strip())


@dataclass
class ChatSession:
    system: str
    conversation: Conversation = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.conversation = Conversation(self.system)

    def pairs(self, pending: tuple[str, str] | None = None) -> list[list[str]]:
        out = [[turn.user, turn.assistant] for turn in self.conversation.turns]
        return out + ([list(pending)] if pending else [])


def new_session(prompt_text: str = "", prompt_kind: str = "omost") -> ChatSession:
    return ChatSession(system_prompt(prompt_kind, text=prompt_text if prompt_text.strip() else None))


def _status(event, settings: GenerationSettings | None = None) -> str:
    if isinstance(event, Progress):
        return f"{event.tokens} tokens, {event.tokens_per_second:.1f} tokens/s, {event.regions} regions so far"
    if isinstance(event, Finished):
        how = "stopped" if event.reason == "stopped" else "done"
        note = finish_note(event.reason, settings or GenerationSettings())
        how = f"{how} ({note})" if note else how
        regions = f", {len(event.result.canvas.regions)} regions" if event.result is not None else ""
        problem = f" — no canvas could be read: {event.parse_error}" if event.parse_error else ""
        return f"{how}: {event.tokens} tokens in {event.seconds:.1f} s ({event.tokens_per_second:.1f}/s){regions}{problem}"
    return ""


def stream_answer(session: ChatSession, llm: LLMChoice, request: str | None, canvas_text: str,
                  clock=time.monotonic):
    """Yield (pairs, canvas JSON text, status) while an answer streams. ``request`` None = retry."""
    session.stop.clear()
    secrets = llm.secrets()
    try:
        backend = llm.make_backend()
        settings = llm.settings()
    except (ValueError, TypeError) as e:
        yield session.pairs(), canvas_text, redact(f"LLM settings: {e}", secrets)
        return
    if request is None:
        if not session.conversation.turns:
            yield session.pairs(), canvas_text, "nothing to retry: send a request first"
            return
        shown = session.conversation.turns[-1].user
        events = retry(backend, session.conversation, settings, session.stop)
    else:
        shown = request
        events = ask(backend, session.conversation, request, settings, session.stop)
    yield session.pairs((shown, "")), canvas_text, "waiting for the model..."
    try:
        yield from _streamed(session, events, shown, canvas_text, settings, secrets, clock)
    except Exception as exc:  # noqa: BLE001 - a bug must not leave the chat on "waiting for the model..."
        _log.error(redact("the Omost chat failed:\n" + "".join(traceback.format_exception(exc)), secrets))
        yield session.pairs(), canvas_text, redact(f"the chat failed unexpectedly: {type(exc).__name__}: {exc} "
                                                   f"(details in the console)", secrets)


def _streamed(session: ChatSession, events, shown: str, canvas_text: str, settings: GenerationSettings,
              secrets: tuple[str, ...], clock):
    """The chat states of one answer's events, at most one per `update_interval` (and the final one)."""
    parts: list[str] = []
    length, status, canvas = 0, "waiting for the model...", None
    last = clock()
    for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
            length += len(event.text)
        elif isinstance(event, CanvasUpdate):
            canvas = event.result.canvas
        elif isinstance(event, (BudgetWarning, Progress)):
            status = event.message if isinstance(event, BudgetWarning) else _status(event)
        elif isinstance(event, Finished):
            if event.result is not None:
                canvas_text = canvas_json_text(event.result.canvas)
            yield session.pairs(), canvas_text, redact(_status(event, settings), secrets)
            return
        elif isinstance(event, Failed):
            yield (session.pairs(), canvas_text,
                   redact(f"the LLM failed: {event.message} (the conversation is unchanged)", secrets))
            return
        now = clock()
        if now - last >= update_interval(length) or isinstance(event, BudgetWarning):
            if canvas is not None:
                canvas_text, canvas = canvas_json_text(canvas), None
            parts = ["".join(parts)]
            yield session.pairs((shown, parts[0])), canvas_text, status
            last = now


def undo(session: ChatSession, canvas_text: str):
    """Remove the last turn; the canvas goes back to the previous answer's (or stays when none is left)."""
    if not session.conversation.turns:
        return session.pairs(), canvas_text, "nothing to undo"
    session.conversation.undo()
    previous = session.conversation.last_answer
    if previous is not None:
        try:
            canvas_text = canvas_json_text(load_canvas_text(previous).canvas)
        except CanvasError:
            pass
    return session.pairs(), canvas_text, "the last turn was removed"


def clear(session: ChatSession):
    session.conversation.clear()
    return session.pairs(), "the conversation was cleared (the canvas is kept)"


def canvas_to_chat(session: ChatSession, canvas_text: str):
    """Make the edited canvas the LLM's last answer, so the next request edits it."""
    try:
        canvas = load_canvas_text(canvas_text).canvas
    except CanvasError as e:
        return session.pairs(), f"the canvas has an error, nothing was sent: {e}"
    session.conversation.replace_last_answer_with_canvas(canvas)
    return session.pairs(), "the edited canvas is now the LLM's last answer: the next request starts from it"
