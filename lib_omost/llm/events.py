"""Generation settings, the errors, and the events a chat stream yields (shared by the CLI and the WebUI)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Union


DEFAULT_PROMPT_LOOKUP_TOKENS = 10
# The client-side cap on an answer's length: the canvas parser's own limit (parser.MAX_ANSWER_CHARS), so an
# answer cut here could not have been read as a canvas anyway; real Omost answers are 5,000-30,000 characters.
DEFAULT_MAX_ANSWER_CHARS = 1_000_000

# stop: the model ended the answer; length: max_new_tokens; stopped: the user's Stop; content_filter: the
# server's filter ended it; answer_cap: the client cut it at max_answer_chars (a server ignoring max_tokens)
FINISH_REASONS = ("stop", "length", "stopped", "content_filter", "answer_cap")


class LLMError(RuntimeError):
    """A backend could not produce an answer; the message says why and what to do (safe to show the user)."""


def _real(value) -> float:
    """`value` as a float; NaN (which fails every range check) when it is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class SamplingSetting:
    """One numeric LLM sampling setting, declared once: GenerationSettings' default and validation, the CLI's
    default and the WebUI control's range and default all come from here (``step`` is the control's)."""
    name: str
    label: str
    default: float
    minimum: float
    maximum: float
    step: float
    whole: bool = False
    note: str = ""                  # after the range in the message

    def problem(self, value) -> str | None:
        """Why ``value`` is not allowed (naming the setting and its range), or None."""
        if self.whole:
            if isinstance(value, bool) or not isinstance(value, int) or not self.minimum <= value <= self.maximum:
                return f"{self.name} must be an integer in [{self.minimum}, {self.maximum}], got {value!r}"
        elif not self.minimum <= _real(value) <= self.maximum:
            return f"{self.name} must be in [{self.minimum:g}, {self.maximum:g}]{self.note}, got {value!r}"
        return None


# Omost's own defaults (OMOST.md, "LLM chat"); ranges as the OpenAI API takes them.
TEMPERATURE = SamplingSetting("temperature", "Temperature (0 = greedy)", 0.6, 0.0, 2.0, 0.01, note=" (0 = greedy)")
TOP_P = SamplingSetting("top_p", "Top p", 0.9, 0.01, 1.0, 0.01)
MAX_NEW_TOKENS = SamplingSetting("max_new_tokens", "Max new tokens", 4096, 1, 32768, 1, whole=True)
SAMPLING_SETTINGS = (TEMPERATURE, TOP_P, MAX_NEW_TOKENS)
DEFAULT_TEMPERATURE, DEFAULT_TOP_P, DEFAULT_MAX_NEW_TOKENS = (s.default for s in SAMPLING_SETTINGS)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings. temperature 0 means greedy decoding.

    prompt_lookup: None = automatic (on where it is exact, i.e. greedy, or where the prompt holds a previous
    answer that a multi-round edit mostly copies); True/False force it. Only the local backend uses it.
    """

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int | None = None
    prompt_lookup: bool | None = None
    prompt_lookup_tokens: int = DEFAULT_PROMPT_LOOKUP_TOKENS
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS

    def __post_init__(self):
        for setting in SAMPLING_SETTINGS:
            problem = setting.problem(getattr(self, setting.name))
            if problem:
                raise ValueError(problem)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2 ** 63):
            raise ValueError(f"seed must be None or an integer in [0, 2**63), got {self.seed!r}")
        if self.prompt_lookup not in (None, True, False):
            raise ValueError(f"prompt_lookup must be None (auto), True or False, got {self.prompt_lookup!r}")
        if isinstance(self.prompt_lookup_tokens, bool) or not isinstance(self.prompt_lookup_tokens, int) \
                or self.prompt_lookup_tokens < 1:
            raise ValueError(f"prompt_lookup_tokens must be an integer >= 1, got {self.prompt_lookup_tokens!r}")
        if isinstance(self.max_answer_chars, bool) or not isinstance(self.max_answer_chars, int) \
                or self.max_answer_chars < 1:
            raise ValueError(f"max_answer_chars (the answer cap) must be an integer >= 1 (characters), "
                             f"got {self.max_answer_chars!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0

    def use_prompt_lookup(self, has_previous_answer: bool) -> bool:
        if self.prompt_lookup is not None:
            return self.prompt_lookup
        return self.greedy or has_previous_answer


@dataclass(slots=True)
class TextDelta:
    """New answer text; `tokens` is the number of tokens generated so far (exact or as counted by the server).
    The one per-token event: slotted and not frozen, which makes it four times cheaper to create."""

    text: str
    tokens: int


@dataclass(frozen=True)
class CanvasUpdate:
    """The canvas parsed from the answer so far (a canvas ParseResult); sent when it gained a call."""

    result: Any
    regions: int


@dataclass(frozen=True)
class Progress:
    tokens: int
    seconds: float
    regions: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BudgetWarning:
    """The conversation is close to (or over) the model's context; sent before generation starts."""

    message: str


@dataclass(frozen=True)
class Finished:
    """The answer ended; `reason` is one of FINISH_REASONS (`finish_note` says it in words).

    `result` is the final canvas ParseResult, or None with `parse_error` set when no canvas could be read.
    """

    reason: str
    text: str
    tokens: int
    seconds: float
    result: Any = None
    parse_error: str | None = None

    def __post_init__(self):
        if self.reason not in FINISH_REASONS:
            raise ValueError(f"finish reason must be one of {FINISH_REASONS}, got {self.reason!r}")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def finish_note(reason: str, settings: GenerationSettings) -> str | None:
    """Why an answer ended early, in words for the user (None when the model ended it or the user stopped)."""
    if reason == "length":
        return f"the answer was cut at max new tokens ({settings.max_new_tokens})"
    if reason == "content_filter":
        return "the server's content filter ended the answer (finish_reason content_filter)"
    if reason == "answer_cap":
        return (f"the answer reached the answer cap of {settings.max_answer_chars:,} characters and was cut "
                f"there (the server kept sending past max new tokens); the partial answer is kept")
    return None


@dataclass(frozen=True)
class Failed:
    """Generation failed; the conversation was left unchanged."""

    message: str


Event = Union[TextDelta, CanvasUpdate, Progress, BudgetWarning, Finished, Failed]


class Backend(Protocol):
    """What the chat loop needs from a backend (local transformers or an OpenAI-compatible server).

    stream() yields TextDelta events, then exactly one Finished (result None); it raises LLMError on failure.
    It must end soon after `stop` is set (from any thread) with reason "stopped".
    """

    def stream(self, messages: list[dict], settings: GenerationSettings,
               stop: threading.Event) -> Iterator[TextDelta | Finished]: ...

    def count_tokens(self, messages: list[dict]) -> tuple[int, bool]:
        """(token count of the prompt these messages make, True when exact / False when estimated)."""

    def context_length(self) -> int | None:
        """The model's context size in tokens, or None when unknown."""

    def describe(self) -> str:
        """A short human-readable name (never contains secrets)."""
