"""A chat: one system prompt and alternating user/assistant turns, with the edits the Omost UI offers.

Multi-round editing works by feeding the whole history back: the previous answer holds the full program,
and the model re-emits it with the requested changes. Replacing the last answer with the code of a canvas
that the user edited by hand makes the next LLM edit start from the user's edits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Without the model's tokenizer, token counts are estimated. Omost answers are Python source with English
# strings: about 7,000 characters make 2,000 Llama-3 tokens (OMOST.md), i.e. 3.5 characters per token.
CHARS_PER_TOKEN = 3.5
# Chat templates add a few marker tokens around each message.
TOKENS_PER_MESSAGE = 4
# The expected length of a first answer when there is no previous answer to measure (OMOST.md: ~2 k tokens).
TYPICAL_ANSWER_TOKENS = 2048


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str


@dataclass
class Conversation:
    system_prompt: str
    turns: list[Turn] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.system_prompt, str) or not self.system_prompt.strip():
            raise ValueError("the system prompt must be a non-empty string")

    def messages(self, next_user: str | None = None) -> list[dict]:
        """The chat messages for the model: system, every turn, then `next_user` (the request being sent)."""
        out = [{"role": "system", "content": self.system_prompt}]
        for turn in self.turns:
            out.append({"role": "user", "content": turn.user})
            out.append({"role": "assistant", "content": turn.assistant})
        if next_user is not None:
            out.append({"role": "user", "content": next_user})
        return out

    @property
    def last_answer(self) -> str | None:
        return self.turns[-1].assistant if self.turns else None

    def add_turn(self, user: str, assistant: str) -> None:
        self.turns.append(Turn(_check_text("user message", user), assistant))

    def undo(self) -> Turn:
        """Remove and return the last turn (its request and answer)."""
        if not self.turns:
            raise ValueError("nothing to undo: the conversation has no turns")
        return self.turns.pop()

    def clear(self) -> None:
        self.turns.clear()

    def retry_request(self) -> tuple[str, list[dict]]:
        """For "retry": the last request and the messages that re-ask it (the last turn left out).

        The conversation itself is not changed here; `replace_last_answer` stores the new answer on success.
        """
        if not self.turns:
            raise ValueError("nothing to retry: the conversation has no turns")
        last = self.turns[-1]
        before = Conversation(self.system_prompt, self.turns[:-1])
        return last.user, before.messages(last.user)

    def replace_last_answer(self, assistant: str) -> None:
        if not self.turns:
            raise ValueError("no answer to replace: the conversation has no turns")
        self.turns[-1] = Turn(self.turns[-1].user, assistant)

    def replace_last_answer_with_canvas(self, canvas) -> None:
        """Make the user's edited canvas the last answer, so the next edit starts from it.

        With no turns yet (a canvas loaded from a file or an image), a turn is added whose request is the
        canvas's global description: the request an Omost model answers with such a canvas.
        """
        answer = canvas_answer(canvas)
        if self.turns:
            self.replace_last_answer(answer)
        else:
            description = canvas.global_region.description.strip() or "An image."
            self.add_turn(description, answer)

    def estimated_tokens(self, next_user: str | None = None) -> int:
        """Approximate prompt size in tokens when no tokenizer is at hand (see CHARS_PER_TOKEN)."""
        return estimate_tokens(self.messages(next_user))


def _check_text(what: str, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the {what} must be a non-empty string")
    return text


def canvas_answer(canvas) -> str:
    """An assistant answer holding the canvas as one fenced python block (the form the models write)."""
    from lib_omost.canvas import canvas_to_code
    code = canvas_to_code(canvas)
    if not code.endswith("\n"):
        code += "\n"
    return "```python\n" + code + "```"


def estimate_text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_tokens(messages: list[dict]) -> int:
    return sum(TOKENS_PER_MESSAGE + estimate_text_tokens(m["content"]) for m in messages)


@dataclass(frozen=True)
class Budget:
    """How the next request fits the model's context.

    expected_answer: the previous answer's length (an edit re-emits the program) or TYPICAL_ANSWER_TOKENS for
    a first answer, capped at max_new_tokens.
    """

    prompt_tokens: int
    exact: bool
    expected_answer: int
    context_length: int | None

    @property
    def room(self) -> int | None:
        return None if self.context_length is None else self.context_length - self.prompt_tokens

    @property
    def warning(self) -> str | None:
        if self.context_length is None:
            return None
        how = "" if self.exact else " (estimated at 3.5 characters per token: no tokenizer for this model)"
        size = f"the conversation is {'about ' if not self.exact else ''}{self.prompt_tokens} tokens{how}"
        if self.room <= 0:
            return (f"{size}, more than the model's context of {self.context_length} tokens: the request "
                    f"does not fit; undo older turns or clear the chat")
        if self.room < self.expected_answer:
            return (f"{size}; the model's context of {self.context_length} tokens leaves room for {self.room} "
                    f"more, fewer than the ~{self.expected_answer} an answer needs: the answer may be cut; "
                    f"undo older turns or clear the chat")
        return None


def budget(prompt_tokens: int, exact: bool, context_length: int | None, max_new_tokens: int,
           previous_answer_tokens: int | None) -> Budget:
    expected = TYPICAL_ANSWER_TOKENS if previous_answer_tokens is None else previous_answer_tokens
    return Budget(prompt_tokens, exact, min(max_new_tokens, expected), context_length)
