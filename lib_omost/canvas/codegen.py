"""A canvas as canonical Omost code: the program an Omost model writes, so an edited canvas can be handed
back to the LLM as its previous answer.

The language only has location/offset/area phrases and colour names, so a free (edited) rectangle is
written as the triple whose box overlaps it best, an (r, g, b) colour as the nearest colour name, and the
per-region weight is not written. A canvas without those parses back to itself.
"""

from __future__ import annotations

import re

from lib_omost.canvas.colors import Color, nearest_color_name
from lib_omost.canvas.geometry import nearest_location
from lib_omost.canvas.model import Canvas, Region
from lib_omost.canvas.parser import GLOBAL_METHOD, LOCAL_METHOD

_INDENT = "    "


def _color_name(color: Color) -> str:
    return color if isinstance(color, str) else nearest_color_name(color)


def _comment(text: str) -> str:
    """One comment line from free text (newlines and runs of spaces collapsed)."""
    return re.sub(r"\s+", " ", text).strip()


def _argument_lines(name: str, value) -> list[str]:
    if isinstance(value, list):
        return [f"{_INDENT}{name}=["] + [f"{_INDENT * 2}{item!r}," for item in value] + [f"{_INDENT}],"]
    return [f"{_INDENT}{name}={value!r},"]


def _call(method: str, arguments: list[tuple[str, object]]) -> list[str]:
    lines = [f"canvas.{method}("]
    for name, value in arguments:
        lines += _argument_lines(name, value)
    return lines + [")"]


def _placement(region: Region) -> tuple[str, str, str]:
    if region.location is not None and region.offset is not None and region.area is not None:
        return region.location, region.offset, region.area
    return nearest_location(region.rect)


def canvas_to_code(canvas: Canvas) -> str:
    """The canonical Omost program for ``canvas`` (no fences), regions in program order."""
    g = canvas.global_region
    lines = ["# Initialize the canvas", "canvas = Canvas()", "", "# Set a global description for the canvas"]
    lines += _call(GLOBAL_METHOD, [("description", g.description),
                                   ("detailed_descriptions", list(g.detailed_descriptions)),
                                   ("tags", g.tags), ("HTML_web_color_name", _color_name(g.color))])
    for region in canvas.regions:
        location, offset, area = _placement(region)
        summary = _comment(region.description)
        lines += ["", f"# Add {summary[:1].lower() + summary[1:]}" if summary else "# Add a region"]
        lines += _call(LOCAL_METHOD, [
            ("location", location), ("offset", offset), ("area", area),
            ("distance_to_viewer", float(region.distance)), ("description", region.description),
            ("detailed_descriptions", list(region.detailed_descriptions)), ("tags", region.tags),
            ("atmosphere", region.atmosphere), ("style", region.style), ("quality_meta", region.quality_meta),
            ("HTML_web_color_name", _color_name(region.color))])
    return "\n".join(lines) + "\n"
