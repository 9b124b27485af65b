"""Whole-UNet step cost of each technique: one UNet forward with the SDXL block layout, batch 2 (uncond + cond).

The UNet is the test stand-in's Forge main UNet (tests/standin, ``IntegratedUNet2DConditionModel``: the real
block layout, patch sites and attention replaces) built with SDXL's configuration: channel mult (1, 2, 4),
2 res blocks per level, transformer depth (0, 2, 10) / middle 10 / output (0, 0, 0, 2, 2, 2, 10, 10, 10),
64-dim heads, context 2048, ADM 2816, linear projections, random weights. Our techniques are installed as the
WebUI does it: the extension's stages (``RegionalStage``, ``RefDropStage``, HiDiffusion's ``block_patches`` /
``stages``) through the pass installer (``pass_plan.install``) / ``install_plan`` on the stand-in's
``UnetPatcher``. Each round runs every case once, back to back; ratios are medians of per-round ratios.

Cases (the targets are for the full SDXL configuration, ``--device cuda`` (fp16): 1024 x 1024, 320 channels,
depth 10, and 2048 x 2048 for HiDiffusion; the CPU default is a scaled-down run of the same layout that
takes a couple of minutes on 2 cores: 256 x 256, 64 channels, transformer depth at most 1, HiDiffusion at
512 x 512, fp32):

* Omost, each attention method (score manipulation, attention couple, overlay, DenseDiffusion) on a canvas of
  6 regions x 154 tokens (924 tokens; the uncond row repeated to that length, as the WebUI batches) vs the
  same forward without our stage: target <= 1.15. As context, vs a plain 154-token prompt (the longer
  canvas context itself costs cross-attention time, whatever the method).
* Prediction blending: the conds it makes (``blend_parts``: the whole canvas text and each region's) in one
  batch with the uncond, the masked average of their predictions, vs off (154-token prompt): target
  <= (regions + 1) x 1.05.
* HiDiffusion (the preset Auto picks at 2048 x 2048, "high": RAU-Net and CA, with MSW-MSA) at the large size
  vs plain at that size, at a sigma inside every window: printed (the paper reports 1.58x faster at 2048 x 2048).
* RefDrop Use (c = 0.3, every self-attention layer, the reference's K/V computed through each layer's
  to_k / to_v once per step) vs off: target <= 1.3. Save vs off as context.

    python bench/bench_unet_step.py [--device cuda] [--size 1024] [--hires-size 2048] [--channels 320]
                                    [--depth 10] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import ratio, rounds

from lib_omost.attention.core import attention
from lib_omost.canvas.example import example_canvas
from lib_omost.canvas.model import Canvas, region_masks
from lib_omost.model_info import ModelInfo
from tests.standin import harness

SDXL = dict(in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2, channel_mult=(1, 2, 4),
            num_heads=-1, num_head_channels=64, transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_middle=10,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], context_dim=2048,
            use_linear_in_transformer=True, num_classes="sequential", adm_in_channels=2816, norm_groups=32)
CHUNK = 77
REGION_TOKENS = 2 * CHUNK
OMOST_METHODS = {"Omost": "Omost score manipulation", "Attention couple": "Attention couple",      # label: method
                 "Overlay": "Attention couple (overlay)", "DenseDiffusion": "DenseDiffusion"}


def sdxl_config(channels: int, depth: int) -> dict:
    """SDXL's configuration with ``channels`` model channels and transformer depths capped at ``depth``."""
    cap = [min(d, depth) for d in SDXL["transformer_depth"]]
    cap_out = [min(d, depth) for d in SDXL["transformer_depth_output"]]
    return {**SDXL, "model_channels": channels, "transformer_depth": cap, "transformer_depth_output": cap_out,
            "transformer_depth_middle": min(SDXL["transformer_depth_middle"], depth)}


def build_unet(config: dict, device, dtype):
    from backend.nn.unet import IntegratedUNet2DConditionModel
    with torch.device("meta"):
        model = IntegratedUNet2DConditionModel(**config)
    model = model.to_empty(device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()))
    return model.to(dtype).eval().requires_grad_(False)


