"""Slothful attention and Near-sighted tile speed at level-0 self-attention layers.

Per layer (``--sizes``, presets in benchlib.LAYERS; one batch row): Slothful with stride 4 (2D grid
2 x 2, strided sample, reduction included in the timing) vs plain attention, and Near-sighted tile
(tile 32, global ratio 0.5, no reduction) vs plain attention. Targets (issue 18) apply at the sizes people
use these for: sd15_1536 (SD1.5 at 1536², 192 x 192 tokens, 8 heads x 40) and sdxl_2048 (SDXL at 2048²,
128 x 128 tokens, 10 heads x 64), and at sd15_768 (96 x 96); sd15_384 (48 x 48, where the public README
saw slow-downs) is context. On the CPU the large sizes take minutes per plain call, so the CPU default is
sd15_768 and sd15_384; the GPU default is every size:

    python bench/bench_slothful.py [--device cuda] [--sizes sd15_1536,sdxl_2048] [--repeats 5] [--dtype float16]

Every round runs each case once, back to back; ratios are medians of the per-round ratios. fp16 by
default on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

from benchlib import LAYERS, attention_bench_args, ratio, rounds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention  # noqa: E402
from lib_omost.attention.nearsighted import tiled_attention  # noqa: E402
from lib_omost.attention.slothful import reduce_tokens  # noqa: E402

STRIDE = 4.0
TILE, GLOBAL_RATIO = 32, 0.5
TARGETS = {"slothful": 2.5, "nearsighted_tile": 3.0}
CONTEXT_ONLY = {"sd15_384"}
CPU_SIZES, CUDA_SIZES = ("sd15_768", "sd15_384"), ("sd15_768", "sd15_1536", "sdxl_2048", "sd15_384")


def cases_at(name, device, dtype):
    hw, heads, dim = LAYERS[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, hw[0] * hw[1], heads * dim, generator=g).to(device, dtype) for _ in range(3))
    return {
        "plain": lambda: attention(q, k, v, heads),
        "slothful": lambda: attention(q, reduce_tokens(k, hw, STRIDE), reduce_tokens(v, hw, STRIDE), heads),
        "nearsighted_tile": lambda: tiled_attention(q, k, v, heads, hw, TILE, global_ratio=GLOBAL_RATIO),
    }


def main():
    args, device, dtype = attention_bench_args(__doc__.splitlines()[0], (CPU_SIZES, CUDA_SIZES))
    print(f"device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"stride {STRIDE}, tile {TILE}, global ratio {GLOBAL_RATIO}")
    with torch.inference_mode():
        for name in args.sizes:
            hw, heads, dim = LAYERS[name]
            times = rounds(cases_at(name, device, dtype), device, args.repeats)
            for case, t in times.items():
                print(f"{name} ({hw[0]}x{hw[1]} tokens, {heads}x{dim}) {case}: median {statistics.median(t) * 1000:.1f} ms")
            for case, target in TARGETS.items():
                speedup = ratio(times, "plain", case)
                if name in CONTEXT_ONLY:
                    print(f"context {case}_vs_plain_{name} {speedup:.2f} (speed-up, no target)")
                else:
                    print(f"RATIO {case}_vs_plain_{name} {speedup:.2f} target >= {target}")


if __name__ == "__main__":
    main()
