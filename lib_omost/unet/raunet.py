"""HiDiffusion RAU-Net: resolution-aware downsampling, the paired upsample, the CA variant, tables, windows.

RAU-Net (PATCHES.md, "HiDiffusion"):
  * at a Downsample input block, keep the even rows and columns, then run the stock stride-2 conv; this is
    exactly the stock 3x3 kernel applied with stride 4, padding 2, dilation 2 (both read rows 4i-2, 4i,
    4i+2, zero outside), and gives ceil(h/4) = two ceil halvings, like two stock downsamples;
  * at the paired Upsample output block, resize to the skip's (h, w) (nearest in the original; bilinear,
    bicubic and area offered) and run the stock conv.
CA variant: pool the hidden state by 2 after input block k, before its skip is stored (avg pool with
``ceil_mode``, so odd sizes round up like the UNet's own downsamples), and resize back to the skip's size
at output block N - k, whose skip is the one stored just before the pooling (N = number of input blocks).

Tables are plain data; ``validate_pair`` checks a user's (input, output) pair against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

FAMILIES = ("sd15", "sdxl")           # sd15 covers SD1.x / SD2.x
UPSCALE_MODES = ("nearest", "bilinear", "bicubic", "area")
CA_DOWNSCALE_MODES = ("avg_pool", *UPSCALE_MODES)
RESOLUTION_MODES = ("low", "high", "ultra")

# UNet layout: number of input blocks, Downsample input blocks and their paired Upsample output blocks.
INPUT_BLOCKS = {"sd15": 12, "sdxl": 9}
DOWNSAMPLE_PAIRS = {
    "sd15": {3: 8, 6: 5, 9: 2},
    "sdxl": {3: 5, 6: 2},
}


def _ca_pairs(family: str) -> dict[int, int]:
    # Output block N - k pops the skip stored by input block k - 1, the last one before the pooling.
    # Excluded: block 0 (conv_in, no output partner) and Downsample blocks (their partner would start
    # right after an Upsample that already restores the skip's size).
    n = INPUT_BLOCKS[family]
    return {k: n - k for k in range(1, n) if k not in DOWNSAMPLE_PAIRS[family]}


CA_PAIRS = {family: _ca_pairs(family) for family in FAMILIES}
PAIR_TABLES = {"raunet": DOWNSAMPLE_PAIRS, "ca": CA_PAIRS}


class Window(NamedTuple):
    """A time window in percent of sampling (0 = start, 1 = end)."""
    start: float
    end: float


class Preset(NamedTuple):
    """One resolution mode: RAU-Net pair and window, CA pair and window (None = off)."""
    raunet: tuple[int, int] | None
    raunet_window: Window | None
    ca: tuple[int, int] | None
    ca_window: Window | None


PRESETS = {
    ("sd15", "low"): Preset((3, 8), Window(0.0, 0.4), None, None),
    ("sd15", "high"): Preset((3, 8), Window(0.0, 0.5), (1, 11), Window(0.0, 0.35)),
    ("sd15", "ultra"): Preset((3, 8), Window(0.0, 0.6), (1, 11), Window(0.0, 0.45)),
    ("sdxl", "low"): Preset(None, None, None, None),
    ("sdxl", "high"): Preset(None, None, (4, 5), Window(0.0, 0.5)),
    ("sdxl", "ultra"): Preset((3, 5), Window(0.0, 0.45), (4, 5), Window(0.0, 0.6)),
}

# Advanced mode defaults (PATCHES.md); the block numbers are SD1.5's.
ADVANCED_DEFAULTS = {
    "raunet": (3, 8), "raunet_window": Window(0.0, 0.45), "upscale_mode": "bicubic",
    "ca": (4, 8), "ca_window": Window(0.0, 0.3), "ca_downscale_mode": "avg_pool", "ca_factor": 2.0,
    "ca_upscale_mode": "bicubic",
}

# --- tables -----------------------------------------------------------------------------------------

def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: expected one of {', '.join(FAMILIES)}")
    return family


def valid_pairs(family: str, kind: str) -> list[tuple[int, int]]:
    """The (input block, output block) pairs of ``kind`` ("raunet" or "ca") on ``family``."""
    if kind not in PAIR_TABLES:
        raise ValueError(f"unknown pair kind {kind!r}: expected one of {', '.join(PAIR_TABLES)}")
    return sorted(PAIR_TABLES[kind][check_family(family)].items())


def validate_pair(family: str, kind: str, pair: tuple[int, int]) -> tuple[int, int]:
    """``pair`` as ints if it is a real pair of the model, else ValueError naming the valid pairs."""
    pairs = valid_pairs(family, kind)
    try:
        block_in, block_out = (int(b) for b in pair)
    except (TypeError, ValueError):
        block_in = block_out = None
    if (block_in, block_out) not in pairs:
        what = "RAU-Net (Downsample/Upsample)" if kind == "raunet" else "CA (pool/resize)"
        listed = ", ".join(f"input {a} / output {b}" for a, b in pairs)
        raise ValueError(f"{what} blocks {pair!r} are not a pair of this {family} model; valid pairs: {listed}")
    return block_in, block_out


def preset(family: str, mode: str) -> Preset:
    """The preset of a resolution mode ("low", "high", "ultra") for a family."""
    check_family(family)
    if mode not in RESOLUTION_MODES:
        raise ValueError(f"unknown resolution mode {mode!r}: expected one of {', '.join(RESOLUTION_MODES)}")
    return PRESETS[(family, mode)]


# --- tensor operations ------------------------------------------------------------------------------

def keep_even(x: torch.Tensor) -> torch.Tensor:
    """Rows and columns 0, 2, 4, ... of [B, C, H, W] (ceil(H/2) x ceil(W/2))."""
    return x[..., ::2, ::2]


def raunet_downsample(x: torch.Tensor, stock_downsample: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Resolution-aware downsample: the stock stride-2 Downsample applied to the even rows and columns."""
    return stock_downsample(keep_even(x))


