"""System prompts, the conversation (undo, retry, edited canvas, token budget) and the chat event loop."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from lib_omost.canvas import AREAS, LOCATIONS, OFFSETS, example_canvas, parse_answer, rect_from_location
from lib_omost.llm.chat import ask, retry
from lib_omost.llm.conversation import (CHARS_PER_TOKEN, TOKENS_PER_MESSAGE, Conversation, Turn, budget,
                                        canvas_answer, estimate_tokens)
from lib_omost.llm.events import (BudgetWarning, CanvasUpdate, Failed, Finished, GenerationSettings, LLMError,
                                  Progress, TextDelta)
from lib_omost.llm.prompts import (GENERIC_EXAMPLE_ANSWER, generic_system_prompt, omost_system_prompt,
                                   system_prompt)


def sample_answer() -> str:
    """A realistic answer: the built-in example canvas as the program an Omost model writes, with prose."""
    return "Here is the composition.\n\n" + canvas_answer(example_canvas()) + "\n"


# ---- system prompts ---------------------------------------------------------------------------------

def _code_block(text: str) -> str:
    start = text.index("```python\n") + len("```python\n")
    return text[start:text.index("```", start)]


def _canvas_class(prompt: str) -> ast.ClassDef:
    (cls,) = ast.parse(_code_block(prompt)).body
    assert isinstance(cls, ast.ClassDef) and cls.name == "Canvas"
    return cls


def test_omost_prompt_has_the_trained_form():
    prompt = omost_system_prompt()
    sentence, rest = prompt.split("\n", 1)
    assert "Canvas" in sentence and sentence.count(".") <= 1
    assert rest.strip().startswith("```python\n") and rest.strip().endswith("```")
    cls = _canvas_class(prompt)
    methods = {f.name: f for f in cls.body}
    assert list(methods) == ["set_global_description", "add_local_description"]
    signature = {name: [(a.arg, ast.unparse(a.annotation) if a.annotation else None) for a in f.args.args]
                 for name, f in methods.items()}
    assert signature["set_global_description"] == [
        ("self", None), ("description", "str"), ("detailed_descriptions", "list[str]"), ("tags", "str"),
        ("HTML_web_color_name", "str")]
    assert signature["add_local_description"] == [
        ("self", None), ("location", "str"), ("offset", "str"), ("area", "str"), ("distance_to_viewer", "float"),
        ("description", "str"), ("detailed_descriptions", "list[str]"), ("tags", "str"), ("atmosphere", "str"),
        ("style", "str"), ("quality_meta", "str"), ("HTML_web_color_name", "str")]
    assert [type(s) for s in methods["set_global_description"].body] == [ast.Pass]
    body = methods["add_local_description"].body
    assert [type(s) for s in body] == [ast.Assert] * 4 + [ast.Pass]
    allowed = {}
    for statement in body[:3]:
        test = statement.test
        assert isinstance(test.ops[0], ast.In)
        allowed[test.left.id] = ast.literal_eval(test.comparators[0])
    assert allowed == {"location": list(LOCATIONS), "offset": list(OFFSETS), "area": list(AREAS)}
    assert ast.unparse(body[3].test) == "distance_to_viewer > 0"


def test_generic_prompt_has_the_class_and_a_valid_example():
    prompt = generic_system_prompt()
    assert ast.dump(_canvas_class(prompt)) == ast.dump(_canvas_class(omost_system_prompt()))
    assert prompt.endswith(GENERIC_EXAMPLE_ANSWER)
    result = parse_answer(GENERIC_EXAMPLE_ANSWER)
    assert result.notes == [] and not result.truncated
    canvas = result.canvas
    assert canvas.global_region.description == "A red fox resting in a snowy forest at sunrise."
    assert [r.rect for r in canvas.regions] == [rect_from_location(r.location, r.offset, r.area)
                                               for r in canvas.regions]
    assert [r.distance for r in canvas.regions] == [20.0, 10.0, 3.0]


def test_system_prompt_override(tmp_path):
    assert system_prompt() == omost_system_prompt()
    assert system_prompt("generic") == generic_system_prompt()
    assert system_prompt(text="Be brief.") == "Be brief."
    path = tmp_path / "prompt.txt"
    path.write_text("From a file.\n", encoding="utf-8")
    assert system_prompt(path=path) == "From a file.\n"
    with pytest.raises(ValueError, match="not both"):
        system_prompt(text="a", path=path)
    with pytest.raises(ValueError, match="empty"):
        system_prompt(text="  ")
    with pytest.raises(ValueError, match="cannot read the system prompt file"):
        system_prompt(path=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unknown system prompt kind 'x'"):
        system_prompt("x")


# ---- conversation -----------------------------------------------------------------------------------

def test_messages_undo_clear_retry():
    conversation = Conversation("SYS")
    conversation.add_turn("q1", "a1")
    conversation.add_turn("q2", "a2")
    assert conversation.messages("q3") == [
        {"role": "system", "content": "SYS"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert conversation.retry_request() == ("q2", conversation.messages()[:-1])
    assert conversation.turns == [Turn("q1", "a1"), Turn("q2", "a2")]  # retry_request changes nothing
    assert conversation.undo() == Turn("q2", "a2") and conversation.last_answer == "a1"
    conversation.clear()
    assert conversation.turns == [] and conversation.last_answer is None
    for action in (conversation.undo, conversation.retry_request, lambda: conversation.replace_last_answer("x")):
        with pytest.raises(ValueError, match="no turns"):
            action()
    with pytest.raises(ValueError, match="user message"):
        conversation.add_turn("  ", "a")
    with pytest.raises(ValueError, match="system prompt"):
        Conversation("")


def test_replace_last_answer_with_an_edited_canvas():
    canvas = parse_answer(GENERIC_EXAMPLE_ANSWER).canvas
    fox = canvas.regions[2]  # the user moves the fox and renames it in the canvas editor
    fox.location, fox.offset, fox.area = "on the bottom-left", "no offset", "a small square area"
    fox.rect = rect_from_location(fox.location, fox.offset, fox.area)
    fox.description = "A sleeping red fox."
    conversation = Conversation("SYS")
    conversation.add_turn("a fox", "an older answer")
    conversation.replace_last_answer_with_canvas(canvas)
    answer = conversation.last_answer
    assert answer.startswith("```python\n") and answer.endswith("\n```")
    assert parse_answer(answer).canvas == canvas
    assert conversation.turns[0].user == "a fox"

    empty = Conversation("SYS")
    empty.replace_last_answer_with_canvas(canvas)
    assert empty.turns == [Turn(canvas.global_region.description, canvas_answer(canvas))]


def test_token_estimate_and_budget():
    messages = [{"role": "system", "content": "x" * 7}, {"role": "user", "content": "y" * 8}]
    assert CHARS_PER_TOKEN == 3.5
    assert estimate_tokens(messages) == (TOKENS_PER_MESSAGE + 2) + (TOKENS_PER_MESSAGE + 3)
    assert budget(1000, True, None, 4096, None).warning is None  # unknown context: no warning
    assert budget(1000, True, 8192, 4096, None).warning is None  # 7192 left >= 2048 expected
    fits = budget(5000, True, 8192, 4096, 3000)
    assert fits.room == 3192 and fits.expected_answer == 3000 and fits.warning is None
    tight = budget(6000, False, 8192, 4096, 2500)
    assert tight.room == 2192 and "may be cut" in tight.warning and "about 6000 tokens" in tight.warning
    assert "estimated at 3.5 characters per token" in tight.warning
    over = budget(9000, True, 8192, 4096, None)
    assert "does not fit" in over.warning and "estimated" not in over.warning
    assert budget(7000, True, 8192, 100, 2500).warning is None  # capped at max_new_tokens


# ---- the chat loop ------------------------------------------------------------------------------------

class ScriptedBackend:
    """A backend that streams a fixed answer in pieces and records what it was sent."""

    def __init__(self, answer: str, piece: int = 40, context: int | None = 8192, fail_after: int | None = None):
        self.answer, self.piece, self.context, self.fail_after = answer, piece, context, fail_after
        self.sent: list[list[dict]] = []
        self.on_piece = None

    def describe(self):
        return "scripted"

    def count_tokens(self, messages):
        return estimate_tokens(messages), False

    def context_length(self):
        return self.context

    def stream(self, messages, settings, stop):
        self.sent.append(messages)
        pieces = [self.answer[i:i + self.piece] for i in range(0, len(self.answer), self.piece)]
        for n, text in enumerate(pieces, 1):
            if self.fail_after is not None and n > self.fail_after:
                raise LLMError("the scripted server went away")
            if stop.is_set():
                yield Finished("stopped", "", n - 1, 0.1)
                return
            yield TextDelta(text, n)
            if self.on_piece:
                self.on_piece(n)
        yield Finished("stop", "", len(pieces), 0.1)


def test_a_round_streams_the_canvas_and_commits_the_turn():
    answer = sample_answer()
    backend = ScriptedBackend(answer)
    conversation = Conversation(omost_system_prompt())
    events = list(ask(backend, conversation, "a cat and a dog on a sofa", progress_interval=0.0))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(e.text for e in deltas) == answer
    updates = [e for e in events if isinstance(e, CanvasUpdate)]
    final = parse_answer(answer).canvas
    assert [u.regions for u in updates] == list(range(len(final.regions) + 1))
    assert updates[-1].result.canvas == final
    assert all(isinstance(e, Progress) for e in events if not isinstance(e, (TextDelta, CanvasUpdate, Finished)))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stop" and finished.text == answer
    assert finished.result.canvas == final and finished.parse_error is None
    assert conversation.turns == [Turn("a cat and a dog on a sofa", answer)]
    assert backend.sent == [[{"role": "system", "content": omost_system_prompt()},
                             {"role": "user", "content": "a cat and a dog on a sofa"}]]


def test_multi_round_edit_sends_the_previous_program_and_the_users_edit():
    answer = sample_answer()
    backend = ScriptedBackend(answer)
    conversation = Conversation("SYS")
    list(ask(backend, conversation, "a cat and a dog on a sofa"))
    edited = parse_answer(answer).canvas
    edited.regions[0].description = "A small band of archers."
    conversation.replace_last_answer_with_canvas(edited)
    list(ask(backend, conversation, "make the sofa red"))
    sent = backend.sent[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == canvas_answer(edited) and "A small band of archers." in sent[2]["content"]
    assert sent[3]["content"] == "make the sofa red"
    assert [t.user for t in conversation.turns] == ["a cat and a dog on a sofa", "make the sofa red"]


def test_retry_replaces_only_the_last_answer():
    conversation = Conversation("SYS")
    conversation.add_turn("q1", "a1")
    conversation.add_turn("q2", "a2")
    backend = ScriptedBackend("```python\ncanvas = Canvas()\n```")
    events = list(retry(backend, conversation))
    assert isinstance(events[-1], Finished)
    assert backend.sent == [Conversation("SYS", [Turn("q1", "a1")]).messages("q2")]
    assert conversation.turns == [Turn("q1", "a1"), Turn("q2", "```python\ncanvas = Canvas()\n```")]
    assert isinstance(list(retry(backend, Conversation("SYS")))[-1], Failed)


def test_failure_midway_leaves_the_conversation_unchanged():
    conversation = Conversation("SYS")
    conversation.add_turn("q1", "a1")
    backend = ScriptedBackend(sample_answer(), fail_after=3)
    for events in (ask(backend, conversation, "q2"), retry(backend, conversation)):
        events = list(events)
        assert sum(isinstance(e, TextDelta) for e in events) == 3
        assert isinstance(events[-1], Failed) and events[-1].message == "the scripted server went away"
        assert conversation.turns == [Turn("q1", "a1")]
    assert isinstance(list(ask(backend, conversation, "   "))[-1], Failed)


def test_stop_keeps_the_partial_answer_and_its_canvas():
    answer = sample_answer()
    backend = ScriptedBackend(answer, piece=100)
    stop = threading.Event()
    backend.on_piece = lambda n: n == 20 and threading.Thread(target=stop.set).start()
    conversation = Conversation("SYS")
    events = list(ask(backend, conversation, "a cat and a dog on a sofa", stop=stop))
    finished = events[-1]
    assert finished.reason == "stopped" and 20 <= finished.tokens < len(answer) / 100
    assert answer.startswith(finished.text) and len(finished.text) < len(answer)
    assert finished.result.truncated and conversation.last_answer == finished.text
    complete = parse_answer(answer).canvas.regions
    assert finished.result.canvas.regions == complete[:len(finished.result.canvas.regions)]


def test_not_a_canvas_is_kept_with_a_parse_error():
    conversation = Conversation("SYS")
    events = list(ask(ScriptedBackend("```python\nimport os\n```"), conversation, "hi"))
    assert events[-1].result is None and "import" in events[-1].parse_error
    assert conversation.last_answer == "```python\nimport os\n```"


def test_budget_warning_before_generation():
    conversation = Conversation("S" * 35_000)  # ~10,000 estimated tokens
    events = list(ask(ScriptedBackend("ok", context=8192), conversation, "more"))
    assert isinstance(events[0], BudgetWarning) and "does not fit" in events[0].message
    assert "estimated" in events[0].message
    assert not any(isinstance(e, BudgetWarning) for e in ask(ScriptedBackend("ok"), Conversation("S"), "x"))


def test_a_conversation_changed_during_generation_is_not_overwritten():
    conversation = Conversation("SYS")
    conversation.add_turn("q1", "a1")
    backend = ScriptedBackend("x" * 100, piece=10)
    backend.on_piece = lambda n: n == 2 and conversation.clear()
    events = list(ask(backend, conversation, "q2"))
    assert isinstance(events[-1], Failed) and "changed while" in events[-1].message
    assert conversation.turns == []


def test_settings_defaults_are_omosts():
    s = GenerationSettings()
    assert (s.temperature, s.top_p, s.max_new_tokens, s.seed, s.prompt_lookup) == (0.6, 0.9, 4096, None, None)


def test_the_package_imports_without_transformers_httpx_or_bitsandbytes():
    import subprocess
    import sys

    code = ("import sys, lib_omost.llm, lib_omost.llm.cli; "
            "print(sorted(m for m in ('transformers', 'httpx', 'bitsandbytes', 'gradio') if m in sys.modules))")
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "[]"
