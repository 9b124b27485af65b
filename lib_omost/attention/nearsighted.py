"""Near-sighted tile and Near-sighted attention: tile the queries, attend local tokens plus a global sample.

Geometry (PATCHES.md, "Near-sighted tile and Near-sighted attention"): for a tile size ``tile`` on an
h x w grid, ``ty = ceil(h / tile)``, ``tx = ceil(w / tile)`` tiles (no tiling when ``ty * tx <= 1``) of
``th = ceil(h / ty)`` x ``tw = ceil(w / tx)`` tokens. The map is padded to ``ty*th`` x ``tx*tw``; the
padding is split between top/bottom and left/right by an offset drawn from a caller-seeded generator.
With an integer tile size every tile holds real tokens (``(ty - 1) * th < h``).

Each tile's queries attend
  * the tile's own tokens (optionally Slothful-reduced inside the tile), never padding, and
  * a global sample of the whole unpadded map (strided / pooled), about ``global_ratio`` times the number
    of local keys: global stride = max(1, stride) * ty * tx / global_ratio. Pooled (blend > 0), each global
    key pools the local window (the grid of ``stride``, 1 x 1 when stride <= 1) at the top-left of its
    global cell, as the original does ("pooling size as local, only the stride larger").
The result is un-tiled and the padding cropped.

Speed: ``tile`` / ``untile`` / ``strided_sample`` define the geometry; the attention gathers each tile's
queries and keys (local and global) through an index map derived from them (``tile_layout``, cached per
sizes and device: the Slothful stride is a float that changes every step, the layout depends only on the
integer grid steps it gives). Tiles with the same valid positions run in one unmasked SDPA call: one call
when the tiles divide the map, at most nine (edge and corner tiles) with padding, never a mask. Pooled keys
(blend > 0) are computed per call into a key source; strided samples (blend 0) are read from k / v.

The grid helpers here (``TileGrid``, ``tile``, ``untile``, ``tile_valid``) are shared with MSW-MSA
(``mswmsa.py``) for its 2 x 2 windows.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .core import attention
from .slothful import (
    reduce_tokens,
    reduce_tokens_masked,
    reduction_grid,
    strided_sample,
)
from .windows import WindowLayout, ids_through, window_layout, windowed_attention

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


@lru_cache(maxsize=64)
def tile_valid(hw: tuple[int, int], grid: TileGrid, offset: tuple[int, int] = (0, 0),
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """Boolean [ty * tx, th * tw], True where a tile position holds a real token; None without padding.
    Cached: the same tensor is returned for the same sizes (do not modify it)."""
    if grid.padding(hw) == (0, 0):
        return None
    ones = torch.ones(1, hw[0] * hw[1], 1, dtype=torch.uint8, device=device)
    return tile(ones, hw, grid, offset)[..., 0].bool()


def global_stride(local_stride: float, tiles: int, global_ratio: float) -> float:
    """Stride of the global sample: about ``global_ratio`` x the local key count of one tile."""
    if global_ratio <= 0:
        raise ValueError(f"global ratio {global_ratio!r} must be positive to take a global sample")
    return max(1.0, local_stride) * tiles / global_ratio


class TileKeys(NamedTuple):
    """What the tiles of one call attend, in sizes only (so it can key a cache)."""
    hw: tuple[int, int]
    grid: TileGrid
    offset: tuple[int, int]
    local: tuple | None     # reduction_grid of each tile's keys when Slothful shortens them, else None
    sample: tuple | None    # reduction_grid of the global sample, None without one


def _reducing(grid_steps: tuple) -> bool:
    return grid_steps[1:] != (1, 1)


def tile_keys(hw: tuple[int, int], grid: TileGrid, offset: tuple[int, int], stride: float, mode: str,
              g_stride: float | None) -> TileKeys:
    local = reduction_grid((grid.th, grid.tw), stride, mode)
    sample = None if g_stride is None else reduction_grid(hw, g_stride, mode)
    return TileKeys(tuple(hw), grid, tuple(offset), local if stride > 1 and _reducing(local) else None, sample)


def _key_ids(keys: TileKeys, query_ids: torch.Tensor, pooled: bool) -> torch.Tensor:
    """``[tiles, slots]`` position of every key of every tile in the key source (``key_source``), -1 where
    a slot holds padding: the tile's own (reduced) tokens, then the global sample."""
    n_tokens = keys.hw[0] * keys.hw[1]
    local, source_len = query_ids, n_tokens
    if keys.local is not None:
        grid, sy, sx = keys.local
        local = strided_sample(query_ids[..., None], grid, sy, sx)[..., 0]
        if pooled:                  # the pooled tiles, tile by tile, are the source
            slots = torch.arange(local.numel()).view(local.shape)
            local, source_len = torch.where(local >= 0, slots, -1), local.numel()
    if keys.sample is None:
        return local
    grid, sy, sx = keys.sample
    sample = ids_through(lambda x: strided_sample(x, grid, sy, sx), n_tokens)[0]
    if pooled:                      # the pooled global sample follows the local keys in the source
        sample = torch.arange(len(sample)) + source_len
    return torch.cat([local, sample.expand(len(local), -1)], 1)


