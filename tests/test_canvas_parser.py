"""The safe Omost parser: the sample, every prefix of it, streaming, hostile inputs, corrections, errors."""

import ast
import builtins
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_omost.canvas import (
    CanvasError,
    IncrementalParser,
    load_canvas_text,
    parse_answer,
    rect_from_location,
)

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "dragon_battle.response.md").read_text(encoding="utf-8")
SAMPLE_CODE = SAMPLE.split("```python\n", 1)[1].rsplit("```", 1)[0]

CALL_GLOBAL = ("canvas.set_global_description(description='A quiet lake.', detailed_descriptions=['Calm water.'], "
               "tags='lake, calm', HTML_web_color_name='lightblue')")


def local_call(location="on the left", offset="no offset", area="a small square area", distance=3.0,
               color="red", description="A boat."):
    return (f"canvas.add_local_description(location={location!r}, offset={offset!r}, area={area!r}, "
            f"distance_to_viewer={distance!r}, description={description!r}, detailed_descriptions=['A red boat.'], "
            f"tags='boat', atmosphere='Calm.', style='Photo.', quality_meta='Sharp.', "
            f"HTML_web_color_name={color!r})")


def program(*calls):
    return "canvas = Canvas()\n" + CALL_GLOBAL + "\n" + "\n".join(calls) + "\n"


# ---- the sample -----------------------------------------------------------------------------------

def test_dragon_sample_regions_have_the_rects_their_phrases_imply():
    result = parse_answer(SAMPLE)
    assert not result.truncated and result.notes == []
    g = result.canvas.global_region
    assert g.description == "A fierce battle between warriors and a dragon."
    assert len(g.detailed_descriptions) == 8 and g.color == "darkslategray"
    expected = [("on the left", "no offset", "a large horizontal area", 5.0, "darkgoldenrod"),
                ("in the center", "no offset", "a large square area", 7.0, "firebrick"),
                ("on the top", "no offset", "a large horizontal area", 10.0, "midnightblue"),
                ("on the bottom", "no offset", "a large horizontal area", 5.0, "darkolivegreen")]
    regions = result.canvas.regions
    assert len(regions) == 4
    for region, (loc, off, area, distance, color) in zip(regions, expected):
        assert (region.location, region.offset, region.area) == (loc, off, area)
        assert region.rect == rect_from_location(loc, off, area)
        assert (region.distance, region.color) == (distance, color)
    # OMOST.md's worked geometry: left/none/large horizontal → (15, 75, 0, 60)
    assert regions[0].rect == (15, 75, 0, 60)
    assert [r.rect for r in regions[1:]] == [(10, 80, 10, 80), (0, 45, 0, 90), (45, 90, 0, 90)]
    assert regions[1].detailed_descriptions[2].startswith("The dragon's eyes")  # double-quoted string
    assert "’" in regions[1].detailed_descriptions[4]  # non-ASCII kept


def test_bare_code_and_answer_give_the_same_canvas():
    assert parse_answer(SAMPLE_CODE).canvas == parse_answer(SAMPLE).canvas
    for fence in ("```py\n", "```\n", "```Python\n", "Here is the layout:\n\n```python\n"):
        assert parse_answer(fence + SAMPLE_CODE + "```\nDone.").canvas == parse_answer(SAMPLE).canvas


def test_every_prefix_parses_and_only_yields_regions_of_the_full_parse():
    full = parse_answer(SAMPLE).canvas
    counts = []
    for k in range(1, len(SAMPLE) + 1):
        result = parse_answer(SAMPLE[:k])
        regions = result.canvas.regions
        assert regions == full.regions[:len(regions)], k
        if result.canvas.global_region.description:
            assert result.canvas.global_region == full.global_region
        if k < len(SAMPLE) - 3:
            assert result.truncated and any("cut" in n for n in result.notes), k
        counts.append(len(regions))
    assert counts == sorted(counts) and counts[-1] == 4  # regions appear one by one, never vanish
    assert parse_answer(SAMPLE[:SAMPLE.index("canvas.add_local")]).canvas.regions == []


def test_missing_closing_fence_is_reported_as_cut():
    result = parse_answer(SAMPLE.rstrip("`"))
    assert result.canvas == parse_answer(SAMPLE).canvas
    assert result.truncated and result.notes == ["the answer was cut: its ``` block has no closing fence"]
    cut = SAMPLE[:SAMPLE.index("HTML_web_color_name='firebrick'")]
    result = parse_answer(cut)
    assert len(result.canvas.regions) == 1 and result.truncated
    dragon_line = SAMPLE[:SAMPLE.index("canvas.add_local_description(\n    location='in the center'")].count("\n") + 1
    assert result.notes[-1] == (f"the answer was cut inside the statement starting at line {dragon_line}; "
                                "that statement was ignored")


