"""Omost's prompt tree of a canvas: the prefixes and suffixes of every region (what the prompt chunks and
the ComfyUI_omost export are built from).

The global region has prefixes [global description] and suffixes detailed_descriptions + [tags]; a local
region has prefixes [global description, description] and suffixes detailed_descriptions + [tags,
atmosphere, style, quality_meta]. Every string is normalised (leading/trailing ", . " stripped, one period
appended); strings that normalise to nothing are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lib_omost.canvas.model import Canvas, GlobalRegion, Region, ordered_regions

_EDGES = re.compile(r"^[\s,.]+|[\s,.]+$")


def normalize_prompt(text: str) -> str:
    """Strip leading/trailing commas, periods and spaces and end with one period ('' stays '')."""
    core = _EDGES.sub("", text)
    return core + "." if core else ""


@dataclass(frozen=True)
class RegionPrompt:
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]


def _normalized(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(n for n in map(normalize_prompt, texts) if n)


def global_prompt(g: GlobalRegion) -> RegionPrompt:
    return RegionPrompt(_normalized([g.description]), _normalized([*g.detailed_descriptions, g.tags]))


def local_prompt(g: GlobalRegion, r: Region) -> RegionPrompt:
    return RegionPrompt(_normalized([g.description, r.description]),
                        _normalized([*r.detailed_descriptions, r.tags, r.atmosphere, r.style, r.quality_meta]))


def canvas_prompts(canvas: Canvas) -> list[RegionPrompt]:
    """The prompt tree of every region: global first, then far to near (the order of region_masks)."""
    g = canvas.global_region
    return [global_prompt(g)] + [local_prompt(g, r) for r in ordered_regions(canvas)]
