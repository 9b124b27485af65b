"""Pictures of a canvas: Omost's colour preview, and an overlay of labelled region boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lib_omost.canvas.colors import color_rgb
from lib_omost.canvas.geometry import GRID, rect_pixels
from lib_omost.canvas.model import Canvas, ordered_indices

PREVIEW_MIX = 0.7  # each region paints 0.7 * its colour + 0.3 * what lies below
FILL_ALPHA = 0.35  # overlay: how strongly a box tints what lies below
SHEET_GAP = 8
# A picture's working copy is float64 (24 bytes a pixel) and each region repaints at most every pixel once:
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096            # about 400 MB of working memory
MAX_PAINTED = 1 << 28              # width x height x (regions + 1): a few seconds on one core


def check_layout_size(width: int, height: int, regions: int = 0) -> None:
    """ValueError unless a width x height picture of a canvas with ``regions`` regions fits the limits."""
    if not (isinstance(width, int) and isinstance(height, int) and 1 <= width <= MAX_SIDE
            and 1 <= height <= MAX_SIDE):
        raise ValueError(f"image size must be integers in [1, {MAX_SIDE}], got {width} x {height}")
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ValueError(f"a {width} x {height} picture has {pixels} pixels, more than the {MAX_PIXELS} "
                         f"(4096 x 4096) allowed")
    if pixels * (regions + 1) > MAX_PAINTED:
        side = int((MAX_PAINTED / (regions + 1)) ** 0.5)
        raise ValueError(f"a {width} x {height} picture of {regions} regions is too much work (pixels x (regions "
                         f"+ 1) = {pixels * (regions + 1)}, at most {MAX_PAINTED}); with {regions} regions use "
                         f"at most about {side} x {side}")


def _blend(rects: list, colors: list, base: np.ndarray, alpha: float) -> np.ndarray:
    """base ([h, w, 3]) with each rect painted in turn as alpha * colour + (1 - alpha) * below, in float64
    and in place on one channel-first working copy (whatever the number of rects), rounded once to uint8."""
    image = np.array(np.moveaxis(base, -1, 0), dtype=np.float64, order="C")
    for rect, color in zip(rects, colors):
        rows, cols = rect_pixels(rect, *image.shape[1:])
        for channel, value in zip(image, color_rgb(color)):
            view = channel[rows, cols]
            view *= 1.0 - alpha
            view += alpha * float(value)
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(np.moveaxis(image, 0, -1), dtype=np.uint8)


def _far_to_near(canvas: Canvas) -> tuple[list, list]:
    """(rects, colours) of the regions far → near."""
    order = ordered_indices(canvas)
    return [canvas.regions[i].rect for i in order], [canvas.regions[i].color for i in order]


def color_preview(canvas: Canvas, width: int, height: int) -> Image.Image:
    """Omost's colour composite: the global colour, then the regions far → near, each painting
    0.7 * colour + 0.3 * below inside its rect (float throughout, rounded once to uint8)."""
    check_layout_size(width, height, len(canvas.regions))
    base = np.empty((height, width, 3), np.float64)
    base[:] = color_rgb(canvas.global_region.color)
    return Image.fromarray(_blend(*_far_to_near(canvas), base, PREVIEW_MIX), "RGB")


def omost_initial_colours(canvas: Canvas) -> np.ndarray:
    """[90, 90, 3] uint8: the colour image Omost's app starts its initial latent from, to the bit. Like
    ``color_preview`` at 90 x 90, but as the app computes it: a float32 image, each region's
    0.7 * colour + 0.3 * below summed in float64 (0.3 * below in float32) and stored back in float32, and the
    result truncated to uint8 where the preview rounds (so a channel is at most one level lower)."""
    image = np.empty((GRID, GRID, 3), np.float32)
    image[:] = color_rgb(canvas.global_region.color)
    keep = np.float32(1.0 - PREVIEW_MIX)
    for rect, color in zip(*_far_to_near(canvas)):
        rows, cols = rect_pixels(rect, GRID, GRID)
        painted = PREVIEW_MIX * np.asarray(color_rgb(color), np.float64)
        image[rows, cols] = painted + (keep * image[rows, cols]).astype(np.float64)
    return np.clip(image, 0, 255).astype(np.uint8)


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``rgb`` (Rec. 601 luma)."""
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] >= 140 else (255, 255, 255)


def _label_text(number: int, description: str, font: ImageFont.ImageFont, max_width: float) -> str:
    """'<number> <description>' shortened with '...' to fit max_width pixels (at least the number)."""
    words = " ".join(description.split()).rstrip(". ")
    text = f"{number} {words}".rstrip()
    if font.getlength(text) <= max_width:
        return text
    fits, longer = 0, len(words)        # binary search: the longest cut words[:k] whose label fits
    while fits < longer:
        k = (fits + longer + 1) // 2
        if font.getlength(f"{number} {words[:k]}...") <= max_width:
            fits = k
        else:
            longer = k - 1
    return f"{number} {words[:fits].rstrip()}..." if fits else str(number)


def _boxes(canvas: Canvas, width: int, height: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(program index, pixel box (x0, y0, x1, y1) inclusive) of each region far → near that covers any
    pixel, matching region_masks exactly."""
    boxes = []
    for i in ordered_indices(canvas):
        rows, cols = rect_pixels(canvas.regions[i].rect, height, width)
        if rows.stop > rows.start and cols.stop > cols.start:
            boxes.append((i, (cols.start, rows.start, cols.stop - 1, rows.stop - 1)))
    return boxes


def overlay_image(canvas: Canvas, width: int, height: int, background: Image.Image | None = None) -> Image.Image:
    """Region boxes over the global colour (or over ``background``, resized to width x height): each box
    tinted with its colour, outlined in its colour with a thin black/white inner line, and labelled
    '<number> <description>' (numbers are program order, 1-based). Nearer boxes and labels are on top."""
    check_layout_size(width, height, len(canvas.regions))
    if background is None:
        base = np.empty((height, width, 3), np.uint8)
        base[:] = color_rgb(canvas.global_region.color)
    else:
        base = np.asarray(background.convert("RGB").resize((width, height), Image.BILINEAR))
    image = Image.fromarray(_blend(*_far_to_near(canvas), base, FILL_ALPHA), "RGB")
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
