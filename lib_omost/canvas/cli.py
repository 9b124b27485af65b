"""``omost layout [INPUT]`` (or ``python -m lib_omost layout``): show a canvas as a table and a character map,
and write its preview PNG and JSON forms. INPUT is an LLM answer, canvas code, or canvas JSON (ours or the
ComfyUI_omost list); ``-`` reads stdin; without INPUT the built-in example canvas is shown."""

from __future__ import annotations

import argparse
import json
import sys

from lib_omost.canvas.codegen import canvas_to_code
from lib_omost.canvas.colors import color_label
from lib_omost.canvas.example import example_canvas
from lib_omost.canvas.jsonio import COMFYUI_DROPS_NEGATIVES, canvas_to_comfyui, canvas_to_json, load_canvas_text
from lib_omost.canvas.model import MAX_INPUT_CHARS, Canvas, CanvasError, has_negatives, ordered_indices, region_masks
from lib_omost.canvas.parser import ParseResult
from lib_omost.canvas.render import check_layout_size, layout_sheet
from lib_omost.terminal import printable

DESCRIPTION_WIDTH = 60
MAP_COLS, MAP_ROWS = 60, 30  # terminal cells are about twice as tall as wide: a square canvas
_SYMBOLS = "123456789abcdefghijklmnopqrstuvwxyz"


def _number(v: float) -> str:
    return f"{v:g}"


def _short(text: str, width: int) -> str:
    """One table cell: whitespace collapsed, control characters escaped (terminal.printable), shortened."""
    text = printable(" ".join(text.split()), one_line=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def _symbol(index: int) -> str:
    return _SYMBOLS[index] if index < len(_SYMBOLS) else "*"


def _table_number(index: int) -> str:
    """A region's number (1-based program order, as in the editor and the overlay labels), with its map
    symbol where that is not the same digit."""
    number, symbol = str(index + 1), _symbol(index)
    return number if symbol == number else f"{number} ({symbol})"


def format_region_table(canvas: Canvas) -> str:
    """The global region (G) and the regions (numbered in program order, as in the editor and the overlay
    labels) as an aligned text table: distance, rect, colour, placement, description."""
    g = canvas.global_region
    rows = [("#", "distance", "rect [t, b, l, r]", "colour", "placement", "description"),
            ("G", "-", "[0, 90, 0, 90]", color_label(g.color), "whole canvas", _short(g.description, DESCRIPTION_WIDTH))]
    for i, r in enumerate(canvas.regions):
        placement = (f"{r.location}, {r.offset}, {r.area}" if None not in (r.location, r.offset, r.area)
                     else "free rectangle")
        rect = "[" + ", ".join(_number(v) for v in r.rect) + "]"
        rows.append((_table_number(i), _number(r.distance), rect, color_label(r.color), placement,
                     _short(r.description, DESCRIPTION_WIDTH)))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_region_map(canvas: Canvas, cols: int = MAP_COLS, rows: int = MAP_ROWS) -> str:
    """A character picture of the layout: each cell shows the nearest region covering it (its table
    symbol), '.' where only the global region is."""
    masks = region_masks(canvas, rows, cols)[1:]
    symbols = [_symbol(i) for i in ordered_indices(canvas)]
    grid = [["."] * cols for _ in range(rows)]
    for mask, symbol in zip(masks, symbols):  # far → near: nearer regions overwrite
        for y, x in zip(*mask.nonzero()):
            grid[y][x] = symbol
    border = "+" + "-" * cols + "+"
    return "\n".join([border] + ["|" + "".join(row) + "|" for row in grid] + [border])


def write_canvas_outputs(canvas: Canvas, png: str | None = None, json_path: str | None = None,
                         comfyui: str | None = None, code: str | None = None, width: int = 512,
                         height: int = 512) -> list[str]:
    """Write the preview/overlay PNG, our JSON, the ComfyUI_omost list JSON and the canonical code for
    whichever paths are given; returns the paths written."""
    written = []
    if png:
        layout_sheet(canvas, width, height).save(png, format="PNG")
        written.append(png)
    for path, payload in ((json_path, canvas_to_json), (comfyui, canvas_to_comfyui)):
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(payload(canvas), f, indent=2, ensure_ascii=False)
                f.write("\n")
            written.append(path)
    if code:
        with open(code, "w", encoding="utf-8") as f:
            f.write(canvas_to_code(canvas))
        written.append(code)
    return written


LAYOUT_EXAMPLES = """examples:
  omost layout                                  the built-in example canvas
  omost layout answer.md --png layout.png --json canvas.json --comfyui comfy.json
  cat answer.md | omost layout - --code canvas.py"""


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omost layout", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show an Omost canvas (LLM answer, canvas code, or JSON) as a table and a map, and write "
                    "its preview PNG and JSON forms. The answer is parsed, never executed.",
        epilog=LAYOUT_EXAMPLES)
    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="file with an LLM answer, canvas code, our canvas JSON or the ComfyUI_omost list; "
                             "'-' reads stdin; omitted: the built-in example canvas")
    parser.add_argument("--png", metavar="OUT.png", help="write the colour preview and the labelled overlay")
    parser.add_argument("--json", metavar="OUT.json", help="write our JSON form (omost-canvas v1)")
    parser.add_argument("--comfyui", metavar="OUT.json", help="write the ComfyUI_omost list form")
    parser.add_argument("--code", metavar="OUT.py", help="write the canonical Omost code (for the LLM)")
    parser.add_argument("--width", type=int, default=512,
                        help="PNG panel width in pixels (default 512; see the README for the size limits)")
    parser.add_argument("--height", type=int, default=512, help="PNG panel height in pixels (default 512)")
    return parser.parse_args(argv)


def _read(source: str) -> ParseResult:
    limit = 4 * MAX_INPUT_CHARS     # UTF-8 needs at most 4 bytes a character
    if source == "-":
        raw = sys.stdin.buffer.read(limit + 1)
    else:
        with open(source, "rb") as f:
            raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CanvasError(f"more than {limit} bytes: a canvas text has at most {MAX_INPUT_CHARS} characters")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CanvasError(f"not UTF-8 text (byte {exc.start})") from None
    return load_canvas_text(text)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(list(sys.argv[1:] if argv is None else argv))
    name = "stdin" if args.input == "-" else args.input
    try:
        result = _read(args.input) if args.input else ParseResult(example_canvas())
    except CanvasError as exc:
        print(printable(f"error: {name}: {exc}"), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    canvas = result.canvas
    if args.png:
        try:
            check_layout_size(args.width, args.height, len(canvas.regions))
        except ValueError as exc:
            print(f"error: --width/--height: {exc}", file=sys.stderr)
            return 2
    print("built-in example canvas" if not args.input else f"canvas from {name}")
    print(format_region_table(canvas))
    print(format_region_map(canvas))
    for note in result.notes:
        print(printable(f"note: {note}"))
    if args.comfyui and has_negatives(canvas):
        print(f"note: {COMFYUI_DROPS_NEGATIVES}")
    try:
        written = write_canvas_outputs(canvas, png=args.png, json_path=args.json, comfyui=args.comfyui,
                                       code=args.code, width=args.width, height=args.height)
    except OSError as exc:
        print(f"error: cannot write {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