# ---- streaming --------------------------------------------------------------------------------------

def feed_all(text, sizes):
    parser, pos, seen = IncrementalParser(), 0, []
    for size in sizes:
        if pos >= len(text):
            break
        seen.append(parser.feed(text[pos:pos + size]))
        pos += size
    if pos < len(text):
        seen.append(parser.feed(text[pos:]))
    return seen, parser.finish()


def test_streaming_in_any_chunking_equals_one_parse():
    full = parse_answer(SAMPLE)
    rng = random.Random(0)
    for trial in range(6):
        sizes = [rng.randint(1, 40) for _ in range(len(SAMPLE))]
        seen, final = feed_all(SAMPLE, sizes)
        assert final.canvas == full.canvas and final.notes == full.notes and not final.truncated
        counts = [len(r.canvas.regions) for r in seen]
        assert counts == sorted(counts)
        for r in seen:
            assert r.canvas.regions == full.canvas.regions[:len(r.canvas.regions)]
    # one character at a time: the regions appear as soon as each call's closing line arrives
    seen, final = feed_all(SAMPLE, [1] * len(SAMPLE))
    assert final.canvas == full.canvas
    firsts = {}
    for k, r in enumerate(seen):
        firsts.setdefault(len(r.canvas.regions), k)
    for n, k in firsts.items():
        if n:
            assert SAMPLE[:k + 1].endswith(")\n")  # the newline after the call's ")" completes it


def test_streaming_crlf_split_between_chunks():
    text = SAMPLE.replace("\n", "\r\n")
    cuts = [i + 1 for i, c in enumerate(text) if c == "\r"][:20]  # chunks ending right after "\r"
    sizes = [b - a for a, b in zip([0] + cuts, cuts)] + [len(text)]
    _, final = feed_all(text, sizes)
    assert final.canvas == parse_answer(SAMPLE).canvas


def test_feed_result_is_partial_until_the_fence_closes():
    parser = IncrementalParser()
    assert parser.feed("```python\ncanvas = Canvas()\n").truncated
    parser.feed(CALL_GLOBAL + "\n")
    result = parser.feed(local_call() + "\n```\n")
    assert not result.truncated and len(result.canvas.regions) == 1
    assert parser.finish().canvas == result.canvas
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_an_error_while_streaming_is_final():
    parser = IncrementalParser()
    parser.feed("canvas = Canvas()\n")
    with pytest.raises(CanvasError) as first:
        parser.feed("import os\n")
    assert first.value.line == 2
    for again in (lambda: parser.feed(CALL_GLOBAL + "\n"), parser.finish):
        with pytest.raises(CanvasError) as info:
            again()
        assert info.value is first.value


# ---- hostile input: rejected, never executed ----------------------------------------------------------

def hostile_snippets(target):
    t = str(target)
    return [
        f"import os; os.system('touch {t}')",
        f"__import__('os').system('touch {t}')",
        f"open({t!r}, 'w').write('pwned')",
        f"exec(\"open({t!r}, 'w').write('1')\")",
        f"eval(\"__import__('os').system('touch {t}')\")",
        f"canvas.set_global_description(description=open({t!r}, 'w').write('x'), detailed_descriptions=[], "
        "tags='', HTML_web_color_name='red')",
        f"canvas.add_local_description(*[open({t!r}, 'w')])",
        f"canvas.add_local_description(**{{'location': open({t!r}, 'w')}})",
        f"canvas.set_global_description(description=f\"{{open({t!r}, 'w').write('x')}}\", "
        "detailed_descriptions=[], tags='', HTML_web_color_name='red')",
        f"canvas.set_global_description('a', [open({t!r}, 'w').write('x') for _ in range(1)], '', 'red')",
        f"canvas.__class__.__init__.__globals__['os'].system('touch {t}')",
        f"canvas = open({t!r}, 'w')",
        f"(lambda: open({t!r}, 'w'))()",
        f"def f():\n    open({t!r}, 'w')\nf()",
        f"with open({t!r}, 'w') as f:\n    pass",
        f"@open({t!r}, 'w')\ndef g(): pass",
        f"canvas.set_global_description(description='a' if open({t!r}, 'w') else 'b', detailed_descriptions=[], "
        "tags='', HTML_web_color_name='red')",
        f"x = [open({t!r}, 'w')]",
        f"from os import system; system('touch {t}')",
        f"canvas.add_local_description(location=('on the left', open({t!r}, 'w'))[0])",
        f"canvas.set_global_description(description={{1: open({t!r}, 'w')}}, detailed_descriptions=[], tags='', "
        "HTML_web_color_name='red')",
    ]


