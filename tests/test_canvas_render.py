"""Colour preview and overlay: pixel checks at several sizes."""

import numpy as np
import pytest
from PIL import Image

from lib_omost.canvas import (
    Canvas,
    GlobalRegion,
    Region,
    color_preview,
    color_rgb,
    example_canvas,
    layout_sheet,
    overlay_image,
    region_masks,
)
from lib_omost.canvas.render import FILL_ALPHA, PREVIEW_MIX


def overlap_canvas():
    """A near region (listed first) overlapping a far one, and a free rect; the bottom-right is global only."""
    return Canvas(GlobalRegion(color="darkslategray"), [
        Region(rect=(30, 60, 30, 60), distance=2.0, color="gold", description="Near box."),
        Region(rect=(0, 45, 0, 45), distance=8.0, color="firebrick", description="Far box."),
        Region(rect=(70.5, 80.25, 2, 20), distance=5.0, color=(10, 200, 30), description="Free."),
    ])


def mix(color, below, a):
    return a * np.asarray(color_rgb(color), np.float64) + (1 - a) * np.asarray(below, np.float64)


@pytest.mark.parametrize("width, height", [(90, 90), (64, 48), (31, 77)])
def test_preview_is_the_far_to_near_composite(width, height):
    canvas = overlap_canvas()
    image = color_preview(canvas, width, height)
    assert image.mode == "RGB" and image.size == (width, height)
    pixels = np.asarray(image)
    # independent reference: float composite, far → near, rounded once
    masks = region_masks(canvas, height, width)
    expected = np.empty((height, width, 3))
    expected[:] = color_rgb("darkslategray")
    for region in sorted(canvas.regions, key=lambda r: -r.distance):
        inside = masks[0] & np.outer(
            [(region.rect[0] <= (i + 0.5) * 90 / height < region.rect[1]) for i in range(height)],
            [(region.rect[2] <= (j + 0.5) * 90 / width < region.rect[3]) for j in range(width)])
        expected[inside] = 0.7 * np.asarray(color_rgb(region.color)) + 0.3 * expected[inside]
    assert np.array_equal(pixels, np.rint(expected).astype(np.uint8))


def test_preview_pixels_by_hand():
    pixels = np.asarray(color_preview(overlap_canvas(), 90, 90)).astype(int)
    g = color_rgb("darkslategray")
    far = mix("firebrick", g, PREVIEW_MIX)
    assert tuple(pixels[85, 85]) == g  # global only
    assert tuple(pixels[10, 10]) == tuple(np.rint(far).astype(int))  # far over global
    assert tuple(pixels[50, 50]) == tuple(np.rint(mix("gold", g, 0.7)).astype(int))  # near over global
    assert tuple(pixels[40, 40]) == tuple(np.rint(mix("gold", far, 0.7)).astype(int))  # near over far
    assert tuple(pixels[75, 10]) == tuple(np.rint(mix((10, 200, 30), g, 0.7)).astype(int))  # free rect, RGB colour
    # free rect rows [70.5, 80.25): pixel centres 69.5 and 80.5 lie outside, 70.5 inside
    assert tuple(pixels[69, 10]) == g and tuple(pixels[80, 10]) == g and tuple(pixels[70, 10]) != g
    assert PREVIEW_MIX == 0.7


def test_overlay_boxes_outlines_labels_and_background():
    canvas = overlap_canvas()
    image = overlay_image(canvas, 180, 180)
    assert image.size == (180, 180) and image.mode == "RGB"
    px = np.asarray(image).astype(int)
    g = color_rgb("darkslategray")
    assert tuple(px[175, 175]) == g  # global colour behind
    # inside the near box, away from its label and outline: the tint over the far box's tint
    far = mix("firebrick", g, FILL_ALPHA)
    assert tuple(px[100, 110]) == tuple(np.rint(mix("gold", g, FILL_ALPHA)).astype(int))
    assert tuple(px[85, 75]) == tuple(np.rint(mix("gold", far, FILL_ALPHA)).astype(int))
    # outlines in the region colour on the box's first/last pixel rows and columns
    assert tuple(px[60, 100]) == color_rgb("gold") and tuple(px[119, 100]) == color_rgb("gold")
    assert tuple(px[100, 60]) == color_rgb("gold") and tuple(px[100, 119]) == color_rgb("gold")
    # the label "1 Near box" sits in the near box's top-left corner on a gold plate, in black text
    plate = px[62:74, 62:110]
    gold, black = np.all(plate == color_rgb("gold"), axis=-1), np.all(plate == 0, axis=-1)
    assert gold.sum() > 200 and black.sum() > 20
    # a background image replaces the global colour
    bg = Image.new("RGB", (40, 40), (1, 2, 3))
    over = np.asarray(overlay_image(canvas, 180, 180, background=bg)).astype(int)
    assert tuple(over[175, 175]) == (1, 2, 3)
    assert tuple(over[100, 110]) == tuple(np.rint(mix("gold", (1, 2, 3), FILL_ALPHA)).astype(int))


def test_overlay_labels_fit_their_boxes_and_tiny_images_work():
    canvas = example_canvas()
    for width, height in ((512, 512), (300, 120), (8, 8), (1, 1)):
        image = overlay_image(canvas, width, height)
        assert image.size == (width, height)
    sheet = layout_sheet(canvas, 200, 150)
    assert sheet.size == (2 * 200 + 8, 150)
    assert np.array_equal(np.asarray(sheet)[:, :200], np.asarray(color_preview(canvas, 200, 150)))
    with pytest.raises(ValueError, match="image size"):
        color_preview(canvas, 0, 10)
