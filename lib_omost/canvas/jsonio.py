"""Canvas JSON: our "omost-canvas" v1 form and the ComfyUI_omost list form (import and export), and
auto-detection of any canvas text (JSON, LLM answer or bare code)."""

from __future__ import annotations

import json
from typing import Any

from lib_omost.canvas.colors import as_rgb_triple, color_name_of, color_rgb
from lib_omost.canvas.geometry import FULL_RECT
from lib_omost.canvas.model import (
    MAX_INPUT_CHARS,
    NEGATIVE,
    Canvas,
    CanvasError,
    Region,
    check_lines,
    check_rect,
    check_region_count,
    checked_canvas,
    checked_global,
    checked_region,
    ordered_regions,
)
from lib_omost.canvas.parser import ParseResult, parse_answer
from lib_omost.canvas.prompt_tree import global_prompt, local_prompt
from lib_omost.quoting import quoted

FORMAT = "omost-canvas"
VERSION = 1


def _color_json(color):
    return color if isinstance(color, str) else list(color)


def canvas_to_json(canvas: Canvas) -> dict:
    """Our JSON form (a plain dict, ready for json.dumps); regions in program order."""
    g = canvas.global_region
    return {
        "format": FORMAT,
        "version": VERSION,
        "global": _with_negative({"description": g.description, "detailed_descriptions": list(g.detailed_descriptions),
                                  "tags": g.tags, "color": _color_json(g.color), **_loras_json(g)}, g.negative),
        "regions": [_region_json(r) for r in canvas.regions],
    }


def _with_negative(fields: dict, negative: str) -> dict:
    """A region's JSON with its negative prompt last, and without the key when there is none (canvases
    without negatives keep their JSON, and so their infotext, byte for byte)."""
    return {**fields, NEGATIVE: negative} if negative else fields


def _region_json(r: Region) -> dict:
    return _with_negative({"location": r.location, "offset": r.offset, "area": r.area, "rect": list(r.rect),
                           "distance": r.distance, "description": r.description,
                           "detailed_descriptions": list(r.detailed_descriptions), "tags": r.tags,
                           "atmosphere": r.atmosphere, "style": r.style, "quality_meta": r.quality_meta,
                           "color": _color_json(r.color), "weight": r.weight, **_loras_json(r)}, r.negative)


def _loras_json(region) -> dict:
    """The per-region LoRA list, written only where a region has one (older readers see no new key)."""
    return {"loras": [dict(x) for x in region.loras]} if region.loras else {}


COMFYUI_DROPS_NEGATIVES = ("the ComfyUI_omost list form has no negative prompts: the regions' negatives are "
                           "not in it")


def canvas_to_comfyui(canvas: Canvas) -> list:
    """The ComfyUI_omost list: global first, then regions far to near, each
    {"rect", "prefixes", "suffixes", "color": [r, g, b]} with the normalised prompt tree. Negative prompts
    are left out (the form has none; ``COMFYUI_DROPS_NEGATIVES`` is the note for a canvas that has them)."""
    g = canvas.global_region
    items = [(FULL_RECT, global_prompt(g), g.color)]
    items += [(r.rect, local_prompt(g, r), r.color) for r in ordered_regions(canvas)]
    return [{"rect": list(rect), "prefixes": list(p.prefixes), "suffixes": list(p.suffixes),
             "color": list(color_rgb(color))} for rect, p, color in items]


