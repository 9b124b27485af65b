"""The canvas data model: a global region and local regions, their validation, and the far → near order."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib_omost.canvas.colors import Color, as_rgb_triple, color_rgb
from lib_omost.canvas.geometry import AREAS, FULL_RECT, GRID, LOCATIONS, OFFSETS, rect_from_location, rect_mask
from lib_omost.quoting import quoted

# Limits far above real canvases (an Omost answer is ~7,000 characters, its longest string ~600, its text
# ~5,000 characters in ~10 regions); they bound the memory and time one canvas can take.
MAX_INPUT_CHARS = 1_000_000  # an LLM answer, canvas code or canvas JSON
MAX_TEXT_CHARS = 10_000  # one description, tag list, ...
MAX_CANVAS_TEXT_CHARS = 100_000  # all texts of one canvas together
MAX_LINES = 200  # detailed descriptions per region
MAX_REGIONS = 500
MAX_NUMBER = 1e9  # |x| of any number (rects lie in [0, 90], weights in [0, 2])
WEIGHT_RANGE = (0.0, 2.0)

TEXT_FIELDS = ("description", "tags", "atmosphere", "style", "quality_meta")
NEGATIVE = "negative"       # a user's negative prompt for a region (not Omost's: the LLM never writes it)


class CanvasError(ValueError):
    """Bad canvas input (code, JSON or values): what was rejected and, for text input, on which line."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass
class GlobalRegion:
    description: str = ""
    detailed_descriptions: list[str] = field(default_factory=list)
    tags: str = ""
    color: Color = "white"
    negative: str = ""          # added to the WebUI's negative prompt everywhere
    loras: list[dict] = field(default_factory=list)     # [{"name", "weight"[, "te", "unet"]}]


@dataclass(kw_only=True)
class Region:
    """A local region. ``rect`` is (top, bottom, left, right) on the 90 x 90 grid, end-exclusive.
    location/offset/area are the phrases the rect came from, or None for a free (edited) rectangle."""
    rect: tuple[float, float, float, float]
    distance: float
    description: str = ""
    detailed_descriptions: list[str] = field(default_factory=list)
    tags: str = ""
    atmosphere: str = ""
    style: str = ""
    quality_meta: str = ""
    color: Color = "white"
    location: str | None = None
    offset: str | None = None
    area: str | None = None
    weight: float = 1.0
    negative: str = ""          # the negative prompt inside this region (added to the global one)
    loras: list[dict] = field(default_factory=list)     # [{"name", "weight"[, "te", "unet"]}]


@dataclass
class Canvas:
    global_region: GlobalRegion = field(default_factory=GlobalRegion)
    regions: list[Region] = field(default_factory=list)


def located_region(location: str, offset: str, area: str, distance: float, **texts: Any) -> Region:
    """A region placed by an Omost location/offset/area triple (its rect is the geometry they imply)."""
    return Region(rect=rect_from_location(location, offset, area), distance=distance, location=location,
                  offset=offset, area=area, **texts)


def ordered_indices(canvas: Canvas) -> list[int]:
    """Program indices of the regions far → near (distance descending, ties keep program order)."""
    return sorted(range(len(canvas.regions)), key=lambda i: -canvas.regions[i].distance)


def ordered_regions(canvas: Canvas) -> list[Region]:
    """The regions far → near: the one rendering/encoding order every consumer uses."""
    return [canvas.regions[i] for i in ordered_indices(canvas)]


def region_masks(canvas: Canvas, h: int, w: int) -> np.ndarray:
    """Boolean [1 + R, h, w]: the global region (all True), then the regions far → near. Pixel (i, j) is
    inside (t, b, l, r) iff t <= (i + 0.5) * 90 / h < b and l <= (j + 0.5) * 90 / w < r."""
    rects = [FULL_RECT] + [r.rect for r in ordered_regions(canvas)]
    return np.stack([rect_mask(rect, h, w) for rect in rects])


# ---- validation (shared by the JSON loader and validate_canvas) ------------------------------------