def sd_schedule():
    """SD's discrete schedule (scaled-linear betas 0.00085..0.012, 1000 steps): percent -> sigma, sigma -> t."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sigmas = ((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)) ** 0.5
    log_sigmas = sigmas.log()

    def timestep(sigma):
        return (sigma.double().log()[:, None] - log_sigmas[None]).abs().argmin(dim=1).float()

    def percent_to_sigma(percent):
        return 0.0 if percent >= 1 else float(sigmas[int(round((1 - percent) * 999))])
    return percent_to_sigma, timestep, float(sigmas[-1])


class Bench:
    def __init__(self, args, device, dtype):
        from backend.patcher.unet import UnetPatcher
        from lib_omost.forge.webui import attention_layers
        self.device, self.dtype = device, dtype
        self.model = build_unet(sdxl_config(args.channels, args.depth), device, dtype)
        self.patcher = UnetPatcher(SimpleNamespace(diffusion_model=self.model))
        percent_to_sigma, self.timestep, top = sd_schedule()
        self.info = ModelInfo("sdxl", args.channels, attention_layers(self.patcher), percent_to_sigma,
                              self.timestep, attention=lambda q, k, v, heads, options: attention(q, k, v, heads))
        self.sigma = 0.9 * top                      # an early step: inside every technique's window
        self.g = torch.Generator().manual_seed(1)

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g).to(self.device, self.dtype)

    def p(self, unet=None):
        """A processing object as the pass installer sees it (forge_objects.unet and the infotext's dict)."""
        return SimpleNamespace(sd_model=SimpleNamespace(forge_objects=SimpleNamespace(unet=unet or self.patcher)),
                               extra_generation_params={})

    def forward(self, unet, x, context, y, sigma=None):
        sigmas = torch.full((x.shape[0],), sigma or self.sigma, device=self.device)
        options = {**unet.model_options["transformer_options"], "sigmas": sigmas,
                   "cond_or_uncond": [1] + [0] * (x.shape[0] - 1)}
        timesteps = self.timestep(sigmas.cpu()).to(self.device)
        return unet.model.diffusion_model(x, timesteps, context, y, transformer_options=options)


def omost_cases(bench, size):
    from lib_omost.features import omost
    from lib_omost.forge.pass_plan import Parts, install
    base = example_canvas()
    canvas = Canvas(base.global_region, base.regions + base.regions[:1])      # 6 regions with the global one
    count = 1 + len(canvas.regions)
    regions = omost.token_regions([(r, REGION_TOKENS) for r in range(count)])
    length = int(regions.shape[0])
    latent = size // 8
    x = bench.randn(2, 4, latent, latent)
    y = bench.randn(2, SDXL["adm_in_channels"])
    canvas_context = bench.randn(length, SDXL["context_dim"])
    uncond = bench.randn(CHUNK, SDXL["context_dim"])
    long_context = torch.stack([uncond.repeat(length // CHUNK, 1), canvas_context])     # the WebUI's LCM repeat
    prompt = bench.randn(2, REGION_TOKENS, SDXL["context_dim"])
    values = omost.FEATURE.defaults()
    end_sigma = bench.info.percent_to_sigma(values["end_percent"])
    cases = {"off": lambda: bench.forward(bench.patcher, x, prompt, y),
             "off_canvas_context": lambda: bench.forward(bench.patcher, x, long_context, y)}
    for label, method in OMOST_METHODS.items():
        p = bench.p()
        stage = omost.RegionalStage(canvas, regions, method, values["strength"], end_sigma, bench.info)
        install(p, omost.FEATURE.key, Parts(stages=(stage,)), bench.info)
        cases[label] = (lambda unet: lambda: bench.forward(unet, x, long_context, y))(p.sd_model.forge_objects.unet)

    # prediction blending: its conds and the uncond in one batch, then the WebUI's mask-weighted average
    masks = torch.from_numpy(region_masks(canvas, latent, latent))
    parts = omost.blend_parts(canvas_context, omost.region_contexts(canvas_context, regions, count), masks,
                              omost.region_weights(canvas), values["strength"], True)
    contexts = torch.stack([uncond.repeat(length // CHUNK, 1)]
                           + [ctx.repeat(length // ctx.shape[0], 1) for ctx, _ in parts])
    weights = torch.stack([torch.ones(latent, latent, dtype=torch.float64) if w is None else w for _, w in parts])
    weights = weights.to(bench.device, bench.dtype)[:, None]
    xb, yb = x[:1].expand(len(parts) + 1, -1, -1, -1), y[:1].expand(len(parts) + 1, -1)

    def blending():
        out = bench.forward(bench.patcher, xb, contexts, yb)
        return out[:1], (out[1:] * weights).sum(0, keepdim=True) / weights.sum(0, keepdim=True)
    cases["Prediction blending"] = blending
    return cases, count, len(parts)


def refdrop_cases(bench, size, rounds_needed):
    from lib_omost.attention.refdrop_store import ReferenceStore
    from lib_omost.features import refdrop
    from lib_omost.forge.pass_plan import Parts, install
    from lib_omost.forge.webui import attn1_projections
    latent = size // 8
    x = bench.randn(2, 4, latent, latent)
    y = bench.randn(2, SDXL["adm_in_channels"])
    prompt = bench.randn(2, REGION_TOKENS, SDXL["context_dim"])
    layers = set(bench.info.layers)
    first = 10.0

    def step_of(sigma):
        return int(round((sigma - first) * 1000))
    store = ReferenceStore()
    save_p = bench.p()
    install(save_p, refdrop.FEATURE.key,
            Parts(pre_stages=(refdrop.RefDropStage(refdrop.SAVE, layers, store, step_of, 1),)), bench.info)
    with torch.inference_mode():
        bench.forward(save_p.sd_model.forge_objects.unet, x, prompt, y, sigma=first)
    for step in range(1, rounds_needed):        # every step holds the same entries (no copies)
        for (_, layer, branch), entry in list(store.entries.items()):
            store.put(step, layer, branch, entry)
    use_p = bench.p()
    stage = refdrop.RefDropStage(refdrop.USE, layers, store, step_of, rounds_needed, 0.3,
                                 projections=attn1_projections(bench.patcher))
    install(use_p, refdrop.FEATURE.key, Parts(stages=(stage,)), bench.info)
    steps = iter(range(rounds_needed))

    def use():      # a new step each forward: the reference's K/V are projected, as in sampling
        return bench.forward(use_p.sd_model.forge_objects.unet, x, prompt, y, sigma=first + next(steps) / 1000)
    save_store = ReferenceStore()
    saving_p = bench.p()
    install(saving_p, refdrop.FEATURE.key,
            Parts(pre_stages=(refdrop.RefDropStage(refdrop.SAVE, layers, save_store, lambda s: 0, 1),)), bench.info)

    def save():
        save_store.entries.clear()
        save_store.nbytes = 0
        return bench.forward(saving_p.sd_model.forge_objects.unet, x, prompt, y, sigma=first)
    cases = {"off": lambda: bench.forward(bench.patcher, x, prompt, y, sigma=first), "use": use, "save": save}
    return cases, stage


def hidiffusion_cases(bench, size):
    from lib_omost.features import hidiffusion
    from lib_omost.forge.pass_plan import Parts, install
    latent = size // 8
    x = bench.randn(2, 4, latent, latent)
    y = bench.randn(2, SDXL["adm_in_channels"])
    prompt = bench.randn(2, REGION_TOKENS, SDXL["context_dim"])
    # the preset Auto picks for SDXL at 2048 x 2048 ("high": RAU-Net and CA), whatever the bench size
    values = {**hidiffusion.FEATURE.defaults(), "msw_msa": True,
              "resolution": hidiffusion.auto_resolution("sdxl", 2048, 2048)}
    settings = hidiffusion.resolve(values, "sdxl", size, size)
    p = bench.p()
    install(p, hidiffusion.FEATURE.key, Parts(block_patches=hidiffusion.block_patches(settings, bench.info),
                                              stages=tuple(hidiffusion.stages(settings, bench.info, seed=0))),
            bench.info)
    unet = p.sd_model.forge_objects.unet
    return {"plain": lambda: bench.forward(bench.patcher, x, prompt, y),
            "hidiffusion": lambda: bench.forward(unet, x, prompt, y)}, settings


def median_ms(times):
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 elsewhere")
    parser.add_argument("--size", type=int, default=0, help="image side in px (default 1024 CUDA, 256 CPU)")
    parser.add_argument("--hires-size", type=int, default=0, help="HiDiffusion's side (default 2048 CUDA, 512 CPU)")
    parser.add_argument("--channels", type=int, default=0, help="model channels (default 320 CUDA, 64 CPU)")
    parser.add_argument("--depth", type=int, default=0, help="largest transformer depth (default 10 CUDA, 1 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="omost,refdrop,hidiffusion", help="comma-separated parts to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if gpu else "float32"))
    args.size = args.size or (1024 if gpu else 256)
    args.hires_size = args.hires_size or (2048 if gpu else 512)
    args.channels = args.channels or (320 if gpu else 64)
    args.depth = args.depth or (10 if gpu else 1)
    parts = set(args.only.split(","))
    with harness.use_flavour("forge"):
        bench = Bench(args, device, dtype)
        params = sum(p.numel() for p in bench.model.parameters())
        print(f"context device={device} dtype={dtype} threads={args.threads} repeats={args.repeats} "
              f"size={args.size} hires_size={args.hires_size} channels={args.channels} depth={args.depth} "
              f"params={params / 1e6:.0f}M attention_layers={len(bench.info.layers)} batch=2")
        if "omost" in parts:
            cases, regions, blend_conds = omost_cases(bench, args.size)
            with torch.inference_mode():
                times = rounds(cases, device, args.repeats)
            print("context omost median_ms", {k: round(v) for k, v in median_ms(times).items()})
            for method in OMOST_METHODS:
                key = method.lower().replace(" ", "_")
                print(f"RATIO omost_{key}_vs_off_same_context {ratio(times, method, 'off_canvas_context'):.2f} "
                      f"target <= 1.15")
                print(f"context omost_{key}_vs_plain_154_token_prompt {ratio(times, method, 'off'):.2f}")
            print(f"RATIO prediction_blending_vs_off {ratio(times, 'Prediction blending', 'off'):.2f} "
                  f"target <= {regions * 1.05:.2f} ((regions + 1) x 1.05, {regions} regions incl. global, "
                  f"{blend_conds} conds + uncond in one batch)")
        if "refdrop" in parts:
            cases, stage = refdrop_cases(bench, args.size, args.repeats + 2)
            with torch.inference_mode():
                times = rounds(cases, device, args.repeats)
            assert not stage.problems, stage.problems
            print("context refdrop median_ms", {k: round(v) for k, v in median_ms(times).items()})
            print(f"RATIO refdrop_use_vs_off {ratio(times, 'use', 'off'):.2f} target <= 1.3")
            print(f"context refdrop_save_vs_off {ratio(times, 'save', 'off'):.2f}")
        if "hidiffusion" in parts:
            cases, settings = hidiffusion_cases(bench, args.hires_size)
            with torch.inference_mode():
                times = rounds(cases, device, args.repeats)
            print(f"context hidiffusion {settings.describe()} median_ms",
                  {k: round(v) for k, v in median_ms(times).items()})
            print(f"RATIO hidiffusion_speedup_at_{args.hires_size} {ratio(times, 'plain', 'hidiffusion'):.2f} "
                  f"(plain / HiDiffusion; the paper reports 1.58 at 2048)")


if __name__ == "__main__":
    main()
