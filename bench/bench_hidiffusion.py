"""HiDiffusion speed: MSW-MSA self-attention vs full attention, and a whole UNet forward with RAU-Net on vs off.

MSW-MSA at a 96 x 96-token SD1.5 first-level self-attention layer (320 channels, 8 heads x 40, one batch
row): 2 x 2 shifted windows (shift drawn from a seeded generator each call, partition / reverse included in
the timing) vs full attention. An odd 65 x 65 grid (a 520-px SD1.5 latent; windows padded with masked
keys) is printed as context.
RAU-Net: one forward of the SD1.5-like test stand-in UNet (tests/standin, Forge main flavour: the real block
layout with tiny widths, float32 whatever --dtype says) with the block patches of the "high" preset (RAU-Net
input 3 / output 8 and CA input 1 / output 11, built by lib_omost.features.hidiffusion) at a sigma inside
their windows (active) vs the same patches at a sigma outside them (inactive); the "low" preset (RAU-Net
only) as context; every case must give the unpatched UNet's output shape. Default size 384 x 384 px on the
CPU (a 48 x 48 latent: the toy's 4-dim heads make larger maps too slow for a minute on 2 cores), 1024 x 1024
on CUDA.
Every round runs each case once, back to back; ratios are medians of the per-round ratios.

    python bench/bench_hidiffusion.py [--device cuda] [--repeats 5] [--threads 2] [--dtype float16] [--size 384]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

from benchlib import attention_bench_args, timed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention
from lib_omost.attention.mswmsa import draw_shift, msw_msa_attention

CHANNELS, HEADS = 320, 8
TARGET = 3.0


def cases_at(hw, device, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, hw[0] * hw[1], CHANNELS, generator=g).to(device, dtype) for _ in range(3))
    shifts = torch.Generator().manual_seed(1234)
    state = {"shift": None}

    def msw():
        state["shift"] = draw_shift(shifts, state["shift"])
        return msw_msa_attention(q, k, v, HEADS, hw, state["shift"])

    return {"full": lambda: attention(q, k, v, HEADS), "msw_msa": msw}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=0, help="RAU-Net image side in px (0: 384 CPU, 1024 CUDA)")
    parser.add_argument("--raunet-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device {device}, dtype {args.dtype}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"{CHANNELS} channels, {HEADS} heads")

    with torch.inference_mode():
        for fn in cases_at((24, 24), device, dtype).values():      # warm-up, small
            fn()
        for hw in ((96, 96), (65, 65)):
            cases = cases_at(hw, device, dtype)
            times = {name: [] for name in cases}
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    times[name].append(timed(fn, device))
            for name, t in times.items():
                print(f"{hw[0]}x{hw[1]} {name}: median {statistics.median(t) * 1000:.1f} ms")
            ratio = statistics.median(f / m for f, m in zip(times["full"], times["msw_msa"]))
            if hw == (96, 96):
                print(f"RATIO mswmsa_vs_full_96 {ratio:.2f} target >= {TARGET}")
            else:
                print(f"context mswmsa_vs_full_{hw[0]}x{hw[1]}_odd_masked {ratio:.2f} (speed-up, no target)")

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
        shapes = {name: tuple(fn().shape) for name, fn in {**cases, "unpatched": plain}.items()}   # warm-up too
        times = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn, device))
    same = "" if len(set(shapes.values())) == 1 else f", SHAPES DIFFER: {shapes}"
    print(f"stand-in SD1.5 UNet forward (float32) at {size}x{size} px (latent {size // 8}x{size // 8}), "
          f"output {shapes['high_active']}{same}")
    for name, t in times.items():
        print(f"raunet {name}: median {statistics.median(t) * 1000:.0f} ms")
    ratio = statistics.median(a / i for a, i in zip(times["high_active"], times["high_inactive"]))
    print(f"RATIO raunet_active_vs_inactive {ratio:.2f} target <= 1.0")
    low = statistics.median(a / i for a, i in zip(times["low_active"], times["high_inactive"]))
    print(f"context raunet_low_preset_active_vs_inactive {low:.2f} (RAU-Net pair only, no CA)")


if __name__ == "__main__":
    main()