def is_number(value: Any) -> bool:
    """A real number (not a bool) with |value| <= MAX_NUMBER: compared without converting, so NaN, infinities
    and integers of any size are refused without an OverflowError."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and -MAX_NUMBER <= value <= MAX_NUMBER


def text_problem(value: str) -> str | None:
    """What makes a canvas string unusable (too long, or not encodable text), or None."""
    if len(value) > MAX_TEXT_CHARS:
        return f"text of {len(value)} characters is too long (at most {MAX_TEXT_CHARS})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"character {exc.start} is a lone surrogate {quoted(value[exc.start])}, which is not text "
                "(in JSON, a character beyond U+FFFF is written as a pair of \\uXXXX escapes)")
    return None


def _plain_number(value: numbers.Real) -> float:
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_text(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CanvasError(f"{path}: must be a string, got {quoted(value)}")
    problem = text_problem(value)
    if problem:
        raise CanvasError(f"{path}: {problem}")
    return value


def check_lines(value: Any, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) for s in value):
        raise CanvasError(f"{path}: must be a list of strings, got {quoted(value)}")
    if len(value) > MAX_LINES:
        raise CanvasError(f"{path}: {len(value)} entries is too many (at most {MAX_LINES})")
    return [check_text(s, f"{path}[{i}]") for i, s in enumerate(value)]


def check_color(value: Any, path: str) -> Color:
    """A colour name stored lower-case, or an (r, g, b) tuple."""
    try:
        color_rgb(value)
    except (ValueError, TypeError) as exc:
        raise CanvasError(f"{path}: {exc}") from None
    return value.lower() if isinstance(value, str) else as_rgb_triple(value)


def check_rect(value: Any, path: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(is_number(v) for v in value):
        raise CanvasError(f"{path}: must be [top, bottom, left, right] (4 numbers), got {quoted(value)}")
    if not all(0 <= v <= GRID for v in value):
        raise CanvasError(f"{path}: numbers must lie in [0, {GRID}], got {quoted(value)}")
    top, bottom, left, right = value
    if not (top < bottom and left < right):
        raise CanvasError(f"{path}: needs top < bottom and left < right, got {quoted(value)}")
    return tuple(_plain_number(v) for v in value)


def check_distance(value: Any, path: str) -> float:
    if not is_number(value) or not value > 0:
        raise CanvasError(f"{path}: must be a number > 0 and at most {MAX_NUMBER:g} (larger = farther), "
                          f"got {quoted(value)}")
    return float(value)


def check_weight(value: Any, path: str) -> float:
    low, high = WEIGHT_RANGE
    if value is None:
        return 1.0
    if not is_number(value) or not low <= value <= high:
        raise CanvasError(f"{path}: must be a number in [{low:g}, {high:g}], got {quoted(value)}")
    return float(value)


def check_loras(value: Any, path: str) -> list[dict]:
    """A region's LoRA list: objects with a "name" and a "weight" (optional "te" / "unet" weights)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LINES:
        raise CanvasError(f"{path}: must be a list (at most {MAX_LINES}) of {{\"name\": ..., \"weight\": ...}}, "
                          f"got {quoted(value)}")
    checked = []
    for i, entry in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise CanvasError(f"{where}: must be {{\"name\": \"lora name\", \"weight\": 0.8}}, got {quoted(entry)}")
        unknown = sorted(set(entry) - {"name", "weight", "te", "unet"})
        if unknown:
            raise CanvasError(f"{where}.{unknown[0]}: unknown key (allowed: name, weight, te, unet)")
        numbers = {k: entry.get(k, 1.0) if k == "weight" else entry[k] for k in ("weight", "te", "unet")
                   if k == "weight" or k in entry}
        for key, number in numbers.items():
            if not is_number(number):
                raise CanvasError(f"{where}.{key}: must be a number, got {quoted(number)}")
        checked.append({"name": check_text(entry["name"], f"{where}.name").strip(),
                        **{k: _plain_number(v) for k, v in numbers.items()}})
    return checked


def check_placement(location: Any, offset: Any, area: Any, rect: tuple, path: str) -> tuple:
    """location/offset/area: each null or an allowed phrase; when all three are set, rect must be theirs."""
    for key, value, table in (("location", location, LOCATIONS), ("offset", offset, OFFSETS),
                              ("area", area, AREAS)):
        if value is not None and (not isinstance(value, str) or value not in table):
            raise CanvasError(f"{path}.{key}: must be null or one of {', '.join(map(repr, table))}; "
                              f"got {quoted(value)}")
    if location is not None and offset is not None and area is not None:
        implied = rect_from_location(location, offset, area)
        if tuple(rect) != implied:
            raise CanvasError(f"{path}.rect: {list(rect)} differs from {list(implied)} implied by "
                              f"location/offset/area (set them to null for a free rectangle)")
    return location, offset, area