@pytest.fixture
def no_code_execution(monkeypatch):
    """exec/eval forbidden and compile limited to AST-only while the parser runs."""
    real_compile = builtins.compile

    def ast_only(source, filename, mode, flags=0, *args, **kwargs):
        assert flags & ast.PyCF_ONLY_AST, "the parser compiled code, not just a syntax tree"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("exec/eval called")

    monkeypatch.setattr(builtins, "compile", ast_only)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "eval", forbidden)


def test_hostile_programs_are_rejected_with_their_line_and_never_run(tmp_path, no_code_execution):
    target = tmp_path / "pwned"
    for snippet in hostile_snippets(target):
        text = "```python\ncanvas = Canvas()\n" + snippet + "\n" + CALL_GLOBAL + "\n```\n"
        with pytest.raises(CanvasError) as info:
            parse_answer(text)
        assert info.value.line == 3, (snippet, str(info.value))
        assert str(info.value).startswith("line 3: ")
        for where in (snippet, program(snippet)):  # bare code too
            with pytest.raises(CanvasError):
                parse_answer(where)
        assert not target.exists()


@pytest.mark.parametrize("snippet, message", [
    ("import os", "imports are not allowed"),
    ("from os import path", "imports are not allowed"),
    ("__import__('os')", "dunder names (__import__)"),
    ("canvas.__class__()", "dunder names (__class__)"),
    ("print('x')", "calling print() is not allowed"),
    ("canvas.set_global_description(description=name, detailed_descriptions=[], tags='', HTML_web_color_name='red')",
     "the name 'name' is not allowed"),
    ("canvas.set_global_description(description='a', detailed_descriptions=[x for x in 'ab'], tags='', "
     "HTML_web_color_name='red')", "comprehensions are not allowed"),
    ("canvas.set_global_description(description=f'a{1}', detailed_descriptions=[], tags='', HTML_web_color_name='red')",
     "f-strings are not allowed"),
    ("canvas.set_global_description(description='a' + 'b', detailed_descriptions=[], tags='', HTML_web_color_name='red')",
     "expressions (BinOp)"),
    ("canvas.set_global_description(description=str.upper, detailed_descriptions=[], tags='', HTML_web_color_name='red')",
     "attribute access (.upper)"),
    ("canvas.set_global_description(description='" + "a" * 10_001 + "', detailed_descriptions=[], tags='', "
     "HTML_web_color_name='red')", "too long (at most 10000)"),
    ("canvas.set_global_description(description='a', detailed_descriptions=['x'] * 2, tags='', HTML_web_color_name='red')",
     "expressions (BinOp)"),
    ("canvas.set_global_description(description='a', detailed_descriptions=[" + "'x', " * 201 + "], tags='', "
     "HTML_web_color_name='red')", "a list of 201 items is too long"),
    (local_call(distance=1e12), "out of range"),
    (local_call(distance=-2.0), "must be > 0"),
    (local_call().replace("distance_to_viewer=3.0", "distance_to_viewer=True"), "bool literals are not allowed"),
    # Python >= 3.10.7 refuses over 4300 digits itself; older ones parse it and we refuse the size
    (local_call().replace("distance_to_viewer=3.0", "distance_to_viewer=" + "9" * 5000), ("5000 digits", "out of range")),
    ("canvas.add_global_description('a')", "unknown method canvas.add_global_description"),
    (local_call().replace("tags=", "tag="), "has no argument 'tag' (did you mean tags?)"),
    (local_call().replace("location='on the left', ", ""), "missing location"),
    (local_call() + "\n" + local_call().replace("canvas.add_local_description(", "canvas.add_local_description('on the left', "),
     "got 'location' twice"),
    ("x = 1", "only `canvas = Canvas()` may be assigned"),
    ("canvas = Canvas(1)", "canvas may only be assigned `Canvas()`"),
    ("canvas = Canvas()", "a second `canvas = Canvas()` (the first is at line 1)"),
    ("if True:\n    pass", "if blocks are not allowed"),
    ("for x in 'ab':\n    canvas = Canvas()", "for loops are not allowed"),
    ("@decorator\nclass C:\n    pass", "decorated definitions are not allowed"),
    ("async def f():\n    pass", "function definitions are not allowed"),
    ("'just a string'", "a bare expression is not allowed"),
    ("canvas.set_global_description('a', [], '', 'red')", "called a second time (first at line 2)"),
    (local_call(location="somewhere"), "location 'somewhere' is not one of the allowed values"),
    (local_call(color="sparkly"), "'sparkly' is not one of the 149 HTML colour names"),
    ("canvas.add_local_description('on the left', 'no offset', 'a small square area', 1.0, 'A', 'not a list', '', '', "
     "'', '', 'red')", "detailed_descriptions must be a list of strings"),
    ("canvas.set_global_description(description='a\n", "invalid Python syntax"),
    ("canvas.set_global_description(description='a', detailed_descriptions=[1], tags='', HTML_web_color_name='red')",
     "lists may hold only strings"),
    ("x\0 = 1", "null bytes"),
])
def test_rejections_name_the_problem_and_the_line(snippet, message):
    text = program(snippet)
    first_bad = 3 + (snippet.count("\n") if "got 'location' twice" in message else 0)
    with pytest.raises(CanvasError) as info:
        parse_answer(text)
    alternatives = message if isinstance(message, tuple) else (message,)
    assert any(m in str(info.value) for m in alternatives), str(info.value)
    assert info.value.line == first_bad, str(info.value)


