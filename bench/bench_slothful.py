"""Slothful attention and Near-sighted tile speed at an SD1.5 first-level self-attention layer.

320 channels, 8 heads x 40, one batch row. At 96 x 96 tokens (a 768-px SD1.5 latent's first level):
Slothful with stride 4 (2D grid 2 x 2, strided sample, reduction included in the timing) vs plain
attention, and Near-sighted tile (tile 32, global ratio 0.5, no reduction) vs plain attention. The same
two ratios at 48 x 48 are printed as context (where the public README saw slow-downs). Every round runs
each case once, back to back; ratios are medians of the per-round ratios.

    python bench/bench_slothful.py [--device cuda] [--repeats 5] [--threads 2] [--dtype float16]
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

from benchlib import attention_bench_args, timed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention  # noqa: E402
from lib_omost.attention.nearsighted import tiled_attention  # noqa: E402
from lib_omost.attention.slothful import reduce_tokens  # noqa: E402

CHANNELS, HEADS = 320, 8
STRIDE = 4.0
TILE, GLOBAL_RATIO = 32, 0.5
TARGETS = {"slothful_vs_plain_96": 2.5, "nearsighted_tile_vs_plain_96": 3.0}


def cases_at(hw, device, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, hw[0] * hw[1], CHANNELS, generator=g).to(device, dtype) for _ in range(3))
    return {
        "plain": lambda: attention(q, k, v, HEADS),
        "slothful": lambda: attention(q, reduce_tokens(k, hw, STRIDE), reduce_tokens(v, hw, STRIDE), HEADS),
        "tile": lambda: tiled_attention(q, k, v, HEADS, hw, TILE, global_ratio=GLOBAL_RATIO),
    }


def main():
    args, device, dtype = attention_bench_args(__doc__.splitlines()[0])
    print(f"device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"{CHANNELS} channels, {HEADS} heads, stride {STRIDE}, tile {TILE}, global ratio {GLOBAL_RATIO}")

    with torch.inference_mode():
        for fn in cases_at((24, 24), device, dtype).values():      # warm-up, small
            fn()
        for side in (96, 48):
            cases = cases_at((side, side), device, dtype)
            times = {name: [] for name in cases}
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    times[name].append(timed(fn, device))
            for name, t in times.items():
                print(f"{side}x{side} {name}: median {statistics.median(t) * 1000:.1f} ms")
            for name, label in (("slothful", "slothful_vs_plain"), ("tile", "nearsighted_tile_vs_plain")):
                ratio = statistics.median(p / o for p, o in zip(times["plain"], times[name]))
                key = f"{label}_{side}"
                if key in TARGETS:
                    print(f"RATIO {key} {ratio:.2f} target >= {TARGETS[key]}")
                else:
                    print(f"context {key} {ratio:.2f} (speed-up, no target)")


if __name__ == "__main__":
    main()
