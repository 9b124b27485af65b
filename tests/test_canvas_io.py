"""Canvas JSON (ours and ComfyUI_omost), canonical code, validation."""

import copy
import json
from pathlib import Path

import pytest

from lib_omost.canvas import (
    HTML_COLORS,
    Canvas,
    CanvasError,
    GlobalRegion,
    Region,
    canvas_from_json,
    canvas_to_code,
    canvas_to_comfyui,
    canvas_to_json,
    example_canvas,
    load_canvas_text,
    located_region,
    ordered_regions,
    parse_answer,
    rect_from_location,
    validate_canvas,
)
from lib_omost.canvas.prompt_tree import normalize_prompt

DATA = Path(__file__).parent / "data"
SAMPLE = (DATA / "dragon_battle.response.md").read_text(encoding="utf-8")
COMFY = json.loads((DATA / "girl_on_chair.canvas.json").read_text(encoding="utf-8"))


def dragon():
    return parse_answer(SAMPLE).canvas


def edited():
    """The dragon canvas after an editor session: a free rect, an RGB colour, a weight, a tie in distance."""
    canvas = dragon()
    canvas.regions[0].rect = (12.5, 70, 3, 58.25)
    canvas.regions[0].location = canvas.regions[0].offset = canvas.regions[0].area = None
    canvas.regions[1].color = (12, 200, 99)
    canvas.regions[2].weight = 1.5
    return canvas


def test_html_colour_table_is_complete():
    assert len(HTML_COLORS) == 149
    assert HTML_COLORS["darkgoldenrod"] == (184, 134, 11) and HTML_COLORS["navyblue"] == (0, 0, 128)
    assert all(name == name.lower() for name in HTML_COLORS)


def test_our_json_round_trips_through_text():
    for canvas in (dragon(), edited(), example_canvas(), Canvas()):
        obj = canvas_to_json(canvas)
        assert obj["format"] == "omost-canvas" and obj["version"] == 1
        again = canvas_from_json(json.loads(json.dumps(obj)))
        assert again == canvas
        assert canvas_to_json(again) == obj


def test_our_json_fields():
    obj = canvas_to_json(edited())
    first, second = obj["regions"][:2]
    assert first["rect"] == [12.5, 70, 3, 58.25] and first["location"] is None
    assert second["color"] == [12, 200, 99] and second["rect"] == [10, 80, 10, 80]
    assert second["location"] == "in the center" and obj["regions"][2]["weight"] == 1.5
    assert list(first) == ["location", "offset", "area", "rect", "distance", "description",
                           "detailed_descriptions", "tags", "atmosphere", "style", "quality_meta", "color", "weight"]


