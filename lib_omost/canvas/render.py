"""Pictures of a canvas: Omost's colour preview, and an overlay of labelled region boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lib_omost.canvas.colors import color_rgb
from lib_omost.canvas.geometry import pixels_inside
from lib_omost.canvas.model import Canvas, ordered_indices, region_masks

PREVIEW_MIX = 0.7  # each region paints 0.7 * its colour + 0.3 * what lies below
FILL_ALPHA = 0.35  # overlay: how strongly a box tints what lies below
SHEET_GAP = 8


def _check_size(width: int, height: int) -> None:
    if not (isinstance(width, int) and isinstance(height, int) and 1 <= width <= 8192 and 1 <= height <= 8192):
        raise ValueError(f"image size must be integers in [1, 8192], got {width} x {height}")


def _blend(masks: np.ndarray, colors: list, base: np.ndarray, alpha: float) -> np.ndarray:
    """base (float [h, w, 3]) with each mask painted in turn as alpha * colour + (1 - alpha) * below."""
    image = base.astype(np.float64)
    for mask, color in zip(masks, colors):
        image[mask] = alpha * np.asarray(color_rgb(color), np.float64) + (1.0 - alpha) * image[mask]
    return np.rint(image).clip(0, 255).astype(np.uint8)


def color_preview(canvas: Canvas, width: int, height: int) -> Image.Image:
    """Omost's colour composite: the global colour, then the regions far → near, each painting
    0.7 * colour + 0.3 * below inside its rect (float throughout, rounded once to uint8)."""
    _check_size(width, height)
    masks = region_masks(canvas, height, width)
    base = np.empty((height, width, 3), np.float64)
    base[:] = color_rgb(canvas.global_region.color)
    colors = [canvas.regions[i].color for i in ordered_indices(canvas)]
    return Image.fromarray(_blend(masks[1:], colors, base, PREVIEW_MIX), "RGB")


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb`` (Rec. 601 luma)."""
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] >= 140 else (255, 255, 255)


def _label_text(number: int, description: str, font: ImageFont.ImageFont, max_width: float) -> str:
    """'<number> <description>' shortened with '...' to fit max_width pixels (at least the number)."""
    words = " ".join(description.split()).rstrip(". ")
    text = f"{number} {words}".rstrip()
    if font.getlength(text) <= max_width:
        return text
    while words and font.getlength(f"{number} {words}...") > max_width:
        words = words[:-1]
    return f"{number} {words.rstrip()}..." if words else str(number)


def _boxes(canvas: Canvas, width: int, height: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(program index, pixel box (x0, y0, x1, y1) inclusive) of each region far → near that covers any
    pixel, matching region_masks exactly."""
    boxes = []
    for i in ordered_indices(canvas):
        top, bottom, left, right = canvas.regions[i].rect
        rows = np.flatnonzero(pixels_inside(height, top, bottom))
        cols = np.flatnonzero(pixels_inside(width, left, right))
        if rows.size and cols.size:
            boxes.append((i, (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))))
    return boxes


def overlay_image(canvas: Canvas, width: int, height: int, background: Image.Image | None = None) -> Image.Image:
    """Region boxes over the global colour (or over ``background``, resized to width x height): each box
    tinted with its colour, outlined in its colour with a thin black/white inner line, and labelled
    '<number> <description>' (numbers are program order, 1-based). Nearer boxes and labels are on top."""
    _check_size(width, height)
    if background is None:
        base = np.empty((height, width, 3), np.uint8)
        base[:] = color_rgb(canvas.global_region.color)
    else:
        base = np.asarray(background.convert("RGB").resize((width, height), Image.BILINEAR))
    masks = region_masks(canvas, height, width)[1:]
    order = ordered_indices(canvas)
    image = Image.fromarray(_blend(masks, [canvas.regions[i].color for i in order], base, FILL_ALPHA), "RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, round(min(width, height) / 256))
    boxes = _boxes(canvas, width, height)
    for i, (x0, y0, x1, y1) in boxes:
        rgb = color_rgb(canvas.regions[i].color)
        draw.rectangle((x0, y0, x1, y1), outline=rgb, width=line)
        if x1 - x0 > 2 * line and y1 - y0 > 2 * line:
            draw.rectangle((x0 + line, y0 + line, x1 - line, y1 - line), outline=_contrast(rgb), width=1)
    font = ImageFont.load_default()
    placed: list[tuple[int, int, int, int]] = []
    for i, (x0, y0, x1, y1) in boxes:
        rgb = color_rgb(canvas.regions[i].color)
        text = _label_text(i + 1, canvas.regions[i].description, font, x1 - x0 - 2 * line - 4)
        _, _, tx1, ty1 = font.getbbox(text)
        w, h = tx1 + 4, ty1 + 3
        x, y = x0 + line + 1, y0 + line + 1
        while any(x < px1 and px0 < x + w and y < py1 and py0 < y + h for px0, py0, px1, py1 in placed) \
                and y + 2 * h <= y1:
            y += h  # step below a label already there
        placed.append((x, y, x + w, y + h))
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=rgb)
        draw.text((x + 2, y + 1), text, fill=_contrast(rgb), font=font)
    return image


def layout_sheet(canvas: Canvas, width: int, height: int) -> Image.Image:
    """The colour preview and the overlay side by side (what the CLI writes as its PNG)."""
    sheet = Image.new("RGB", (2 * width + SHEET_GAP, height), (255, 255, 255))
    sheet.paste(color_preview(canvas, width, height), (0, 0))
    sheet.paste(overlay_image(canvas, width, height), (width + SHEET_GAP, 0))
    return sheet
