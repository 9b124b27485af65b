"""Near-sighted tile and Near-sighted attention: tile the queries, attend local tokens plus a global sample.

Geometry (PATCHES.md, "Near-sighted tile and Near-sighted attention"): for a tile size ``tile`` on an
h x w grid, ``ty = ceil(h / tile)``, ``tx = ceil(w / tile)`` tiles (no tiling when ``ty * tx <= 1``) of
``th = ceil(h / ty)`` x ``tw = ceil(w / tx)`` tokens. The map is padded to ``ty*th`` x ``tx*tw``; the
padding is split between top/bottom and left/right by an offset drawn from a caller-seeded generator.
With an integer tile size every tile holds real tokens (``(ty - 1) * th < h``).

Each tile's queries attend
  * the tile's own tokens (optionally Slothful-reduced inside the tile), padded ones MASKED, and
  * a global sample of the whole unpadded map (strided / pooled), about ``global_ratio`` times the number
    of local keys: global stride = max(1, stride) * ty * tx / global_ratio.
All tiles run as one attention call (tiles stacked into the batch dimension); the result is un-tiled and
the padding cropped.

The grid helpers here (``TileGrid``, ``tile``, ``untile``, ``tile_valid``, ``tiles_attention``) are the
shared window machinery; MSW-MSA (``mswmsa.py``) uses them for its 2 x 2 windows.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .core import attention
from .slothful import reduce_tokens, reduce_tokens_masked

DEFAULT_TILE = 32
DEFAULT_GLOBAL_RATIO = 0.5
DEFAULT_TILING_MAX_DEPTH = 2
DEFAULT_BASE_TILE, DEFAULT_PEAK_TILE = 24, 32
DEFAULT_BASE_GLOBAL, DEFAULT_PEAK_GLOBAL = 0.2, 0.8


class TileGrid(NamedTuple):
    """ty x tx tiles of th x tw tokens each."""
    ty: int
    tx: int
    th: int
    tw: int

    @property
    def count(self) -> int:
        return self.ty * self.tx

    @property
    def tokens(self) -> int:
        return self.th * self.tw

    def padding(self, hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of padding needed to fit an h x w map."""
        return self.ty * self.th - hw[0], self.tx * self.tw - hw[1]


def _positive_int(value, name: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


def grid_for_counts(hw: tuple[int, int], counts: tuple[int, int]) -> TileGrid:
    """The grid of (ty, tx) tiles of ceil(h/ty) x ceil(w/tx) tokens.

    Counts are lowered to ceil(h / th) (resp. w) so that no tile is padding only (this changes nothing
    for counts that come from an integer tile size).
    """
    h, w = hw
    ty = min(_positive_int(counts[0], "tile rows"), h)
    tx = min(_positive_int(counts[1], "tile columns"), w)
    th, tw = math.ceil(h / ty), math.ceil(w / tx)
    return TileGrid(math.ceil(h / th), math.ceil(w / tw), th, tw)


def tile_grid(hw: tuple[int, int], tile: int) -> TileGrid | None:
    """Tiles of at most ``tile`` x ``tile`` tokens covering an h x w map, or None when one tile covers it."""
    tile = _positive_int(tile, "tile size")
    h, w = hw
    ty, tx = math.ceil(h / tile), math.ceil(w / tile)
    if ty * tx <= 1:
        return None
    return grid_for_counts(hw, (ty, tx))


def draw_offset(hw: tuple[int, int], grid: TileGrid, generator: torch.Generator) -> tuple[int, int]:
    """Padding rows above and columns left of the map, uniform in 0..pad (inclusive), from ``generator``.

    The caller seeds the generator (e.g. from the image seed and the layer), so offsets are reproducible.
    """
    pad_h, pad_w = grid.padding(hw)
    oy = int(torch.randint(pad_h + 1, (), generator=generator))
    ox = int(torch.randint(pad_w + 1, (), generator=generator))
    return oy, ox


def _check_offset(hw, grid: TileGrid, offset) -> tuple[int, int, int, int]:
    pad_h, pad_w = grid.padding(hw)
    oy, ox = offset
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"grid {grid} does not cover a {hw[0]}x{hw[1]} map")
    if not (0 <= oy <= pad_h and 0 <= ox <= pad_w):
        raise ValueError(f"padding offset {offset} outside 0..{pad_h} x 0..{pad_w}")
    return oy, pad_h - oy, ox, pad_w - ox