def test_our_json_defaults_and_case_insensitive_colours():
    obj = {"global": {"color": "DarkSlateGray"},
           "regions": [{"rect": [0, 10, 0, 10], "distance": 1, "color": "RED"}]}
    canvas = canvas_from_json(obj)
    assert canvas.global_region == GlobalRegion(color="darkslategray")
    region = canvas.regions[0]
    assert (region.color, region.weight, region.location, region.description, region.detailed_descriptions) == \
        ("red", 1.0, None, "", [])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "format: must be 'omost-canvas'"),
    (lambda d: d.update(version=2), "version: must be 1"),
    (lambda d: d.pop("global"), "global: must be an object"),
    (lambda d: d["global"].update(color="sparkly"), "global.color: must be one of the 149 HTML colour names"),
    (lambda d: d.update(regions={}), "regions: must be a list"),
    (lambda d: d["regions"][1].update(rect=[0, 10, 5]), "regions[1].rect: must be [top, bottom, left, right]"),
    (lambda d: d["regions"][1].update(rect=[0, 91, 0, 10]), "regions[1].rect: numbers must lie in [0, 90]"),
    (lambda d: d["regions"][1].update(rect=[10, 10, 0, 10]), "regions[1].rect: needs top < bottom"),
    (lambda d: d["regions"][1].update(rect=[10, 20, 0, True]), "regions[1].rect: must be [top, bottom, left, right]"),
    (lambda d: d["regions"][1].update(rect=[10, 20, 30, 40]), "differs from [10, 80, 10, 80] implied"),
    (lambda d: d["regions"][1].update(location="middle"), "regions[1].location: must be null or one of"),
    (lambda d: d["regions"][1].update(distance=0), "regions[1].distance: must be a number > 0"),
    (lambda d: d["regions"][1].update(distance=float("nan")), "regions[1].distance: must be a number > 0"),
    (lambda d: d["regions"][1].pop("distance"), "regions[1].distance: missing"),
    (lambda d: d["regions"][1].update(weight=3), "regions[1].weight: must be a number in [0, 2]"),
    (lambda d: d["regions"][1].update(color=[1, 2, 300]), "regions[1].color: must be one of"),
    (lambda d: d["regions"][1].update(tags=5), "regions[1].tags: must be a string"),
    (lambda d: d["regions"][1].update(detailed_descriptions=["a", 1]),
     "regions[1].detailed_descriptions: must be a list of strings"),
    (lambda d: d["regions"][1].update(style="x" * 10_001), "regions[1].style: text of 10001 characters is too long"),
    (lambda d: d["regions"].__setitem__(0, "box"), "regions[0]: must be an object"),
])
def test_our_json_validation_names_the_field(mutate, message):
    obj = canvas_to_json(dragon())
    mutate(obj)
    with pytest.raises(CanvasError) as info:
        canvas_from_json(obj)
    assert message in str(info.value) and info.value.line is None


def test_comfyui_sample_imports_and_exports_unchanged():
    canvas = canvas_from_json(copy.deepcopy(COMFY))
    g = canvas.global_region
    assert g.description == "An Asian girl sitting on a chair." and g.color == "lightgray"
    assert g.detailed_descriptions == COMFY[0]["suffixes"]
    assert [r.description for r in canvas.regions] == [item["prefixes"][-1] for item in COMFY[1:]]
    assert [list(r.rect) for r in canvas.regions] == [item["rect"] for item in COMFY[1:]]
    assert [r.distance for r in canvas.regions] == [5.0, 4.0, 3.0, 2.0, 1.0]  # far → near kept
    assert all(r.location is None and r.tags == "" for r in canvas.regions)
    assert canvas_to_comfyui(canvas) == COMFY  # every sample string is already normalised


def test_comfyui_export_is_global_first_then_far_to_near_with_the_prompt_tree():
    canvas = edited()
    items = canvas_to_comfyui(canvas)
    g = canvas.global_region
    assert items[0] == {"rect": [0, 90, 0, 90], "prefixes": [g.description],
                        "suffixes": [normalize_prompt(s) for s in g.detailed_descriptions + [g.tags]],
                        "color": [47, 79, 79]}
    order = ordered_regions(canvas)
    assert [r.distance for r in order] == [10.0, 7.0, 5.0, 5.0]
    assert order[2] is canvas.regions[0] and order[3] is canvas.regions[3]  # tie: program order
    for item, region in zip(items[1:], order):
        assert item["rect"] == list(region.rect)
        assert item["prefixes"] == [normalize_prompt(g.description), normalize_prompt(region.description)]
        assert item["suffixes"] == [normalize_prompt(s) for s in region.detailed_descriptions +
                                    [region.tags, region.atmosphere, region.style, region.quality_meta]]
    assert items[2]["color"] == [12, 200, 99]
    # round trip through the list form keeps what that form can hold
    again = canvas_from_json(json.loads(json.dumps(items)))
    assert canvas_to_comfyui(again) == items


@pytest.mark.parametrize("mutate, message", [
    (lambda items: items.clear(), "the ComfyUI list is empty"),
    (lambda items: items[1].pop("suffixes"), "[1].suffixes: missing"),
    (lambda items: items[1].update(color="red"), "[1].color: must be [r, g, b]"),
    (lambda items: items[2].update(rect=[0, 10, 50, 40]), "[2].rect: needs top < bottom and left < right"),
    (lambda items: items[0].update(prefixes="text"), "[0].prefixes: must be a list of strings"),
])
def test_comfyui_validation(mutate, message):
    items = copy.deepcopy(COMFY)
    mutate(items)
    with pytest.raises(CanvasError) as info:
        canvas_from_json(items)
    assert message in str(info.value)


