"""Regional attention speed per layer at SDXL 1024² (level 0 cross-attention).

N = 4096 queries (64 x 64), 10 heads x 64, six regions of 154 tokens each (924-token context), one cond
row: Omost score manipulation, attention couple (average) and overlay vs plain SDPA over the same context;
the explicit-logits formulation vs the Omost method. "omost" is the form the device runs by default
(mask-free region partials on CUDA, one SDPA with the float mask elsewhere); the other form, the layout
rebuilt on every call, couple vs Omost and DenseDiffusion (two passes) are printed as context. Layouts
are prepared once (as a stage caches them per layer size and device). Every round runs each case once,
back to back; ratios are medians of the per-round ratios (robust to load from other processes).

    python bench/bench_regional.py [--device cuda] [--repeats 5] [--threads 2] [--dtype float16]

fp16 by default on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

from benchlib import attention_bench_args, ratio, rounds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention
from lib_omost.attention.regional import (
    attention_couple,
    couple_layout,
    dense_cross_layout,
    densediffusion_attention,
    mask_free_default,
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

    # layouts are built once per (layer size, context length, dtype, device) and reused by every layer and step
    omost = omost_layout(regions, masks, length, dtype=dtype)
    other_form = omost_layout(regions, masks, length, dtype=dtype, mask_free=not mask_free_default(device))
    couple = couple_layout(regions, masks, length, dtype=dtype)
    overlay = couple_layout(regions, masks, length, mode="overlay", dtype=dtype)
    dense = dense_cross_layout(regions, masks, length)
    cases = {
        "plain": lambda: attention(q, k, v, HEADS),
        "omost": lambda: omost_attention(q, k, v, HEADS, omost),
        "omost_other_form": lambda: omost_attention(q, k, v, HEADS, other_form),
        "omost_layout_each_call": lambda: omost_attention(q, k, v, HEADS, omost_layout(regions, masks, length, dtype=dtype)),
        "explicit": lambda: omost_attention_explicit(q, k, v, HEADS, omost),
        "couple": lambda: attention_couple(q, k, v, HEADS, couple),
        "overlay": lambda: attention_couple(q, k, v, HEADS, overlay),
        "dense": lambda: densediffusion_attention(q, k, v, HEADS, dense, 900.0),
    }
    with torch.inference_mode():
        times = rounds(cases, device, args.repeats)

    form = "mask-free" if omost.partials is not None else "masked"
    print(f"context device={device} dtype={args.dtype} threads={args.threads} repeats={args.repeats} "
          f"N={n} heads={HEADS}x{DIM} regions={len(RECTS)}x{REGION_TOKENS} tokens omost_form={form}")
    for name, t in times.items():
        print(f"context median_ms {name} {statistics.median(t) * 1e3:.1f}")
    print(f"RATIO omost_vs_sdpa {ratio(times, 'omost', 'plain'):.2f} target <= 1.25")
    print(f"RATIO couple_vs_sdpa {ratio(times, 'couple', 'plain'):.2f} target <= 1.20")
    print(f"RATIO overlay_vs_sdpa {ratio(times, 'overlay', 'plain'):.2f} target <= 1.20")
    print(f"RATIO explicit_vs_omost {ratio(times, 'explicit', 'omost'):.2f} target >= 2")
    print(f"context omost_other_form_vs_sdpa {ratio(times, 'omost_other_form', 'plain'):.2f} "
          f"({'masked' if form == 'mask-free' else 'mask-free'})")
    print(f"context omost_layout_each_call_vs_sdpa {ratio(times, 'omost_layout_each_call', 'plain'):.2f}")
    print(f"context couple_vs_omost {ratio(times, 'couple', 'omost'):.2f}")
    print(f"context dense_vs_sdpa {ratio(times, 'dense', 'plain'):.2f} (two passes: logits once for the row "
          f"extrema, then fused partials)")


if __name__ == "__main__":
    main()
