"""Region colours: one of the 149 HTML colour names (stored lower-case) or an (r, g, b) triple of 0-255 ints
(what a ComfyUI_omost import gives when no name has that value)."""

from __future__ import annotations

from lib_omost.canvas._color_table import HTML_COLORS
from lib_omost.canvas.fuzzy import unique_closest
from lib_omost.quoting import quoted

RGB = tuple[int, int, int]
Color = str | RGB

_SPACING = str.maketrans("", "", " -_")


def as_rgb_triple(value) -> RGB | None:
    """``value`` as an (r, g, b) tuple when it is a list/tuple of three ints in [0, 255], else None."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
        return tuple(value)
    return None


def color_rgb(color: Color) -> RGB:
    """The sRGB triple of a colour name (any case) or of an (r, g, b) triple."""
    if isinstance(color, str):
        rgb = HTML_COLORS.get(color.lower())
        if rgb is not None:
            return rgb
    else:
        rgb = as_rgb_triple(color)
        if rgb is not None:
            return rgb
    raise ValueError(f"must be one of the {len(HTML_COLORS)} HTML colour names (e.g. 'darkgoldenrod') "
                     f"or [r, g, b] with integers 0-255, got {quoted(color)}")


def color_name_of(rgb) -> str | None:
    """The first HTML name (table order) whose value is exactly ``rgb``, or None."""
    rgb = tuple(rgb)
    for name, value in HTML_COLORS.items():
        if value == rgb:
            return name
    return None


def nearest_color_name(rgb) -> str:
    """The HTML name closest to ``rgb`` in squared sRGB distance (first in table order on ties)."""
    r, g, b = rgb
    return min(HTML_COLORS, key=lambda n: (HTML_COLORS[n][0] - r) ** 2 + (HTML_COLORS[n][1] - g) ** 2
               + (HTML_COLORS[n][2] - b) ** 2)


def correct_color_name(name: str) -> str | None:
    """The HTML name ``name`` clearly means: itself, itself without case/spaces/hyphens/underscores
    ("Dark Slate Gray"), or a unique near spelling (1 edit for names up to 5 letters, else 2); None if
    unclear."""
    squashed = name.translate(_SPACING).lower()
    if squashed in HTML_COLORS:
        return squashed
    return unique_closest(squashed, HTML_COLORS, 1 if len(squashed) <= 5 else 2)


def color_label(color: Color) -> str:
    """A short text for a colour: its name, or #rrggbb for a triple."""
    if isinstance(color, str):
        return color
    r, g, b = color
    return f"#{r:02x}{g:02x}{b:02x}"
