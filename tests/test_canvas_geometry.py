"""Canvas geometry: the 729 boxes, masks at any size (nearest-exact), free rects, nearest triple."""

import numpy as np
import pytest
import torch

from lib_omost.canvas import (
    AREAS,
    LOCATIONS,
    OFFSETS,
    Canvas,
    GlobalRegion,
    Region,
    located_region,
    nearest_location,
    ordered_regions,
    rect_from_location,
    region_masks,
)
from lib_omost.canvas.geometry import all_location_boxes, rect_mask

# OMOST.md, written out independently of the library's tables
CENTRES = {"center": (45, 45), "left": (15, 45), "right": (75, 45), "top": (45, 15), "bottom": (45, 75),
           "top-left": (15, 15), "top-right": (75, 15), "bottom-left": (15, 75), "bottom-right": (75, 75)}
SHIFTS = {"no offset": (0, 0), "left": (-10, 0), "right": (10, 0), "upper": (0, -10), "lower": (0, 10),
          "upper-left": (-10, -10), "upper-right": (10, -10), "lower-left": (-10, 10), "lower-right": (10, 10)}
SIZES = {"small square": (50, 50), "small vertical": (40, 60), "small horizontal": (60, 40),
         "medium-sized square": (60, 60), "medium-sized vertical": (50, 80), "medium-sized horizontal": (80, 50),
         "large square": (70, 70), "large vertical": (60, 90), "large horizontal": (90, 60)}


def phrase(kind, key):
    if kind == "location":
        return "in the center" if key == "center" else f"on the {key}"
    if kind == "offset":
        return key if key == "no offset" else f"slightly to the {key}"
    return f"a {key} area"


def cells_inside(centre, half):
    """Grid cells k (0..89) whose unit square [k, k+1) lies in [centre - half, centre + half)."""
    return [k for k in range(90) if centre - half <= k and k + 1 <= centre + half]


def test_the_729_boxes_match_the_cell_sets_omost_md_describes():
    boxes = all_location_boxes()
    assert len(boxes) == 729 and len(set(boxes)) == 729
    for loc, (x, y) in CENTRES.items():
        for off, (dx, dy) in SHIFTS.items():
            for size, (w, h) in SIZES.items():
                key = (phrase("location", loc), phrase("offset", off), phrase("area", size))
                top, bottom, left, right = rect_from_location(*key)
                assert boxes[key] == (top, bottom, left, right)
                rows = cells_inside(y + dy, h / 2)
                cols = cells_inside(x + dx, w / 2)
                assert (top, bottom) == (rows[0], rows[-1] + 1), key
                assert (left, right) == (cols[0], cols[-1] + 1), key


def test_omost_md_examples_and_clamping_cuts_without_shifting():
    assert rect_from_location("on the left", "no offset", "a large horizontal area") == (15, 75, 0, 60)
    assert rect_from_location("on the top-left", "no offset", "a small square area") == (0, 40, 0, 40)
    # centre (5, 5) with a 70 x 70 box: cut to [0, 40) on both axes, not moved to [0, 70)
    assert rect_from_location("on the top-left", "slightly to the upper-left", "a large square area") == (0, 40, 0, 40)
    assert rect_from_location("in the center", "no offset", "a large vertical area") == (0, 90, 15, 75)
    with pytest.raises(ValueError, match="unknown area 'huge'"):
        rect_from_location("in the center", "no offset", "huge")


def test_tables_are_the_documented_vocabulary():
    assert set(LOCATIONS) == {phrase("location", k) for k in CENTRES}
    assert set(OFFSETS) == {phrase("offset", k) for k in SHIFTS}
    assert set(AREAS) == {phrase("area", k) for k in SIZES}


def reference_mask(rect, h, w):
    """Nearest-exact index of output pixel k along an axis of n pixels: floor((k + 0.5) * 90 / n),
    in exact integer arithmetic."""
    top, bottom, left, right = rect
    rows = [top <= ((2 * i + 1) * 90) // (2 * h) < bottom for i in range(h)]
    cols = [left <= ((2 * j + 1) * 90) // (2 * w) < right for j in range(w)]
    return np.outer(rows, cols)


@pytest.mark.parametrize("h, w", [(90, 90), (64, 64), (128, 96), (77, 131), (1, 1), (13, 200), (180, 45),
                                  (27, 9), (135, 270)])
def test_integer_rect_masks_equal_nearest_exact_resizing(h, w):
    rects = [(15, 75, 0, 60), (10, 80, 10, 80), (0, 45, 0, 90), (45, 90, 0, 90), (0, 40, 55, 90), (33, 34, 89, 90)]
    grid = torch.zeros(len(rects), 1, 90, 90)
    for k, (t, b, l, r) in enumerate(rects):
        grid[k, 0, t:b, l:r] = 1
    resized = torch.nn.functional.interpolate(grid, size=(h, w), mode="nearest-exact")[:, 0] > 0.5
    for k, rect in enumerate(rects):
        mask = rect_mask(rect, h, w)
        assert mask.shape == (h, w) and mask.dtype == bool
        assert np.array_equal(mask, reference_mask(rect, h, w)), (rect, h, w)
        if h % 2 == 0 and w % 2 == 0:
            # even sizes put no pixel centre exactly on a grid line, so torch's float32 scale cannot round
            # a tie the other way (at 77 x 131 it does: centre 45.0 of row 38 computes as 44.99...)
            assert np.array_equal(mask, resized[k].numpy()), (rect, h, w)


def test_free_rect_masks_follow_the_pixel_centre_rule():
    rect = (10.5, 47.25, 0.2, 61.9)
    h, w = 40, 70
    mask = rect_mask(rect, h, w)
    for i in range(h):
        for j in range(w):
            cy, cx = (i + 0.5) * 90 / h, (j + 0.5) * 90 / w
            assert mask[i, j] == (rect[0] <= cy < rect[1] and rect[2] <= cx < rect[3])


def test_region_masks_are_global_then_far_to_near():
    canvas = Canvas(GlobalRegion(color="white"), [
        located_region("on the left", "no offset", "a small square area", 2.0, color="red"),
        located_region("on the right", "no offset", "a small square area", 9.0, color="blue"),
        Region(rect=(0, 10, 0, 90), distance=2.0, color="green"),  # ties keep program order
    ])
    masks = region_masks(canvas, 45, 30)
    assert masks.shape == (4, 45, 30) and masks[0].all()
    order = ordered_regions(canvas)
    assert [r.color for r in order] == ["blue", "red", "green"]
    for k, region in enumerate(order, 1):
        assert np.array_equal(masks[k], rect_mask(region.rect, 45, 30))
    assert region_masks(Canvas(), 8, 8).shape == (1, 8, 8)


def test_nearest_location_recovers_every_box_and_approximates_free_rects():
    for key, box in list(all_location_boxes().items())[::7]:
        found = nearest_location(box)
        assert rect_from_location(*found) == box  # several triples can share a clamped box
    assert nearest_location((16, 74, 1, 59)) == ("on the left", "no offset", "a large horizontal area")