def check_mode(mode: str, allowed: tuple[str, ...] = UPSCALE_MODES) -> str:
    if mode not in allowed:
        raise ValueError(f"unknown resize mode {mode!r}: expected one of {', '.join(allowed)}")
    return mode


def resize_to(x: torch.Tensor, hw: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """[B, C, H, W] resized to (h, w) with nearest / bilinear / bicubic (align_corners False) / area."""
    check_mode(mode)
    hw = (int(hw[0]), int(hw[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=hw, mode=mode, **corners)


def raunet_upsample(x: torch.Tensor, skip_hw: tuple[int, int], conv: Callable[[torch.Tensor], torch.Tensor],
                    mode: str = "bicubic") -> torch.Tensor:
    """The paired Upsample: resize to the skip's (h, w), then the stock Upsample's conv."""
    return conv(resize_to(x, skip_hw, mode))


def ca_downsample(x: torch.Tensor, factor: float = 2.0, mode: str = "avg_pool") -> torch.Tensor:
    """The CA pooling: avg pool by an integer ``factor`` (ceil_mode: partial edge windows average their
    real pixels), or a resize to ceil(H / factor) x ceil(W / factor) with one of UPSCALE_MODES."""
    check_mode(mode, CA_DOWNSCALE_MODES)
    if factor <= 0:
        raise ValueError(f"CA downscale factor {factor!r} must be positive")
    if mode == "avg_pool":
        if float(factor) != int(factor):
            raise ValueError(f"avg_pool needs a whole downscale factor, got {factor!r}")
        f = int(factor)
        return x if f == 1 else F.avg_pool2d(x, f, stride=f, ceil_mode=True)
    h, w = x.shape[-2:]
    return resize_to(x, (max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))), mode)


def ca_upsample(x: torch.Tensor, skip_hw: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """The CA resize at the paired output block, before the skip concat: to the skip's (h, w)."""
    return resize_to(x, skip_hw, mode)


# --- time windows -----------------------------------------------------------------------------------

def sigma_window(window: Window, percent_to_sigma: Callable[[float], float]) -> tuple[float, float]:
    """(start_sigma, end_sigma) of a percent window through the model's percent -> sigma."""
    if not 0.0 <= window.start <= window.end <= 1.0:
        raise ValueError(f"time window {tuple(window)} must satisfy 0 <= start <= end <= 1")
    return float(percent_to_sigma(window.start)), float(percent_to_sigma(window.end))


def in_sigma_window(sigma: float, start_sigma: float, end_sigma: float) -> bool:
    """Active while end_sigma <= sigma <= start_sigma (inclusive at both ends)."""
    return end_sigma <= sigma <= start_sigma


def in_step_window(step: int, steps: int, end_ratio: float, start_ratio: float = 0.0) -> bool:
    """The original's step-fraction window: int(steps * start_ratio) <= step < int(steps * end_ratio)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return int(steps * start_ratio) <= step < int(steps * end_ratio)


def step_sigma_window(window: Window, sigmas) -> tuple[float, float]:
    """(start_sigma, end_sigma) of a step-fraction window (the original's semantics) on a pass's schedule.

    Steps ``int(N * start) <= i < int(N * end)`` are active (N = len(sigmas) - 1): a call is active when
    ``sigmas[int(N * end)] < sigma <= sigmas[int(N * start)]``, so a second-order sampler's midpoint calls
    belong to their step. A window with no step never matches.
    """
    if not 0.0 <= window.start <= window.end <= 1.0:
        raise ValueError(f"time window {tuple(window)} must satisfy 0 <= start <= end <= 1")
    values = [float(s) for s in sigmas]
    steps = len(values) - 1
    first, stop = int(steps * window.start), int(steps * window.end)
    if stop <= first:
        return float("-inf"), float("inf")
    return values[first], math.nextafter(values[stop], math.inf)
