"""Canvas geometry: the 90 x 90 grid, location/offset/area → rect, and region masks at any size.

Rects are (top, bottom, left, right) in grid units, end-exclusive, x to the right and y downward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRID = 90

# centre (x, y) of each location
LOCATIONS: dict[str, tuple[int, int]] = {
    "in the center": (45, 45),
    "on the left": (15, 45),
    "on the right": (75, 45),
    "on the top": (45, 15),
    "on the bottom": (45, 75),
    "on the top-left": (15, 15),
    "on the top-right": (75, 15),
    "on the bottom-left": (15, 75),
    "on the bottom-right": (75, 75),
}

# shift (dx, dy) of the centre
OFFSETS: dict[str, tuple[int, int]] = {
    "no offset": (0, 0),
    "slightly to the left": (-10, 0),
    "slightly to the right": (10, 0),
    "slightly to the upper": (0, -10),
    "slightly to the lower": (0, 10),
    "slightly to the upper-left": (-10, -10),
    "slightly to the upper-right": (10, -10),
    "slightly to the lower-left": (-10, 10),
    "slightly to the lower-right": (10, 10),
}

# size (w, h)
AREAS: dict[str, tuple[int, int]] = {
    "a small square area": (50, 50),
    "a small vertical area": (40, 60),
    "a small horizontal area": (60, 40),
    "a medium-sized square area": (60, 60),
    "a medium-sized vertical area": (50, 80),
    "a medium-sized horizontal area": (80, 50),
    "a large square area": (70, 70),
    "a large vertical area": (60, 90),
    "a large horizontal area": (90, 60),
}

FULL_RECT = (0, GRID, 0, GRID)



def _clamp(v: int) -> int:
    return min(max(v, 0), GRID)


def rect_from_location(location: str, offset: str, area: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the box a location/offset/area triple names: centre = location +
    offset, half sizes by integer division, each side clamped to [0, 90] (clamping cuts, never shifts)."""
    for value, table, kind in ((location, LOCATIONS, "location"), (offset, OFFSETS, "offset"),
                               (area, AREAS, "area")):
        if value not in table:
            raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(map(repr, table))}")
    x, y = LOCATIONS[location]
    dx, dy = OFFSETS[offset]
    w, h = AREAS[area]
    x, y = x + dx, y + dy
    return _clamp(y - h // 2), _clamp(y + h // 2), _clamp(x - w // 2), _clamp(x + w // 2)


def all_location_boxes() -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """Every one of the 9 x 9 x 9 = 729 boxes, keyed by (location, offset, area), in table order."""
    return {(loc, off, area): rect_from_location(loc, off, area)
            for loc in LOCATIONS for off in OFFSETS for area in AREAS}


def rect_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two rects (0 when either is empty)."""
    h = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = h * w
    union = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return inter / union if union > 0 else 0.0


def nearest_location(rect: Sequence[float]) -> tuple[str, str, str]:
    """The location/offset/area triple whose box overlaps ``rect`` best (IoU; first in table order on
    ties): how a free rectangle is described to the LLM."""
    boxes = all_location_boxes()
    return max(boxes, key=lambda k: rect_iou(boxes[k], rect))


def pixels_inside(n: int, start: float, end: float) -> np.ndarray:
    """Which of n pixels along one axis lie in [start, end): pixel k's centre is (k + 0.5) * 90 / n.
    Compared as (2k + 1) * 90 against 2n * bound so integer bounds are decided exactly."""
    centres = (2 * np.arange(n, dtype=np.int64) + 1) * GRID
    return (centres >= 2 * n * start) & (centres < 2 * n * end)


def pixel_span(n: int, start: float, end: float) -> slice:
    """The pixels of ``pixels_inside`` as a slice (they are always one run; an empty slice if none)."""
    inside = np.flatnonzero(pixels_inside(n, start, end))
    return slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0)


def rect_pixels(rect: Sequence[float], h: int, w: int) -> tuple[slice, slice]:
    """(rows, columns) of an h x w image inside a rect: ``image[rows, cols]`` is where ``rect_mask`` is True."""
    top, bottom, left, right = rect
    return pixel_span(h, top, bottom), pixel_span(w, left, right)


def rect_mask(rect: Sequence[float], h: int, w: int) -> np.ndarray:
    """Boolean [h, w] mask of a rect. For integer rects this equals nearest-exact resizing of the 90 x 90
    mask; it also serves free (non-integer) rects."""
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be at least 1 x 1, got {h} x {w}")
    top, bottom, left, right = rect
    return pixels_inside(h, top, bottom)[:, None] & pixels_inside(w, left, right)[None, :]