def tile(x: torch.Tensor, hw: tuple[int, int], grid: TileGrid, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """[B, h*w, C] -> [B * ty * tx, th * tw, C]: pad (``offset`` rows/columns before the map, the rest after)
    with zeros and cut into tiles; batch order (b, tile row, tile column)."""
    top, bottom, left, right = _check_offset(hw, grid, offset)
    b, n, c = x.shape
    if n != hw[0] * hw[1]:
        raise ValueError(f"grid {hw[0]}x{hw[1]} does not hold {n} tokens")
    g = x.reshape(b, hw[0], hw[1], c)
    if top or bottom or left or right:
        g = F.pad(g, (0, 0, left, right, top, bottom))
    g = g.view(b, grid.ty, grid.th, grid.tx, grid.tw, c).permute(0, 1, 3, 2, 4, 5)
    return g.reshape(b * grid.count, grid.tokens, c)


def untile(t: torch.Tensor, hw: tuple[int, int], grid: TileGrid, offset: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Inverse of ``tile``: [B * ty * tx, th * tw, C] -> [B, h*w, C], padding cropped."""
    top, _, left, _ = _check_offset(hw, grid, offset)
    bt, n, c = t.shape
    if bt % grid.count or n != grid.tokens:
        raise ValueError(f"tiles {tuple(t.shape)} do not fit grid {grid}")
    b = bt // grid.count
    g = t.view(b, grid.ty, grid.tx, grid.th, grid.tw, c).permute(0, 1, 3, 2, 4, 5)
    g = g.reshape(b, grid.ty * grid.th, grid.tx * grid.tw, c)[:, top:top + hw[0], left:left + hw[1]]
    return g.reshape(b, hw[0] * hw[1], c)


def tile_valid(hw: tuple[int, int], grid: TileGrid, offset: tuple[int, int] = (0, 0),
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """Boolean [ty * tx, th * tw], True where a tile position holds a real token; None without padding."""
    if grid.padding(hw) == (0, 0):
        return None
    ones = torch.ones(1, hw[0] * hw[1], 1, dtype=torch.uint8, device=device)
    return tile(ones, hw, grid, offset)[..., 0].bool()


def tiles_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                    key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """One attention call over tiles stacked in the batch dimension.

    ``key_valid``: boolean [T, Lk] (one row per tile, shared by every image of the batch, whose rows are
    ordered (b, tile)) or None; False keys are masked out of the softmax.
    """
    if key_valid is None:
        return attention(q, k, v, heads)
    tiles = key_valid.shape[0]
    if q.shape[0] % tiles or key_valid.shape[1] != k.shape[1]:
        raise ValueError(f"key mask {tuple(key_valid.shape)} does not fit keys {tuple(k.shape)}")
    mask = key_valid.repeat(q.shape[0] // tiles, 1)[:, None, None, :]
    return attention(q, k, v, heads, mask=mask)


def global_stride(local_stride: float, tiles: int, global_ratio: float) -> float:
    """Stride of the global sample: about ``global_ratio`` x the local key count of one tile."""
    if global_ratio <= 0:
        raise ValueError(f"global ratio {global_ratio!r} must be positive to take a global sample")
    return max(1.0, local_stride) * tiles / global_ratio


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, hw: tuple[int, int],
                    tile_size: int, *, global_ratio: float = DEFAULT_GLOBAL_RATIO,
                    offset: tuple[int, int] = (0, 0), stride: float = 0.0, mode: str = "2D_AVG",
                    k_blend: float = 0.0, v_blend: float = 0.0) -> torch.Tensor:
    """Near-sighted attention of projected q, k, v [B, h*w, heads*dim] on an h x w grid.

    ``stride`` (> 1 to act) Slothful-reduces each tile's local keys and sets the global sample's base;
    ``mode``/``k_blend``/``v_blend`` as in ``slothful``. ``global_ratio`` 0 drops the global sample.
    ``offset`` places the padding (see ``draw_offset``). When one tile covers the map this is plain
    attention on the (optionally reduced) keys.
    """
    if global_ratio < 0:
        raise ValueError(f"global ratio {global_ratio!r} must not be negative")
    grid = tile_grid(hw, tile_size)
    if grid is None:
        return attention(q, reduce_tokens(k, hw, stride, mode, k_blend),
                         reduce_tokens(v, hw, stride, mode, v_blend), heads)
    tile_hw = (grid.th, grid.tw)
    valid = tile_valid(hw, grid, offset, device=q.device)
    qt, kt, vt = (tile(x, hw, grid, offset) for x in (q, k, v))
    if valid is None:
        kt = reduce_tokens(kt, tile_hw, stride, mode, k_blend)
        vt = reduce_tokens(vt, tile_hw, stride, mode, v_blend)
    else:
        kt, key_valid = reduce_tokens_masked(kt, tile_hw, stride, mode, k_blend, valid)
        vt, _ = reduce_tokens_masked(vt, tile_hw, stride, mode, v_blend, valid)
        valid = key_valid
    if global_ratio > 0:
        g_stride = global_stride(stride, grid.count, global_ratio)
        gk = reduce_tokens(k, hw, g_stride, mode, k_blend).repeat_interleave(grid.count, dim=0)
        gv = reduce_tokens(v, hw, g_stride, mode, v_blend).repeat_interleave(grid.count, dim=0)
        kt, vt = torch.cat([kt, gk], dim=1), torch.cat([vt, gv], dim=1)
        if valid is not None:
            valid = torch.cat([valid, valid.new_ones(grid.count, gk.shape[1])], dim=1)
    return untile(tiles_attention(qt, kt, vt, heads, valid), hw, grid, offset)


def near_sighted_schedule(time_ratio: float, base_tile: int = DEFAULT_BASE_TILE,
                          peak_tile: int = DEFAULT_PEAK_TILE, base_global: float = DEFAULT_BASE_GLOBAL,
                          peak_global: float = DEFAULT_PEAK_GLOBAL) -> tuple[int, float]:
    """(tile size, global ratio) of Near-sighted attention: lerp(base, peak, time_ratio), tile rounded."""
    tile_size = round(base_tile + (peak_tile - base_tile) * time_ratio)
    return max(1, tile_size), base_global + (peak_global - base_global) * time_ratio


def tiling_applies(depth: float, tiling_max_depth: int = DEFAULT_TILING_MAX_DEPTH) -> bool:
    """Tiling runs on levels with depth (channels / model_channels) <= 2 ** (tiling_max_depth - 1)."""
    return depth <= 2 ** (tiling_max_depth - 1)