@lru_cache(maxsize=64)
def tile_layout(keys: TileKeys, k_pooled: bool, v_pooled: bool, device: torch.device) -> WindowLayout:
    """The tiles' index layout; ``*_pooled``: whether K / V come from pooled keys (blend > 0)."""
    query_ids = ids_through(lambda x: tile(x, keys.hw, keys.grid, keys.offset), keys.hw[0] * keys.hw[1])
    k_ids = _key_ids(keys, query_ids, k_pooled)
    v_ids = k_ids if v_pooled == k_pooled else _key_ids(keys, query_ids, v_pooled)
    return window_layout(query_ids, k_ids, v_ids, device)


def key_source(x: torch.Tensor, keys: TileKeys, stride: float, g_stride: float | None, mode: str,
               blend: float) -> torch.Tensor:
    """The tensor ``_key_ids`` points into: ``x`` itself for strided samples (blend 0); otherwise the
    pooled tiles (or ``x`` when tiles are not reduced) followed by the pooled global sample."""
    if blend == 0:
        return x
    parts = [x]
    if keys.local is not None:
        tiles = tile(x, keys.hw, keys.grid, keys.offset)
        tile_hw, valid = (keys.grid.th, keys.grid.tw), tile_valid(keys.hw, keys.grid, keys.offset, x.device)
        if valid is None:
            reduced = reduce_tokens(tiles, tile_hw, stride, mode, blend)
        else:
            reduced, _ = reduce_tokens_masked(tiles, tile_hw, stride, mode, blend, valid)
        parts = [reduced.reshape(x.shape[0], -1, x.shape[2])]
    if g_stride is not None:
        parts.append(reduce_tokens(x, keys.hw, g_stride, mode, blend, window_stride=stride))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


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
    g_stride = global_stride(stride, grid.count, global_ratio) if global_ratio > 0 else None
    keys = tile_keys(hw, grid, offset, stride, mode, g_stride)
    layout = tile_layout(keys, k_blend > 0, v_blend > 0, q.device)
    return windowed_attention(q, key_source(k, keys, stride, g_stride, mode, k_blend),
                              key_source(v, keys, stride, g_stride, mode, v_blend), heads, layout)


def near_sighted_schedule(time_ratio: float, base_tile: int = DEFAULT_BASE_TILE,
                          peak_tile: int = DEFAULT_PEAK_TILE, base_global: float = DEFAULT_BASE_GLOBAL,
                          peak_global: float = DEFAULT_PEAK_GLOBAL) -> tuple[int, float]:
    """(tile size, global ratio) of Near-sighted attention: lerp(base, peak, time_ratio), tile rounded."""
    tile_size = round(base_tile + (peak_tile - base_tile) * time_ratio)
    return max(1, tile_size), base_global + (peak_global - base_global) * time_ratio


def tiling_applies(depth: float, tiling_max_depth: int = DEFAULT_TILING_MAX_DEPTH) -> bool:
    """Tiling runs on levels with depth (channels / model_channels) <= 2 ** (tiling_max_depth - 1)."""
    return depth <= 2 ** (tiling_max_depth - 1)
