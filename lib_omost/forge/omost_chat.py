"""The Omost accordion's chat, as plain functions over a ChatSession (the Gradio handlers call these).

A ChatSession lives in the browser session's gr.State: the conversation and the stop flag of the answer
being streamed. Every handler returns the full visible state (chat pairs, canvas JSON, status line), so
the UI never shows a half-updated conversation; errors become the status line, never a traceback.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from lib_omost.canvas import CanvasError, canvas_to_json, load_canvas_text
from lib_omost.features.omost import FEATURE
from lib_omost.llm import (Conversation, EndpointConfig, Failed, Finished, GenerationSettings, LocalBackend,
                           LocalModelSpec, OpenAIBackend, Progress, TextDelta, CanvasUpdate, BudgetWarning,
                           ask, retry, system_prompt)

SERVER, LOCAL = "OpenAI-compatible server", "Local model (transformers)"
BACKENDS = (SERVER, LOCAL)


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
    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 4096
    seed: int = -1

    def make_backend(self):
        if self.backend == SERVER:
            if not self.endpoint.strip():
                raise ValueError("set the server URL (e.g. http://127.0.0.1:8080/v1) in LLM settings")
            return OpenAIBackend(EndpointConfig(self.endpoint.strip(), model=self.model.strip() or None,
                                                api_key=self.api_key))
        if self.backend == LOCAL:
            return LocalBackend(LocalModelSpec(self.local_model.strip(), trust_remote_code=self.trust_remote_code))
        raise ValueError(f"unknown LLM backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    def settings(self) -> GenerationSettings:
        seed = int(self.seed)
        return GenerationSettings(temperature=float(self.temperature), top_p=float(self.top_p),
                                  max_new_tokens=int(self.max_new_tokens), seed=None if seed < 0 else seed)


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


def _status(event) -> str:
    if isinstance(event, Progress):
        return f"{event.tokens} tokens, {event.tokens_per_second:.1f} tokens/s, {event.regions} regions so far"
    if isinstance(event, Finished):
        how = {"stop": "done", "length": "cut at max new tokens", "stopped": "stopped"}[event.reason]
        regions = f", {len(event.result.canvas.regions)} regions" if event.result is not None else ""
        problem = f" — no canvas could be read: {event.parse_error}" if event.parse_error else ""
        return f"{how}: {event.tokens} tokens in {event.seconds:.1f} s ({event.tokens_per_second:.1f}/s){regions}{problem}"
    return ""


def stream_answer(session: ChatSession, llm: LLMChoice, request: str | None, canvas_text: str):
    """Yield (pairs, canvas JSON text, status) while an answer streams. ``request`` None = retry."""
    session.stop.clear()
    try:
        backend = llm.make_backend()
        settings = llm.settings()
    except (ValueError, TypeError) as e:
        yield session.pairs(), canvas_text, f"LLM settings: {e}"
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
    text, status = "", "waiting for the model..."
    yield session.pairs((shown, "")), canvas_text, status
    for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, CanvasUpdate):
            canvas_text = canvas_json_text(event.result.canvas)
        elif isinstance(event, BudgetWarning):
            status = event.message
        elif isinstance(event, Progress):
            status = _status(event)
        elif isinstance(event, Finished):
            if event.result is not None:
                canvas_text = canvas_json_text(event.result.canvas)
            yield session.pairs(), canvas_text, _status(event)
            return
        elif isinstance(event, Failed):
            yield session.pairs(), canvas_text, f"the LLM failed: {event.message} (the conversation is unchanged)"
            return
        yield session.pairs((shown, text)), canvas_text, status


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