def checked_global(fields: Mapping[str, Any], path: str = "global") -> GlobalRegion:
    """A GlobalRegion from a mapping with its field names (text fields may be missing)."""
    if "color" not in fields:
        raise CanvasError(f"{path}.color: missing (an HTML colour name or [r, g, b])")
    return GlobalRegion(description=check_text(fields.get("description"), f"{path}.description"),
                        detailed_descriptions=check_lines(fields.get("detailed_descriptions"),
                                                          f"{path}.detailed_descriptions"),
                        tags=check_text(fields.get("tags"), f"{path}.tags"),
                        color=check_color(fields["color"], f"{path}.color"),
                        negative=check_text(fields.get(NEGATIVE), f"{path}.{NEGATIVE}"),
                        loras=check_loras(fields.get("loras"), f"{path}.loras"))


def checked_region(fields: Mapping[str, Any], path: str) -> Region:
    """A Region from a mapping with its field names (text fields, placement and weight may be missing)."""
    for key in ("rect", "distance", "color"):
        if key not in fields:
            raise CanvasError(f"{path}.{key}: missing")
    rect = check_rect(fields["rect"], f"{path}.rect")
    location, offset, area = check_placement(fields.get("location"), fields.get("offset"),
                                             fields.get("area"), rect, path)
    return Region(rect=rect, distance=check_distance(fields["distance"], f"{path}.distance"),
                  detailed_descriptions=check_lines(fields.get("detailed_descriptions"),
                                                    f"{path}.detailed_descriptions"),
                  color=check_color(fields["color"], f"{path}.color"),
                  location=location, offset=offset, area=area,
                  weight=check_weight(fields.get("weight"), f"{path}.weight"),
                  negative=check_text(fields.get(NEGATIVE), f"{path}.{NEGATIVE}"),
                  loras=check_loras(fields.get("loras"), f"{path}.loras"),
                  **{k: check_text(fields.get(k), f"{path}.{k}") for k in TEXT_FIELDS})


def check_region_count(count: int, path: str = "regions") -> None:
    if count > MAX_REGIONS:
        raise CanvasError(f"{path}: {count} regions is too many (at most {MAX_REGIONS})")


def global_text_chars(g: GlobalRegion) -> int:
    return len(g.description) + len(g.tags) + len(g.negative) + sum(map(len, g.detailed_descriptions))


def region_text_chars(region: Region) -> int:
    return (sum(len(getattr(region, k)) for k in TEXT_FIELDS) + len(region.negative)
            + sum(map(len, region.detailed_descriptions)))


def has_negatives(canvas: Canvas) -> bool:
    """Whether any region (or the global one) carries its own negative prompt."""
    return any(r.negative for r in [canvas.global_region, *canvas.regions])


def canvas_text_chars(canvas: Canvas) -> int:
    """Characters of all texts of a canvas (what its prompts are made of)."""
    return global_text_chars(canvas.global_region) + sum(region_text_chars(r) for r in canvas.regions)


def check_text_total(chars: int, line: int | None = None) -> None:
    if chars > MAX_CANVAS_TEXT_CHARS:
        raise CanvasError(f"the canvas holds {chars} characters of text, more than the {MAX_CANVAS_TEXT_CHARS} "
                          "allowed for one canvas (shorten the descriptions or use fewer regions)", line)


def checked_canvas(global_region: GlobalRegion, regions: list[Region]) -> Canvas:
    """A Canvas of validated regions, its total text within MAX_CANVAS_TEXT_CHARS."""
    canvas = Canvas(global_region=global_region, regions=regions)
    check_text_total(canvas_text_chars(canvas))
    return canvas


def validate_canvas(canvas: Canvas) -> Canvas:
    """A validated, normalised copy of ``canvas`` (colour names lower-case, rects as tuples);
    raises CanvasError naming the first bad field (e.g. ``regions[2].rect: ...``)."""
    if not isinstance(canvas, Canvas):
        raise CanvasError(f"expected a Canvas, got {type(canvas).__name__}")
    if not isinstance(canvas.regions, list):
        raise CanvasError(f"regions: must be a list, got {quoted(canvas.regions)}")
    check_region_count(len(canvas.regions))
    if not isinstance(canvas.global_region, GlobalRegion):
        raise CanvasError(f"global: must be a GlobalRegion, got {quoted(canvas.global_region)}")
    for i, region in enumerate(canvas.regions):
        if not isinstance(region, Region):
            raise CanvasError(f"regions[{i}]: must be a Region, got {quoted(region)}")
    return checked_canvas(checked_global(_fields_of(canvas.global_region)),
                          [checked_region(_fields_of(r), f"regions[{i}]") for i, r in enumerate(canvas.regions)])


def _fields_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}