def test_statement_after_the_fence_with_an_open_bracket_is_an_error():
    with pytest.raises(CanvasError) as info:
        parse_answer("```python\ncanvas = Canvas()\ncanvas.set_global_description(\n  'a',\n```\n")
    assert info.value.line == 3 and "not complete before the closing ```" in str(info.value)


def test_non_python_blocks_are_skipped_and_prose_without_code_is_an_error():
    text = "Sketch:\n```json\n{\"a\": 1}\n```\nCode:\n```python\n" + SAMPLE_CODE + "```\n"
    result = parse_answer(text)
    assert result.canvas == parse_answer(SAMPLE).canvas
    assert result.notes == ["line 2: skipped a ```json block (not Python)"]
    for text in ("I cannot draw that, sorry.", "   \n\n"):
        with pytest.raises(CanvasError, match="no canvas code found|empty"):
            parse_answer(text)
    with pytest.raises(CanvasError, match="the answer is empty"):
        parse_answer("")


def test_cut_last_statement_is_tolerated_but_an_invalid_one_is_not():
    for cut in ("canvas = Canv", "canvas.set_global_descr", "canvas.", "canvas = Canvas("):
        result = parse_answer(cut)
        assert result.truncated and result.canvas.regions == [], cut
    with pytest.raises(CanvasError, match="imports are not allowed"):
        parse_answer("canvas = Canvas()\nimport os")  # complete, invalid last line without newline


# ---- corrections ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, given, fixed", [
    ("location", "top left", "on the top-left"),  # the original's silent fuzzy match made this "on the left"
    ("location", "On the Left", "on the left"),
    ("location", "in the centre", "in the center"),
    ("location", "on the lef", "on the left"),
    ("location", "upper right", "on the top-right"),
    ("offset", "none", "no offset"),
    ("offset", "slightly to the top-left", "slightly to the upper-left"),
    ("area", "a medium square area", "a medium-sized square area"),
    ("area", "large horizontal", "a large horizontal area"),
    ("color", "Dark Slate Gray", "darkslategray"),
    ("color", "darkgoldenrd", "darkgoldenrod"),
])
def test_close_enum_values_are_corrected_and_reported(kind, given, fixed):
    args = {"location": "on the left", "offset": "no offset", "area": "a small square area", "color": "red"}
    args[kind] = given
    result = parse_answer(program(local_call(**args)))
    region = result.canvas.regions[0]
    assert getattr(region, kind) == fixed
    assert result.notes == [f"line 3: {'colour' if kind == 'color' else kind} {given!r} read as {fixed!r}"]
    expected = {**args, kind: fixed}
    assert region.rect == rect_from_location(expected["location"], expected["offset"], expected["area"])


@pytest.mark.parametrize("kind, given", [("location", "center left"), ("location", "left top right"),
                                          ("area", "a large area"), ("offset", "a bit"), ("color", "golden")])
