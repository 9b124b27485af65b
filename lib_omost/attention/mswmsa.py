"""HiDiffusion MSW-MSA: self-attention inside 2 x 2 shifted windows.

The h x w token grid is rolled by ``-shift`` (cyclically, on the real tokens), padded at the bottom /
right when h or w is odd, and split into 2 x 2 windows of ceil(h/2) x ceil(w/2); every window attends
only to itself; the result is un-partitioned, cropped and rolled back (the public code resized odd grids
instead). Shift k in 0..3 moves the windows
by ``k * (window // 4)`` rows and columns (the original's formula); a new k is drawn for every call.
An axis of length 1 is not split (a window never holds padding only).

This equals full attention under a block-diagonal mask: tokens attend each other iff their rolled
positions fall in the same window.

Speed: ``partition`` / ``reverse`` define the geometry; the attention gathers every window's tokens by an
index map derived from them (roll, pad and cut in one gather, cached per size, shift and device), runs
windows of equal size in one unmasked SDPA call (one call on even grids; odd grids have up to four
window sizes and no padding in any kernel) and scatters back in one gather.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .nearsighted import TileGrid, grid_for_counts, tile, untile
from .windows import WindowLayout, ids_through, window_layout, windowed_attention

SHIFTS = 4                    # shift index k takes values 0..SHIFTS-1
DEFAULT_WINDOWS = (2, 2)

# Layers of the original (PATCHES.md, "MSW-MSA"); its time window is the msw_start / msw_end parameters.
LAYERS = {
    "sd15": {"input": (1, 2), "output": (9, 10, 11)},
    "sdxl": {"input": (4, 5), "output": (3, 4, 5)},
}


def window_grid(hw: tuple[int, int], windows: tuple[int, int] = DEFAULT_WINDOWS) -> TileGrid:
    """The window layout: ``windows`` per axis (fewer on axes too short to split) of ceil(h/ny) x ceil(w/nx)."""
    return grid_for_counts(hw, windows)


def shift_for(grid: TileGrid, k: int) -> tuple[int, int]:
    """(rows, columns) the grid is rolled by for shift index k: k * (window // 4) on each axis."""
    if not 0 <= k < SHIFTS:
        raise ValueError(f"shift index {k!r} outside 0..{SHIFTS - 1}")
    return k * (grid.th // 4), k * (grid.tw // 4)


def _roll(x: torch.Tensor, hw: tuple[int, int], shift: tuple[int, int], sign: int) -> torch.Tensor:
    if shift == (0, 0):
        return x
    b, n, c = x.shape
    g = torch.roll(x.reshape(b, hw[0], hw[1], c), shifts=(sign * shift[0], sign * shift[1]), dims=(1, 2))
    return g.reshape(b, n, c)


def partition(x: torch.Tensor, hw: tuple[int, int], k: int,
              windows: tuple[int, int] = DEFAULT_WINDOWS) -> torch.Tensor:
    """[B, h*w, C] -> [B * windows, wh * ww, C]: roll by -shift(k), pad bottom/right, cut into windows."""
    grid = window_grid(hw, windows)
    return tile(_roll(x, hw, shift_for(grid, k), -1), hw, grid)


def reverse(windows_x: torch.Tensor, hw: tuple[int, int], k: int,
            windows: tuple[int, int] = DEFAULT_WINDOWS) -> torch.Tensor:
    """Inverse of ``partition``: [B * windows, wh * ww, C] -> [B, h*w, C]."""
    grid = window_grid(hw, windows)
    return _roll(untile(windows_x, hw, grid), hw, shift_for(grid, k), +1)


def msw_msa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, hw: tuple[int, int],
                      shift: int, windows: tuple[int, int] = DEFAULT_WINDOWS) -> torch.Tensor:
    """Shifted-window attention of projected q, k, v [B, h*w, heads*dim] on an h x w grid, shift index 0..3."""
    return windowed_attention(q, k, v, heads, msw_layout(tuple(hw), shift, tuple(windows), q.device))


@lru_cache(maxsize=64)
def msw_layout(hw: tuple[int, int], shift: int, windows: tuple[int, int], device: torch.device) -> WindowLayout:
    """The windows of ``partition`` as an index layout (each window attends itself)."""
    ids = ids_through(lambda x: partition(x, hw, shift, windows), hw[0] * hw[1])
    return window_layout(ids, ids, ids, device)


def draw_shift(generator: torch.Generator, previous: int | None = None) -> int:
    """A shift index in 0..3 from ``generator``; never equal to ``previous`` (uniform over the other three).

    Seed the generator from the image seed: the sequence of shifts is then reproducible.
    """
    if previous is None:
        return int(torch.randint(SHIFTS, (), generator=generator))
    if not 0 <= previous < SHIFTS:
        raise ValueError(f"previous shift {previous!r} outside 0..{SHIFTS - 1}")
    return (previous + 1 + int(torch.randint(SHIFTS - 1, (), generator=generator))) % SHIFTS
