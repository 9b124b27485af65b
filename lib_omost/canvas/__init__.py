"""The Omost canvas without any model: safe parsing of LLM answers (never executed), the data model,
geometry and masks, colour preview and overlay, canonical code and JSON (ours and ComfyUI_omost)."""

from lib_omost.canvas.codegen import canvas_to_code
from lib_omost.canvas.colors import HTML_COLORS, color_rgb
from lib_omost.canvas.example import example_canvas
from lib_omost.canvas.geometry import AREAS, GRID, LOCATIONS, OFFSETS, nearest_location, rect_from_location
from lib_omost.canvas.jsonio import canvas_from_json, canvas_to_comfyui, canvas_to_json, load_canvas_text
from lib_omost.canvas.model import (
    Canvas,
    CanvasError,
    GlobalRegion,
    Region,
    has_negatives,
    located_region,
    ordered_indices,
    ordered_regions,
    region_masks,
    validate_canvas,
)
from lib_omost.canvas.parser import IncrementalParser, ParseResult, parse_answer
from lib_omost.canvas.render import color_preview, layout_sheet, overlay_image

__all__ = [
    "AREAS", "Canvas", "CanvasError", "GRID", "GlobalRegion", "HTML_COLORS", "IncrementalParser", "LOCATIONS",
    "OFFSETS", "ParseResult", "Region", "canvas_from_json", "canvas_to_code", "canvas_to_comfyui",
    "canvas_to_json", "color_preview", "color_rgb", "example_canvas", "has_negatives", "layout_sheet",
    "load_canvas_text",
    "located_region", "nearest_location", "ordered_indices", "ordered_regions", "overlay_image",
    "parse_answer", "rect_from_location", "region_masks", "validate_canvas",
]
