"""Slothful attention: shorten self-attention K/V by a time- and depth-dependent stride.

Schedule (PATCHES.md, "Slothful attention"), for one attention call:

    time       = clip(1 - timestep / 1000, 0, 1)
    time_ratio = exp(-((time - peak_time) * time_decay) ** 2)
    depth      = channels / model_channels                      (1, 2, 4)
    depth_rate = 1 / depth (SD1.5-class) or 2 / depth (SDXL-class)
    stride     = slothful * time_ratio * depth_rate ** depth_decay

The stride is a token-count ratio. It becomes a sampling grid: 1D modes use every ``ceil(stride)``-th
token of the flattened sequence; 2D modes use every ``sy``-th row and ``sx``-th column of the h x w grid
with ``sy = ceil(sqrt(stride))``, ``sx = ceil(stride / sy)``. A grid step never exceeds its axis length
(a step of h or w keeps one row or column); on a grid of fewer than ``sy`` rows, ``sx`` comes from the
clamped row step (the original's rule).

Two reduced sets come from one grid: ``one`` = the strided sample (the top-left token of every window)
and ``pool`` = the avg or max of every window. Odd sizes: windows are aligned at the top-left and the
last window along an axis may be partial (``ceil_mode``); its average is over the tokens it really
covers, so ``one`` and ``pool`` both have ``ceil(h / sy) * ceil(w / sx)`` tokens and every token is
covered. ``blend`` mixes them: ``lerp(one, pool, blend)``, 0 = strided sample, 1 = pool (the public
node returned the strided sample at 1). K and V use their own blends.

All functions take a token tensor ``[B, N, C]`` and its grid ``(h, w)`` with ``h * w == N``; they work
on hidden states before projection and on projected k / v alike (for ``one`` and avg pooling the two
are equivalent, the projection being affine; max pooling is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("1D_AVG", "1D_MAX", "2D_AVG", "2D_MAX")

DEFAULT_PEAK_TIME = 0.4
DEFAULT_TIME_DECAY = 2.0


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown reduction mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def check_blend(blend: float, name: str = "blend") -> float:
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"{name} {blend!r} is outside 0..1 (0 = strided sample, 1 = pool)")
    return blend


@dataclass(frozen=True)
class SlothfulSide:
    """The parameters of one UNet side (input blocks or output blocks)."""
    mode: str = "2D_AVG"
    depth_decay: float = 2.0
    slothful: float = 6.0
    k_blend: float = 0.0
    v_blend: float = 0.0

    def __post_init__(self):
        check_mode(self.mode)
        check_blend(self.k_blend, "k_blend")
        check_blend(self.v_blend, "v_blend")


DEFAULT_INPUT_SIDE = SlothfulSide(slothful=6.0)
DEFAULT_OUTPUT_SIDE = SlothfulSide(slothful=4.0)


def side_for_block(block: str, input_side: SlothfulSide, output_side: SlothfulSide) -> SlothfulSide | None:
    """The side whose parameters apply to a block: input -> input_side, output -> output_side, middle -> None
    (the middle block is never reduced). The public node swapped the two slothful values; we do not."""
    if block == "input":
        return input_side
    if block == "output":
        return output_side
    if block == "middle":
        return None
    raise ValueError(f"unknown block {block!r}: expected 'input', 'middle' or 'output'")


# --- schedule -------------------------------------------------------------------------------------

def schedule_time(timestep: float) -> float:
    """Denoising progress in [0, 1]: 0 at timestep 1000 (pure noise), 1 at timestep 0."""
    return min(max(1.0 - float(timestep) / 1000.0, 0.0), 1.0)


def time_ratio(timestep: float, peak_time: float = DEFAULT_PEAK_TIME,
               time_decay: float = DEFAULT_TIME_DECAY) -> float:
    """exp(-((time - peak_time) * time_decay)^2): 1 at the peak, 1 everywhere when time_decay is 0."""
    return math.exp(-((schedule_time(timestep) - peak_time) * time_decay) ** 2)


def layer_depth(channels: int, model_channels: int) -> float:
    """channels / model_channels of an attention layer (1, 2 or 4 on SD1.5 and SDXL)."""
    if channels <= 0 or model_channels <= 0:
        raise ValueError(f"channels ({channels}) and model_channels ({model_channels}) must be positive")
    return channels / model_channels


def depth_rate(depth: float, sdxl: bool) -> float:
    """1 / depth on SD1.5-class models, 2 / depth on SDXL-class models (whose first attention level is depth 2)."""
    return (2.0 if sdxl else 1.0) / depth


def slothful_stride(slothful: float, timestep: float, channels: int, model_channels: int, *, sdxl: bool,
                    depth_decay: float = 2.0, peak_time: float = DEFAULT_PEAK_TIME,
                    time_decay: float = DEFAULT_TIME_DECAY) -> float:
    """The K/V reduction ratio of one call; <= 1 means no reduction."""
    rate = depth_rate(layer_depth(channels, model_channels), sdxl)
    return slothful * time_ratio(timestep, peak_time, time_decay) * rate ** depth_decay


# --- stride -> grid ---------------------------------------------------------------------------------

def grid_1d(stride: float) -> int:
    """Token step of the 1D modes: ceil(stride) (1 when stride <= 1)."""
    return max(1, math.ceil(stride))


def grid_2d(stride: float) -> tuple[int, int]:
    """(sy, sx) of the 2D modes: sy = ceil(sqrt(stride)), sx = ceil(stride / sy) ((1, 1) when stride <= 1)."""
    if stride <= 1:
        return 1, 1
    sy = math.ceil(math.sqrt(stride))
    return sy, max(1, math.ceil(stride / sy))


def reduction_grid(hw: tuple[int, int], stride: float, mode: str) -> tuple[tuple[int, int], int, int]:
    """The grid a mode works on and its steps: ((gh, gw), sy, sx), steps clamped to the grid.

    2D modes work on the (h, w) grid; 1D modes on the flattened sequence seen as a (1, h * w) grid. On a
    grid shorter than ceil(sqrt(stride)) rows the column step comes from the clamped row step,
    sx = ceil(stride / min(sy, h)), as in the original: the reduction stays about ``stride``.
    """
    check_mode(mode)
    h, w = hw
    if mode.startswith("1D"):
        return (1, h * w), 1, min(grid_1d(stride), h * w)
    sy = min(grid_2d(stride)[0], h)
    sx = max(1, math.ceil(stride / sy)) if stride > 1 else 1
    return (h, w), sy, min(sx, w)


# --- reductions -------------------------------------------------------------------------------------

def _grid_view(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if x.dim() != 3:
        raise ValueError(f"expected tokens [B, N, C], got shape {tuple(x.shape)}")
    h, w = hw
    if h * w != x.shape[1]:
        raise ValueError(f"grid {h}x{w} does not hold {x.shape[1]} tokens")
    return x.reshape(x.shape[0], h, w, x.shape[2])


def strided_sample(x: torch.Tensor, hw: tuple[int, int], sy: int, sx: int) -> torch.Tensor:
    """Every sy-th row and sx-th column of the grid, starting at (0, 0): [B, ceil(h/sy) * ceil(w/sx), C]."""
    g = _grid_view(x, hw)[:, ::sy, ::sx]
    return g.reshape(g.shape[0], -1, g.shape[3])


def _pool_grid(g: torch.Tensor, sy: int, sx: int, kind: str,
               window: tuple[int, int] | None = None) -> torch.Tensor:
    """(sy, sx)-strided windows of a channel-last grid [B, h, w, C], partial last windows kept; a window is
    (sy, sx) (non-overlapping) unless ``window`` gives a smaller one (at the top-left of each cell)."""
    fn = F.avg_pool2d if kind == "AVG" else F.max_pool2d
    out = fn(g.permute(0, 3, 1, 2), window or (sy, sx), stride=(sy, sx), ceil_mode=True)
    return out.permute(0, 2, 3, 1)


def window_pool(x: torch.Tensor, hw: tuple[int, int], sy: int, sx: int, kind: str,
                window: tuple[int, int] | None = None) -> torch.Tensor:
    """Avg (kind "AVG") or max ("MAX") over every (sy, sx) window: [B, ceil(h/sy) * ceil(w/sx), C].

    A partial window at the bottom or right edge averages only the tokens it covers. ``window`` (each
    side at most the step) pools only that top-left part of every cell.
    """
    if kind not in ("AVG", "MAX"):
        raise ValueError(f"unknown pooling {kind!r}: expected 'AVG' or 'MAX'")
    if window is not None and not (1 <= window[0] <= sy and 1 <= window[1] <= sx):
        raise ValueError(f"pooling window {window} must lie inside the step ({sy}, {sx})")
    out = _pool_grid(_grid_view(x, hw), sy, sx, kind, window)
    return out.reshape(out.shape[0], -1, out.shape[3])


def _blend(one: torch.Tensor, pool_fn, blend: float) -> torch.Tensor:
    if blend == 0:
        return one                       # the pool is not even computed
    if blend == 1:
        return pool_fn()
    return torch.lerp(one, pool_fn(), blend)


def pool_window(hw: tuple[int, int], window_stride: float, mode: str, sy: int, sx: int) -> tuple[int, int]:
    """The pooling window of ``window_stride``'s grid, each side at most the step (sy, sx)."""
    _, wy, wx = reduction_grid(hw, window_stride, mode)
    return min(wy, sy), min(wx, sx)


