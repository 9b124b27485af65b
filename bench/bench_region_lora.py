"""Per-region LoRA cost: whole sampling steps (stand-in WebUI, tiny SD1.5) and one layer at SD1.5 size.

Steps: prediction blending of a 2-region canvas without LoRAs vs the same canvas with a rank-8 LoRA on
every attention and feed-forward Linear of the tiny UNet in one region (the stand-in's UNet is tiny, so the
LoRA's share of a step is far larger than in a real model: an upper bound). The third case is the canvas
without LoRAs after a region-LoRA generation, showing nothing stays installed (ratio ~1; the object-patch
and wrapper counts are printed).

Layer: one attn1 to_q at SD1.5 768² level 0 (9216 tokens x 320 channels), rank 16, region = left half:
the un-merged gated update vs the plain Linear.

    python bench/bench_region_lora.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

from benchlib import attention_bench_args, ratio, rounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lib_omost.unet.lora import TOKENS, Gate, add_gated, low_rank  # noqa: E402


def canvas(left):
    return json.dumps({"global": {"description": "a park", "color": "white"},
                       "regions": [{"rect": [0, 90, 0, 45], "distance": 2, "color": "red", "description": left},
                                   {"rect": [0, 90, 45, 90], "distance": 5, "color": "blue",
                                    "description": "a cat"}]})


def write_lora(folder, diffusion_model, rank=8):
    import safetensors.torch
    g = torch.Generator().manual_seed(0)
    state = {}
    for path, module in diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".transformer_blocks." in path:
            key = "lora_unet_" + path.replace(".", "_")
            state[key + ".lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.1
            state[key + ".lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.1
            state[key + ".alpha"] = torch.tensor(float(rank))
    safetensors.torch.save_file(state, os.path.join(folder, "bench_style.safetensors"))
    return len(state) // 3


def step_bench(repeats, device):
    from lib_omost.features import omost
    from tests.standin import harness
    with harness.use_flavour("forge"), tempfile.TemporaryDirectory() as folder:
        from modules import shared
        from standin_core import memory
        shared.cmd_opts.lora_dir = folder
        ui = harness.start_webui([ROOT])
        layers = write_lora(folder, shared.sd_model.forge_objects_original.unet.model.diffusion_model)

        def run(text):
            args = ui.script_args({"Omost": [True, canvas(text), omost.BLEND, 1.0, 1.0]})
            return lambda: ui.txt2img(script_args=args, prompt="", cfg_scale=5, steps=2)

        times = rounds({"blend": run("a dog"), "blend_region_lora": run("a dog <lora:bench_style:1>")}, device,
                       repeats)
        loaded = memory.current_loaded_models[0]
        run("a dog")()
        after = memory.current_loaded_models[0]
        print(f"context: {layers} LoRA layers; with a region LoRA: {len(loaded.object_patches)} object patches; "
              f"without: {len(after.object_patches)} object patches, model_function_wrapper "
              f"{'set' if 'model_function_wrapper' in after.model_options else 'not set'}")
        times.update(rounds({"blend_after": run("a dog"), "blend_again": run("a dog")}, device, repeats))
        return times


def layer_bench(repeats, device, dtype):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(320, 320, bias=False).to(device, dtype)
    lr = low_rank(torch.randn(320, 16, generator=g).to(device, dtype), torch.randn(16, 320, generator=g).to(device, dtype),
                  16.0, None, 1.0)
    x = torch.randn(2, 96 * 96, 320, generator=g).to(device, dtype)
    pixels = torch.zeros(96, 96, dtype=torch.bool, device=device)
    pixels[:, :48] = True
    gate = Gate(rows=torch.arange(2, device=device), pixels=pixels)
    with torch.inference_mode():
        return rounds({"linear": lambda: layer(x),
                       "linear_region_lora": lambda: add_gated(layer(x), x, layer, TOKENS, lr, gate)}, device, repeats)


def main():
    args, device, dtype = attention_bench_args(__doc__.splitlines()[0])
    steps = step_bench(args.repeats, torch.device("cpu"))
    print(f"RATIO region_lora_steps_vs_blend {ratio(steps, 'blend_region_lora', 'blend'):.3f} target <= 2.0")
    print(f"RATIO blend_after_region_lora_vs_blend {ratio(steps, 'blend_after', 'blend_again'):.3f} target <= 1.1")
    layer = layer_bench(args.repeats, device, dtype)
    print(f"RATIO region_lora_layer_vs_linear {ratio(layer, 'linear_region_lora', 'linear'):.3f} target <= 2.5")


if __name__ == "__main__":
    main()
