"""Hostile canvas input (issue 15): whatever a canvas JSON or canvas code holds, reading it either gives a canvas
that every later step can use, or a CanvasError naming the field; limits bound memory and time (input size,
total text, layout picture size x regions); messages quote input shortly."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ImageFont

from lib_omost.canvas import (Canvas, CanvasError, GlobalRegion, Region, canvas_to_comfyui, canvas_to_json,
                              color_preview, example_canvas, layout_sheet, load_canvas_text, ordered_regions,
                              parse_answer, validate_canvas)
from lib_omost.canvas.geometry import rect_mask
from lib_omost.canvas.cli import main
from lib_omost.canvas.model import MAX_CANVAS_TEXT_CHARS, MAX_INPUT_CHARS, MAX_NUMBER
from lib_omost.canvas.render import MAX_PAINTED, MAX_PIXELS, _label_text, check_layout_size
from lib_omost.quoting import quoted, shortened

PLACEHOLDER = "@@hostile@@"

# raw JSON texts put in place of one value of a valid canvas
HOSTILE_JSON = {
    "5000-digit integer": "1" * 5000,
    "negative 5000-digit integer": "-" + "9" * 5000,
    "40-digit integer": "1" * 40,
    "1e400": "1e400",
    "-1e400": "-1e400",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "lone high surrogate": '"\\ud800"',
    "lone low surrogate": '"a\\udfffb"',
    "reversed surrogate pair": '"\\ude00\\ud83d"',
    "long string": json.dumps("x" * 20_000),
    "huge string": json.dumps("y" * 200_000),
    "true": "true",
    "null": "null",
    "object": '{"a": 1}',
    "empty list": "[]",
    "list of numbers": "[1, 2, 3, 4]",
    "list of surrogates": '["\\ud800"]',
    "nested lists": "[[[[[]]]]]",
}


def leaves(obj, path=()):
    """Every (path, value) of a JSON structure's leaves and containers below the top."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield path + (key,), value
        yield from leaves(value, path + (key,))