def test_unclear_enum_values_are_rejected(kind, given):
    args = {"location": "on the left", "offset": "no offset", "area": "a small square area", "color": "red"}
    args[kind] = given
    with pytest.raises(CanvasError) as info:
        parse_answer(program(local_call(**args)))
    assert info.value.line == 3 and repr(given) in str(info.value)


def test_positional_arguments_and_missing_text_fields():
    text = ("canvas = Canvas()\ncanvas.set_global_description('G.', ['x'], 't', 'white')\n"
            "canvas.add_local_description('on the right', 'no offset', 'a small vertical area', 2, 'R.', "
            "HTML_web_color_name='red')\n")
    result = parse_answer(text)
    region = result.canvas.regions[0]
    assert region.rect == rect_from_location("on the right", "no offset", "a small vertical area")
    assert region.distance == 2.0 and isinstance(region.distance, float) and region.description == "R."
    assert (region.detailed_descriptions, region.tags, region.quality_meta) == ([], "", "")
    assert result.notes == [f"line 3: add_local_description has no {n}; left empty" for n in
                            ("detailed_descriptions", "tags", "atmosphere", "style", "quality_meta")]


def test_numbers_and_strings_in_every_literal_spelling():
    text = program(local_call().replace("distance_to_viewer=3.0", "distance_to_viewer=+7")
                   .replace("description='A boat.'", "description=('A ' 'boat.')")
                   .replace("detailed_descriptions=['A red boat.']", "detailed_descriptions=('a', \"b\", '''c''')"))
    region = parse_answer(text).canvas.regions[0]
    assert (region.distance, region.description, region.detailed_descriptions) == (7.0, "A boat.", ["a", "b", "c"])


def test_load_canvas_text_detects_json_and_reports_json_errors_with_lines():
    assert load_canvas_text(SAMPLE).canvas == parse_answer(SAMPLE).canvas
    with pytest.raises(CanvasError) as info:
        load_canvas_text('{\n  "format": "omost-canvas",\n  "global": {oops}\n}')
    assert info.value.line == 3 and "invalid JSON" in str(info.value)


# ---- property / fuzz -----------------------------------------------------------------------------------

SENTINEL = Path(os.environ.get("TMPDIR", "/tmp")) / f"omost_parser_fuzz_{os.getpid()}"
HOSTILE = hostile_snippets(SENTINEL)
PIECES = HOSTILE + ["```", "```python\n", "\n", "(", ")", "[", "'", '"', "'''", "#", "\\", ",", "=", "canvas",
                    "canvas.add_local_description(", "\x00", "\r", "    ", "é’", "9" * 30]


@st.composite
def mutated_answers(draw):
    text = SAMPLE
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "truncate"]))
        a = draw(st.integers(0, len(text)))
        b = draw(st.integers(a, min(len(text), a + 400)))
        if op == "delete":
            text = text[:a] + text[b:]
        elif op == "insert":
            piece = draw(st.one_of(st.sampled_from(PIECES), st.text(max_size=20)))
            text = text[:a] + piece + text[a:]
        elif op == "duplicate":
            text = text[:b] + text[a:b] + text[b:]
        else:
            text = text[:a]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(mutated_answers(), st.text(max_size=300),
                      st.lists(st.sampled_from(PIECES), max_size=12).map("".join)),
       chunk=st.integers(1, 64))
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")  # ast.parse on odd escapes
def test_fuzz_only_canvas_errors_escape_and_nothing_runs(text, chunk):
    try:
        whole = parse_answer(text)
    except CanvasError as exc:
        whole = exc
    parser = IncrementalParser()
    try:
        for i in range(0, len(text), chunk):
            parser.feed(text[i:i + chunk])
        streamed = parser.finish()
    except CanvasError as exc:
        streamed = exc
    assert not SENTINEL.exists()
    # streaming and one parse agree: same canvas and notes, or the same error
    if isinstance(whole, CanvasError):
        assert isinstance(streamed, CanvasError) and (streamed.line, str(streamed)) == (whole.line, str(whole))
    else:
        assert not isinstance(streamed, CanvasError), str(streamed)
        assert (streamed.canvas, streamed.truncated, streamed.notes) == (whole.canvas, whole.truncated, whole.notes)
    try:
        load_canvas_text(text)
    except CanvasError:
        pass  # the one error type allowed out
    assert not SENTINEL.exists()
