"""Regional attention speed at an SDXL-like cross-attention layer.

N = 4096 queries (64 x 64), 10 heads x 64, six regions of 154 tokens each (924-token context): the Omost
method vs plain SDPA over the same context, vs the explicit-logits formulation, and attention couple vs the
Omost method. Layouts prepared once (as a stage caches them per layer size); the Omost method with its
layout rebuilt on every call is printed as context. One cond row; every round runs each case once, back to back; the ratios are medians of
the per-round ratios (robust to load from other processes).

    python bench/bench_regional.py [--device cuda] [--repeats 5] [--threads 2] [--dtype float16]
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

from benchlib import attention_bench_args, timed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention
from lib_omost.attention.regional import (
    attention_couple,
    couple_layout,
    dense_cross_layout,
    densediffusion_attention,
    masks_at_layer,
    omost_attention,
    omost_attention_explicit,
    omost_layout,
)

HW = (64, 64)
HEADS, DIM = 10, 64
REGION_TOKENS = 154
# (top, bottom, left, right) on the 90 x 90 canvas: the global region then five boxes far -> near
RECTS = [(0, 90, 0, 90), (0, 60, 0, 90), (15, 75, 0, 60), (15, 75, 30, 90), (30, 90, 15, 75), (25, 65, 25, 65)]


def layout(device):
    canvas = torch.zeros(len(RECTS), 90, 90, dtype=torch.bool)
    for r, (top, bottom, left, right) in enumerate(RECTS):
        canvas[r, top:bottom, left:right] = True
    masks = masks_at_layer(canvas, HW).to(device)
    regions = torch.arange(len(RECTS)).repeat_interleave(REGION_TOKENS).to(device)
    return regions, masks


def main():
    args, device, dtype = attention_bench_args(__doc__.splitlines()[0])

    regions, masks = layout(device)
    n, length, width = HW[0] * HW[1], len(regions), HEADS * DIM
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, size, width, generator=g).to(device, dtype) for size in (n, length, length))

    # layouts are built once per (layer size, context length, dtype) and reused by every layer and step
    omost = omost_layout(regions, masks, length, dtype=dtype)
    couple = couple_layout(regions, masks, length, dtype=dtype)
    overlay = couple_layout(regions, masks, length, mode="overlay", dtype=dtype)
    dense = dense_cross_layout(regions, masks, length)
    cases = {
        "plain": lambda: attention(q, k, v, HEADS),
        "omost": lambda: omost_attention(q, k, v, HEADS, omost),
        "omost_layout_each_call": lambda: omost_attention(q, k, v, HEADS, omost_layout(regions, masks, length, dtype=dtype)),
        "explicit": lambda: omost_attention_explicit(q, k, v, HEADS, omost),
        "couple": lambda: attention_couple(q, k, v, HEADS, couple),
        "overlay": lambda: attention_couple(q, k, v, HEADS, overlay),
    }
    dense_call = lambda: densediffusion_attention(q, k, v, HEADS, dense, 900.0)
    with torch.inference_mode():
        for fn in cases.values():          # warm-up
            fn()
        times = {name: [] for name in cases}
        for _ in range(args.repeats):      # interleaved, so load changes hit every case alike
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
        dense_call()
        dense_ms = timed(dense_call, device) * 1e3
    med = {name: statistics.median(ts) for name, ts in times.items()}

    def ratio(a, b):
        """Median over rounds of the per-round ratio: both sides measured back to back in each round."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    print(f"context device={device} dtype={args.dtype} threads={args.threads} repeats={args.repeats} "
          f"N={n} heads={HEADS}x{DIM} regions={len(RECTS)}x{REGION_TOKENS} tokens")
    for name, value in med.items():
        print(f"context median_ms {name} {value * 1e3:.1f}")
    print(f"RATIO omost_vs_sdpa {ratio('omost', 'plain'):.2f} target <= 1.25")
    print(f"RATIO explicit_vs_omost {ratio('explicit', 'omost'):.2f} target >= 2")
    print(f"RATIO couple_vs_omost {ratio('couple', 'omost'):.2f} target <= 1.5")
    print(f"context omost_layout_each_call_vs_sdpa {ratio('omost_layout_each_call', 'plain'):.2f}")
    print(f"context overlay_vs_omost {ratio('overlay', 'omost'):.2f}")
    print(f"context dense_ms_one_run {dense_ms:.1f} (explicit logits; {dense_ms / 1e3 / med['omost']:.1f}x omost)")

if __name__ == "__main__":
    main()