def field_name(path) -> str:
    """How CanvasError names a field: 'regions[1].rect', 'global.color', '[2].prefixes'."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def put(obj, path, value):
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def usable(canvas: Canvas) -> None:
    """What later steps do with an accepted canvas must work: validation, JSON (UTF-8), pictures."""
    validate_canvas(canvas)
    json.dumps(canvas_to_json(canvas), ensure_ascii=False).encode("utf-8")
    json.dumps(canvas_to_comfyui(canvas), ensure_ascii=False).encode("utf-8")
    layout_sheet(canvas, 32, 32)


OURS = canvas_to_json(example_canvas())
COMFY = canvas_to_comfyui(example_canvas())
PATHS = [("ours", p) for p, _ in leaves(OURS)] + [("comfyui", p) for p, _ in leaves(COMFY)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.sampled_from(PATHS), hostile=st.sampled_from(sorted(HOSTILE_JSON)))
def test_any_hostile_value_anywhere_is_read_or_named(where, hostile):
    form, path = where
    obj = json.loads(json.dumps(OURS if form == "ours" else COMFY))
    put(obj, path, PLACEHOLDER)
    text = json.dumps(obj).replace(json.dumps(PLACEHOLDER), HOSTILE_JSON[hostile])
    try:
        result = load_canvas_text(text)
    except CanvasError as e:
        message = str(e)
        assert len(message) < 500, message[:200]
        # the field itself, or the list/object holding it when that is what is wrong
        named = [field_name(path[:n]) for n in range(len(path), 0, -1)]
        assert any(message.startswith(name) for name in named if name) or message.startswith("invalid JSON"), \
            (path, message)
        return
    usable(result.canvas)


def test_the_reported_examples():
    obj = json.loads(json.dumps(OURS))
    cases = {("regions", 1, "distance"): ("1" * 5000, "regions[1].distance: must be a number > 0 and at most "
                                                     "1e+09 (larger = farther), got <an integer of 5000 digits>"),
             ("global", "description"): ('"\\ud800"', "global.description: character 0 is a lone surrogate"),
             ("regions", 0, "rect"): ('[0, 90, 0, "x"]', "regions[0].rect: must be [top, bottom, left, right]"),
             ("regions", 0, "weight"): ("1e400", "regions[0].weight: must be a number in [0, 2], got inf")}
    for path, (raw, message) in cases.items():
        bad = json.loads(json.dumps(obj))
        put(bad, path, PLACEHOLDER)
        with pytest.raises(CanvasError) as e:
            load_canvas_text(json.dumps(bad).replace(json.dumps(PLACEHOLDER), raw))
        assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("literal, message", [
    ('"\\ud800"', "a string: character 0 is a lone surrogate"),
    ('"ok\\udfff"', "a string: character 2 is a lone surrogate"),
    ("1" + "0" * 400, "the number <an integer of about 401 digits> is out of range"),
    ("1" * 5000, "a number of thousands of digits is out of range"),
    ("1e400", "the number inf is out of range"),
    ("-1e400", "the number inf is out of range"),             # the operand of the minus
])
def test_hostile_literals_in_canvas_code(literal, message):
    code = ("canvas = Canvas()\ncanvas.set_global_description('a', [], '', 'white')\n"
            f"canvas.add_local_description('in the center', 'no offset', 'a small square area', 1, {literal}, [], "
            "'', '', '', '', 'red')\n")
    if "e400" in literal or "0" * 400 in literal or "1" * 5000 in literal:
        code = code.replace(f"1, {literal}", f"{literal}, 'd'")
    with pytest.raises(CanvasError) as e:
        parse_answer(code)
    assert message in str(e.value) and str(e.value).startswith("line 3: ") and len(str(e.value)) < 300


def test_names_and_identifiers_in_canvas_code_are_quoted_short():
    long = "z" * 200_000
    for code in (f"canvas = Canvas()\ncanvas.{long}()\n", f"canvas = Canvas()\ncanvas.set_global_description({long})\n",
                 f"canvas = Canvas()\ncanvas.set_global_description({long}='a')\n",
                 f"canvas = Canvas()\ncanvas.set_global_description('a', [], '', '{long}')\n"):
        with pytest.raises(CanvasError) as e:
            parse_answer(code)
        assert len(str(e.value)) < 400 and "characters" in str(e.value)


# --- limits ----------------------------------------------------------------------------------------------------

def test_input_size_limit_applies_to_json_and_code():
    padding = " " * MAX_INPUT_CHARS
    for text in (json.dumps(OURS) + padding, "canvas = Canvas()\n" + padding):
        with pytest.raises(CanvasError, match=f"at most {MAX_INPUT_CHARS}"):
            load_canvas_text(text)
    load_canvas_text(json.dumps(OURS) + " " * (MAX_INPUT_CHARS - len(json.dumps(OURS))))


def big_text_canvas(chars_per_region: int, regions: int) -> dict:
    obj = json.loads(json.dumps(OURS))
    region = obj["regions"][0]
    obj["regions"] = [{**region, "detailed_descriptions": ["w " * (chars_per_region // 200)] * 100}
                      for _ in range(regions)]
    return obj


def test_total_text_limit_in_json_code_and_validation():
    fits = big_text_canvas(MAX_CANVAS_TEXT_CHARS // 20, 19)
    load_canvas_text(json.dumps(fits))
    over = big_text_canvas(MAX_CANVAS_TEXT_CHARS // 20, 22)
    message = f"more than the {MAX_CANVAS_TEXT_CHARS} allowed for one canvas"
    with pytest.raises(CanvasError, match=message):
        load_canvas_text(json.dumps(over))
    with pytest.raises(CanvasError, match=message):
        load_canvas_text(json.dumps(canvas_to_comfyui(load_canvas_text(json.dumps(fits)).canvas) * 2))
    canvas = load_canvas_text(json.dumps(fits)).canvas
    canvas.regions = canvas.regions * 2
    with pytest.raises(CanvasError, match=message):
        validate_canvas(canvas)
    lines = "[" + ", ".join(["'" + "w " * 400 + "'"] * 100) + "]"
    code = "canvas = Canvas()\ncanvas.set_global_description('a', [], '', 'white')\n" + "".join(
        f"canvas.add_local_description('in the center', 'no offset', 'a small square area', {i + 1}, 'd', {lines}, "
        "'', '', '', '', 'red')\n" for i in range(2))
    with pytest.raises(CanvasError, match=f"line 4: the canvas holds .* {message}"):
        parse_answer(code)


def test_the_sample_answers_are_far_below_the_limits():
    sample = Path(__file__).parent / "data" / "dragon_battle.response.md"
    for canvas in (example_canvas(), parse_answer(sample.read_text(encoding="utf-8")).canvas):
        text = json.dumps(canvas_to_json(canvas))
        assert len(text) * 50 < MAX_INPUT_CHARS
        chars = sum(len(s) for s in json.dumps(canvas_to_json(canvas)).split('"'))
        assert chars * 10 < MAX_CANVAS_TEXT_CHARS


def many_regions(count: int) -> Canvas:
    return Canvas(GlobalRegion(color="white"), [
        Region(rect=(i % 40, 50 + i % 40, i % 30, 60 + i % 30), distance=count - i, description="x" * 150,
               color="red") for i in range(count)])


def test_layout_size_limits():
    check_layout_size(4096, 4096)
    check_layout_size(512, 512, 500)
    check_layout_size(8192, 512, 1)
    with pytest.raises(ValueError, match="integers in \\[1, 8192\\]"):
        check_layout_size(8193, 10)
    with pytest.raises(ValueError, match=f"more than the {MAX_PIXELS}"):
        check_layout_size(8192, 8192)
    with pytest.raises(ValueError, match="500 regions is too much work") as e:
        check_layout_size(2048, 2048, 500)
    side = int(str(e.value).rsplit("about ", 1)[1].split(" x ")[0])
    check_layout_size(side, side, 500)
    assert side * side * 501 <= MAX_PAINTED < (side + 1) * (side + 1) * 501 * 1.01


def test_layout_cli_refuses_a_picture_too_large_for_its_regions(tmp_path, capsys):
    path = tmp_path / "many.json"
    path.write_text(json.dumps(canvas_to_json(many_regions(500))))
    assert main([str(path), "--png", str(tmp_path / "x.png"), "--width", "8192"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --width/--height: ") and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    assert main([str(path), "--width", "8192"]) == 0                  # no PNG asked: the size does not matter
    surrogate = tmp_path / "s.json"
    surrogate.write_text(json.dumps(OURS).replace("A golden retriever", "\\ud800"))
    assert main([str(surrogate), "--png", str(tmp_path / "s.png")]) == 1
    assert "lone surrogate" in capsys.readouterr().err


def peak_bytes(function) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_layout_memory_does_not_grow_with_the_region_count():
    one = peak_bytes(lambda: layout_sheet(many_regions(1), 256, 256))
    many = peak_bytes(lambda: layout_sheet(many_regions(200), 256, 256))
    assert many < 1.5 * one                                         # was 201 masks of 256 x 256 more


def test_label_text_is_the_longest_prefix_that_fits():
    font = ImageFont.load_default()

    def by_one_char(number, description, width):                    # the straightforward rule
        words = " ".join(description.split()).rstrip(". ")
        if font.getlength(f"{number} {words}".rstrip()) <= width:
            return f"{number} {words}".rstrip()
        while words and font.getlength(f"{number} {words}...") > width:
            words = words[:-1]
        return f"{number} {words.rstrip()}..." if words else str(number)
    for description in ("A dog.", "a b c d e f g " * 20, "x" * 500, "", "  spaced   words  . "):
        for width in (0, 5, 17, 40, 100, 300, 5000):
            assert _label_text(3, description, font, width) == by_one_char(3, description, width)


def test_color_preview_is_unchanged_on_random_canvases():
    """The in-place painter gives what the mask painter gave: 0.7 colour + 0.3 below, far to near, rounded once."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        regions = []
        for i in range(int(rng.integers(0, 8))):
            top, left = rng.uniform(0, 80, 2)
            regions.append(Region(rect=(top, rng.uniform(top + 1, 90), left, rng.uniform(left + 1, 90)),
                                  distance=float(rng.uniform(0.1, 9)), color=[int(c) for c in rng.integers(0, 256, 3)]))
        canvas = validate_canvas(Canvas(GlobalRegion(color="skyblue"), regions))
        h, w = (int(x) for x in rng.integers(1, 120, 2))
        expected = np.empty((h, w, 3))
        expected[:] = (135, 206, 235)
        for region in ordered_regions(canvas):
            mask = rect_mask(region.rect, h, w)
            expected[mask] = 0.7 * np.asarray(region.color, np.float64) + (1 - 0.7) * expected[mask]
        assert np.array_equal(np.asarray(color_preview(canvas, w, h)), np.rint(expected).clip(0, 255).astype(np.uint8))


# --- quoting -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["x" * 200_000, 10 ** 5000, -(10 ** 5000), [1] * 100_000, {"k": "v" * 100_000},
                                   "\ud800", b"\x00" * 1000, float("nan"), None, object()], ids=range(10))
def test_quoted_is_short_and_never_fails(value):
    text = quoted(value)
    assert len(text) < 120


def test_quoted_keeps_short_values_as_repr_and_says_how_long_a_cut_string_was():
    assert quoted("hero") == "'hero'" and quoted(42) == "42" and quoted(None) == "None"
    assert quoted("x" * 1000).endswith("(1000 characters)")
    assert quoted(10 ** 5000) == "<an integer of about 5001 digits>"
    assert shortened("abc", 5) == "abc" and shortened("abcdefgh", 5) == "abcde... (3 more characters)"