def _require_object(value: Any, path: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise CanvasError(f"{path}: must be an object with {what}, got {type(value).__name__}")
    return value


def _from_ours(obj: dict) -> Canvas:
    if obj.get("format", FORMAT) != FORMAT:
        raise CanvasError(f"format: must be {FORMAT!r}, got {quoted(obj['format'])}")
    if obj.get("version", VERSION) != VERSION:
        raise CanvasError(f"version: must be {VERSION}, got {quoted(obj['version'])}")
    g = checked_global(_require_object(obj.get("global"), "global",
                                       "description, detailed_descriptions, tags and color"))
    regions = obj.get("regions", [])
    if not isinstance(regions, list):
        raise CanvasError(f"regions: must be a list, got {type(regions).__name__}")
    check_region_count(len(regions))
    return checked_canvas(g, [
        checked_region(_require_object(r, f"regions[{i}]", "rect, distance, color, ..."), f"regions[{i}]")
        for i, r in enumerate(regions)])


def _comfy_color(value: Any, path: str):
    rgb = as_rgb_triple(value)
    if rgb is None:
        raise CanvasError(f"{path}.color: must be [r, g, b] with integers 0-255, got {quoted(value)}")
    return color_name_of(rgb) or rgb


def _from_comfyui(items: list) -> Canvas:
    """Prefixes[-1] becomes the description (prefixes[0] for the global element), suffixes the detailed
    descriptions; distances n, n-1, ..., 1 keep the far-to-near order."""
    if not items:
        raise CanvasError("the ComfyUI list is empty (it needs the global element first)")
    check_region_count(len(items) - 1, "ComfyUI list")
    parsed = []
    for i, item in enumerate(items):
        path = f"[{i}]"
        _require_object(item, path, "rect, prefixes, suffixes and color")
        for key in ("rect", "prefixes", "suffixes", "color"):
            if key not in item:
                raise CanvasError(f"{path}.{key}: missing")
        prefixes = check_lines(item["prefixes"], f"{path}.prefixes")
        parsed.append((check_rect(item["rect"], f"{path}.rect"), prefixes,
                       check_lines(item["suffixes"], f"{path}.suffixes"), _comfy_color(item["color"], path)))
    (_, g_prefixes, g_suffixes, g_color), regions = parsed[0], parsed[1:]
    g = checked_global({"description": g_prefixes[0] if g_prefixes else "", "detailed_descriptions": g_suffixes,
                        "color": g_color})
    n = len(regions)
    return checked_canvas(g, [
        checked_region({"rect": rect, "distance": n - k, "description": prefixes[-1] if prefixes else "",
                        "detailed_descriptions": suffixes, "color": color},
                       f"[{k + 1}]")
        for k, (rect, prefixes, suffixes, color) in enumerate(regions)])


def canvas_from_json(obj: Any) -> Canvas:
    """A validated Canvas from our JSON form (a dict) or the ComfyUI_omost list form."""
    if isinstance(obj, list):
        return _from_comfyui(obj)
    if isinstance(obj, dict):
        return _from_ours(obj)
    raise CanvasError(f'the canvas must be a JSON object {{"format": "{FORMAT}", ...}} or the ComfyUI list '
                      f"form, got {type(obj).__name__}")


class OversizedInteger:
    """A JSON integer too long to be a canvas number (it would trip Python's int conversion limit); it fails
    validation like any other bad value, so the error names its field."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


MAX_INT_DIGITS = 30     # any canvas number is at most MAX_NUMBER (10 digits)


def _json_int(digits: str):
    return OversizedInteger(digits) if len(digits) > MAX_INT_DIGITS else int(digits)


def parse_json(text: str) -> Any:
    """``json.loads`` with every failure as a CanvasError; integers too long for a canvas are kept as
    OversizedInteger for validation to name their field."""
    try:
        return json.loads(text, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise CanvasError(f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise CanvasError("invalid JSON: nested too deeply") from None


def load_canvas_text(text: str) -> ParseResult:
    """Any canvas text: JSON (either form) when it starts with { or [, else an LLM answer or bare code."""
    if not isinstance(text, str):
        raise CanvasError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_INPUT_CHARS:
        raise CanvasError(f"the canvas text is too long ({len(text)} characters; at most {MAX_INPUT_CHARS})")
    stripped = text.lstrip()
    if not stripped.startswith(("{", "[")):
        return parse_answer(text)
    obj = parse_json(text)
    canvas = canvas_from_json(obj)
    comfy_note = ("read the ComfyUI_omost list form: tags, atmosphere, style and quality_meta are part of the "
                  "detailed descriptions there, and placements are free rectangles")
    notes = [comfy_note] if isinstance(obj, list) else []
    return ParseResult(canvas=canvas, truncated=False, notes=notes)