def test_load_canvas_text_reads_both_json_forms():
    ours = load_canvas_text(json.dumps(canvas_to_json(dragon()), indent=2))
    assert ours.canvas == dragon() and ours.notes == []
    comfy = load_canvas_text("\n " + json.dumps(COMFY))
    assert comfy.canvas == canvas_from_json(COMFY) and "ComfyUI_omost" in comfy.notes[0]


def test_canonical_code_reproduces_the_sample_and_parses_back():
    code = SAMPLE.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert canvas_to_code(dragon()) == code
    for canvas in (example_canvas(), Canvas(GlobalRegion(description="it's \"quoted\"\nand multi-line")),
                   Canvas(regions=[located_region("on the top-right", "slightly to the lower-left",
                                                  "a medium-sized vertical area", 1, description="")])):
        result = parse_answer(canvas_to_code(canvas))
        assert result.canvas == canvas and result.notes == []


def test_canonical_code_approximates_what_omost_code_cannot_say():
    canvas = edited()
    back = parse_answer(canvas_to_code(canvas)).canvas
    assert back.regions[0].rect == rect_from_location("on the left", "no offset", "a large horizontal area")
    assert back.regions[1].color == "mediumseagreen"  # nearest name to (12, 200, 99)
    assert back.regions[2].weight == 1.0
    assert [r.description for r in back.regions] == [r.description for r in canvas.regions]


def test_validate_canvas_returns_a_normalised_copy_or_names_the_field():
    canvas = dragon()
    canvas.regions[0].color = "DarkGoldenRod"
    checked = validate_canvas(canvas)
    assert checked.regions[0].color == "darkgoldenrod" and checked is not canvas
    canvas.regions[2].rect = (50, 40, 0, 90)
    with pytest.raises(CanvasError, match=r"regions\[2\]\.rect: needs top < bottom"):
        validate_canvas(canvas)
    with pytest.raises(CanvasError, match=r"regions\[0\]: must be a Region"):
        validate_canvas(Canvas(regions=["box"]))
    free = Region(rect=(1, 2, 3, 4), distance=1.0)
    assert validate_canvas(Canvas(regions=[free])).regions == [free]


CANVAS_SIDE = sorted(["lib_omost.prompt_chunks"] + [f"lib_omost.canvas.{p.stem}" for p in
                     (Path(__file__).resolve().parents[1] / "lib_omost" / "canvas").glob("*.py")
                     if p.stem != "__init__"])


def test_canvas_and_prompt_modules_import_at_module_level_only():
    """No import hidden inside a function to dodge a cycle: every lib_omost import of the canvas package and
    of the prompt chunking sits at module level."""
    import ast
    root = Path(__file__).resolve().parents[1]
    for name in CANVAS_SIDE:
        tree = ast.parse((root / (name.replace(".", "/") + ".py")).read_text())
        top = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("lib_omost") for n in names), f"{name}: import inside a function"


@pytest.mark.parametrize("name", CANVAS_SIDE)
def test_every_canvas_module_imports_first_in_a_fresh_interpreter(name):
    """An import cycle breaks some import order; each module is imported first here."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_editor_holds_the_python_colour_table():
    """One table: the browser editor's copy is generated from lib_omost/canvas/_color_table.py."""
    import re

    from lib_omost.canvas import _color_table as table
    source = (Path(__file__).resolve().parents[1] / table.JS_FILE).read_text(encoding="utf-8")
    assert table.with_js_table(source) == source, "run write_js_table() after changing the Python table"
    body = source[source.index(table.JS_BEGIN):source.index(table.JS_END)]
    items = "".join(re.findall(r"'([^']*)'", body)).split()
    assert [tuple(item.split(":")) for item in items] == [
        (name, "%02x%02x%02x" % rgb) for name, rgb in HTML_COLORS.items()]
