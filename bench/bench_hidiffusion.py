"""HiDiffusion speed: MSW-MSA self-attention vs full attention, and a whole UNet forward with RAU-Net on vs off.

MSW-MSA per level-0 self-attention layer (``--sizes``, presets in benchlib.LAYERS; one batch row): 2 x 2
shifted windows (shift drawn from a seeded generator each call, the window gathers included in the
timing) vs full attention; target >= 3 (4 is the limit: a quarter of the score entries). CPU default:
sd15_768 (96 x 96 tokens, 8 heads x 40) with target, and the odd sd15_520_odd grid (65 x 65: four window
sizes, no padding in any kernel) as context; the GPU default adds sd15_1536 (192 x 192) and sdxl_2048
(128 x 128, 10 heads x 64), which take minutes per full-attention call on the CPU.
RAU-Net: one forward of the SD1.5-like test stand-in UNet (tests/standin, Forge main flavour: the real block
layout with tiny widths, float32 whatever --dtype says) with the block patches of the "high" preset (RAU-Net
input 3 / output 8 and CA input 1 / output 11, built by lib_omost.features.hidiffusion) at a sigma inside
their windows (active) vs the same patches at a sigma outside them (inactive); the "low" preset (RAU-Net
only) as context; every case must give the unpatched UNet's output shape. Default size 384 x 384 px on the
CPU (a 48 x 48 latent: the toy's 4-dim heads make larger maps too slow for a minute on 2 cores), 1024 x 1024
on CUDA.
Every round runs each case once, back to back; ratios are medians of the per-round ratios. fp16 by default
on CUDA, fp32 on the CPU.

    python bench/bench_hidiffusion.py [--device cuda] [--sizes sd15_1536,sdxl_2048] [--repeats 5] [--size 384]
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

from benchlib import LAYERS, attention_bench_args, ratio, rounds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention
from lib_omost.attention.mswmsa import draw_shift, msw_msa_attention

TARGET = 3.0
CONTEXT_ONLY = {"sd15_520_odd"}
CPU_SIZES, CUDA_SIZES = ("sd15_768", "sd15_520_odd"), ("sd15_768", "sd15_1536", "sdxl_2048", "sd15_520_odd")


def cases_at(name, device, dtype):
    hw, heads, dim = LAYERS[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, hw[0] * hw[1], heads * dim, generator=g).to(device, dtype) for _ in range(3))
    shifts = torch.Generator().manual_seed(1234)
    state = {"shift": None}

    def msw():
        state["shift"] = draw_shift(shifts, state["shift"])
        return msw_msa_attention(q, k, v, heads, hw, state["shift"])

    return {"full": lambda: attention(q, k, v, heads), "msw_msa": msw}


def raunet_arguments(parser):
    parser.add_argument("--size", type=int, default=0, help="RAU-Net image side in px (0: 384 CPU, 1024 CUDA)")
    parser.add_argument("--raunet-repeats", type=int, default=5)


def main():
    args, device, dtype = attention_bench_args(__doc__.splitlines()[0], (CPU_SIZES, CUDA_SIZES), raunet_arguments)
    print(f"device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    with torch.inference_mode():
        for name in args.sizes:
            hw, heads, dim = LAYERS[name]
            times = rounds(cases_at(name, device, dtype), device, args.repeats)
            for case, t in times.items():
                print(f"{name} ({hw[0]}x{hw[1]} tokens, {heads}x{dim}) {case}: median {statistics.median(t) * 1000:.1f} ms")
            speedup = ratio(times, "full", "msw_msa")
            if name in CONTEXT_ONLY:
                print(f"context mswmsa_vs_full_{name} {speedup:.2f} (speed-up, no target)")
            else:
                print(f"RATIO mswmsa_vs_full_{name} {speedup:.2f} target >= {TARGET}")

    raunet_ratio(device, args.size or (1024 if device.type == "cuda" else 384), args.raunet_repeats)


def raunet_cases(device, size):
    """{case: forward()} on the SD1.5-like stand-in UNet; our block patches built from the presets."""
    from lib_omost.features import hidiffusion
    from lib_omost.forge.webui import model_info
    from tests.standin import harness

    sd_model = harness.make_sd_model("sd15", cached=False)
    unet = sd_model.forge_objects.unet
    info = model_info(sd_model, unet)
    diffusion_model = unet.model.diffusion_model.to(device)
    schedule = harness.schedule(unet)
    inside, outside = float(schedule.sigmas[-1]), float(schedule.sigmas[0])    # 0 % and 100 % of sampling
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, size // 8, size // 8, generator=g).to(device)
    context = torch.randn(1, 77, 16, generator=g).to(device)

    def patched(preset: str, sigma: float):
        values = {**hidiffusion.FEATURE.defaults(), "resolution": preset, "msw_msa": False}
        settings = hidiffusion.resolve(values, "sd15", size, size)
        patches = hidiffusion.block_patches(settings, info)
        names = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
        sigmas = torch.tensor([sigma], device=device)
        timesteps = schedule.timestep(torch.tensor([sigma])).float().to(device)

        def forward():
            options = {"patches": {name: list(getattr(patches, name)) for name in names}, "sigmas": sigmas}
            return diffusion_model(x, timesteps, context, transformer_options=options)
        return forward

    def plain():
        return diffusion_model(x, schedule.timestep(torch.tensor([inside])).float().to(device), context,
                               transformer_options={"sigmas": torch.tensor([inside], device=device)})

    return {"high_active": patched("high", inside), "high_inactive": patched("high", outside),
            "low_active": patched("low", inside)}, plain


def raunet_ratio(device, size, repeats):
    from tests.standin import harness

    with harness.use_flavour("forge"), torch.inference_mode():
        cases, plain = raunet_cases(device, size)
        shapes = {name: tuple(fn().shape) for name, fn in {**cases, "unpatched": plain}.items()}
        times = rounds(cases, device, repeats)
    same = "" if len(set(shapes.values())) == 1 else f", SHAPES DIFFER: {shapes}"
    print(f"stand-in SD1.5 UNet forward (float32) at {size}x{size} px (latent {size // 8}x{size // 8}), "
          f"output {shapes['high_active']}{same}")
    for name, t in times.items():
        print(f"raunet {name}: median {statistics.median(t) * 1000:.0f} ms")
    print(f"RATIO raunet_active_vs_inactive {ratio(times, 'high_active', 'high_inactive'):.2f} target <= 1.0")
    print(f"context raunet_low_preset_active_vs_inactive {ratio(times, 'low_active', 'high_inactive'):.2f} "
          f"(RAU-Net pair only, no CA)")


if __name__ == "__main__":
    main()