def reduce_tokens(x: torch.Tensor, hw: tuple[int, int], stride: float, mode: str = "2D_AVG",
                  blend: float = 0.0, window_stride: float | None = None) -> torch.Tensor:
    """lerp(strided sample, pool, blend) of ``x`` on the grid of ``mode`` for ``stride``.

    The pool's window is the step unless ``window_stride`` is given: then the window of that (smaller)
    stride's grid, clamped to the step (Near-sighted attention's global sample: the local window at the
    global step, as in the original). ``stride <= 1`` (or a grid that cannot shrink) returns ``x`` itself.
    """
    check_blend(blend)
    grid, sy, sx = reduction_grid(hw, stride, mode)
    if stride <= 1 or (sy == 1 and sx == 1):
        return x
    kind = mode[3:]
    window = None if window_stride is None else pool_window(hw, window_stride, mode, sy, sx)
    return _blend(strided_sample(x, grid, sy, sx), lambda: window_pool(x, grid, sy, sx, kind, window), blend)


def slothful_kv(x: torch.Tensor, hw: tuple[int, int], stride: float, mode: str = "2D_AVG",
                k_blend: float = 0.0, v_blend: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(K source, V source) reduced from one token tensor; ``(x, x)`` when stride <= 1.

    Equal blends return the same tensor twice (computed once).
    """
    k = reduce_tokens(x, hw, stride, mode, k_blend)
    v = k if v_blend == k_blend else reduce_tokens(x, hw, stride, mode, v_blend)
    return k, v


def reduce_tokens_masked(x: torch.Tensor, hw: tuple[int, int], stride: float, mode: str, blend: float,
                         valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reduce_tokens`` for grids with padding: (reduced x, reduced validity).

    ``valid`` is boolean [V, N] (True = real token); x's batch is ``B * V`` ordered (b, v), so row i of x
    uses ``valid[i % V]`` (tiles stacked in the batch dimension, one validity row per tile). Padded tokens
    never enter a pool: avg is over the window's real tokens, max ignores padding. A reduced token is valid
    when its sample point (the window's top-left token) is real; invalid reduced tokens are returned as 0
    and must be masked by the caller. With ``stride <= 1`` returns ``(x, valid)`` untouched.
    """
    check_blend(blend)
    grid, sy, sx = reduction_grid(hw, stride, mode)
    if stride <= 1 or (sy == 1 and sx == 1):
        return x, valid
    n_valid = valid.shape[0]
    if valid.dim() != 2 or valid.shape[1] != x.shape[1] or x.shape[0] % n_valid:
        raise ValueError(f"validity {tuple(valid.shape)} does not fit tokens {tuple(x.shape)} "
                         f"(expected [V, N] with the batch a multiple of V)")
    gh, gw = grid
    g = _grid_view(x, grid)
    g5 = g.view(-1, n_valid, gh, gw, g.shape[-1])              # [B, V, h, w, C]
    v5 = valid.view(1, n_valid, gh, gw, 1)
    one = g5[:, :, ::sy, ::sx]
    valid_out = valid.view(n_valid, gh, gw)[:, ::sy, ::sx].reshape(n_valid, -1)

    def pool() -> torch.Tensor:
        flat = (-1, gh, gw, g.shape[-1])
        if mode.endswith("AVG"):
            # mean over real tokens = avg(x * valid) / avg(valid): the window-size divisor cancels
            total = _pool_grid((g5 * v5).reshape(flat), sy, sx, "AVG")
            share = _pool_grid(v5[0].to(x.dtype), sy, sx, "AVG")            # [V, h', w', 1]
            return total.view(-1, n_valid, *total.shape[1:]) / share.clamp_min(torch.finfo(x.dtype).tiny)
        out = _pool_grid(g5.masked_fill(~v5, float("-inf")).reshape(flat), sy, sx, "MAX")
        out = out.masked_fill(torch.isneginf(out), 0.0)                     # windows of padding only
        return out.view(-1, n_valid, *out.shape[1:])

    reduced = _blend(one, pool, blend)
    reduced = reduced.masked_fill(~valid_out.view(1, n_valid, *one.shape[2:4], 1), 0.0)
    return reduced.reshape(x.shape[0], -1, x.shape[2]), valid_out
