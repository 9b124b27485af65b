"""RefDrop memory, error and speed.

* Stored bytes for a 20-step SDXL run at 1024 x 1024 (the real 70 attn1 layers, sizes from the layer table),
  each form against the public ports' layout (fp16 K and V of the cond and uncond rows): format v1 (fp16 K
  and V of the cond row), the 16-bit attention input, the 8-bit attention input. Computed from shapes.
* The 8-bit form's error at use, at a real SDXL level-2 layer (1024 tokens, 1280 channels, 20 heads x 64):
  the attention input is LayerNorm (random gain and shift per channel) of random hidden states, to_k / to_v
  are random bias-free Linear layers (PyTorch's default init), the queries random. The error of the RefDrop
  output with the 8-bit reference against the 16-bit one, as a fraction of the output's largest value, at
  c = 1 (the reference attention alone, the worst case) and c = 0.3. Random data, not a trained model's.
* Use-mode attn1 time vs plain attn1 at an SD1.5 layer (512 x 512: 4096 tokens, 320 channels, 8 heads,
  uncond + cond rows), through the RefDrop stage itself: "use" is the first call of a step (the reference's
  K/V are computed through to_k / to_v, once per step and layer), "use_again" a later call of the same step
  (split cond/uncond calls, second-order samplers). The reference is as Save leaves it (CPU); on a GPU a
  step moves it to the device once. Medians of per-round ratios.
* Save and load time of a reference file (SD1.5 at 512 x 512, --file-steps steps), as context.

    python bench/bench_refdrop.py [--device cuda] [--repeats 5] [--threads 2] [--file-steps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import ratio, rounds

from lib_omost.attention.core import attention
from lib_omost.attention.plan import AttnCall, LayerKey
from lib_omost.attention.refdrop import refdrop_attention
from lib_omost.attention.refdrop_file import load_reference, save_reference
from lib_omost.attention.refdrop_store import (
    COND,
    INPUT8,
    INPUT16,
    KV16,
    ReferenceStore,
    attn1_layers,
    public_layout_bytes,
    reference_bytes,
)
from lib_omost.features import refdrop

GIB = 1024 ** 3
LAYER = LayerKey("input", 1, 0)


def stored_bytes():
    layers = attn1_layers("sdxl", (128, 128))
    public = public_layout_bytes(layers, steps=20)
    print(f"context sdxl_1024_20_steps layers={len(layers)} public_GiB={public / GIB:.2f}")
    for form, label, target in ((KV16, "kv_fp16_v1", "0.5"), (INPUT16, "input_16bit", "0.25"),
                                (INPUT8, "input_8bit", "0.125 (codes; + per-channel offset and step)")):
        ours = reference_bytes(layers, steps=20, form=form)
        print(f"context stored {label} GiB={ours / GIB:.3f}")
        print(f"RATIO stored_bytes_{label}_vs_public {ours / public:.4f} target <= {target}")


def eight_bit_error(device, dtype):
    tokens, width, heads = 1024, 1280, 20
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(width)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(width, generator=g))
        norm.bias.copy_(0.5 * torch.randn(width, generator=g))
        x = norm(torch.randn(2, tokens, width, generator=g))
    torch.manual_seed(1)
    to_k, to_v = (torch.nn.Linear(width, width, bias=False).to(device, dtype) for _ in range(2))
    q, k, v = (torch.randn(2, tokens, width, generator=g).to(device, dtype) for _ in range(3))

    def project(n):
        return to_k(n), to_v(n)

    sixteen, eight = ReferenceStore(), ReferenceStore(compact=True)
    for store in (sixteen, eight):
        store.record(0, LAYER, x, cond_rows=[1])
    with torch.no_grad():
        for c in (1.0, 0.3):
            exact = refdrop_attention(q, k, v, *sixteen.get(0, LAYER, COND).kv(device, dtype, project), heads, c)
            approx = refdrop_attention(q, k, v, *eight.get(0, LAYER, COND).kv(device, dtype, project), heads, c)
            error = (approx - exact).float()
            print(f"ERROR 8bit_vs_16bit_reference c={c:g} max_abs/max_out={error.abs().max() / exact.abs().max():.2e} "
                  f"rms/rms_out={error.pow(2).mean().sqrt() / exact.float().pow(2).mean().sqrt():.2e}")


def use_mode_speed(device, dtype, repeats):
    n, width, heads = 64 * 64, 320, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, width, generator=g).to(device, dtype) for _ in range(3))
    torch.manual_seed(2)
    to_k, to_v = (torch.nn.Linear(width, width, bias=False).to(device, dtype) for _ in range(2))
    store = ReferenceStore()
    store.record(0, LAYER, torch.randn(2, n, width, generator=g), cond_rows=[1])
    steps = repeats + 1
    for step in range(1, steps):                  # every step holds the same entry (no copies)
        store.put(step, LAYER, COND, store.get(0, LAYER, COND))
    stage = refdrop.RefDropStage(refdrop.USE, {LAYER}, store, lambda sigma: int(sigma), steps, 0.5,
                                 projections={LAYER: lambda x: (to_k(x), to_v(x))})
    step = iter(range(steps))
    current = {"call": None}

    def inner(q_, k_, v_, _call):
        return attention(q_, k_, v_, heads)

    def use():
        """The first call of a step: the step's K/V of the reference are computed."""
        current["call"] = AttnCall(LAYER, heads, (64, 64), (64, 64), [1], [0], torch.tensor([float(next(step))]))
        return stage(q, k, v, current["call"], inner)

    def use_again():
        """A later call of the same step: the step's K/V are reused."""
        return stage(q, k, v, current["call"], inner)

    cases = {"plain": lambda: attention(q, k, v, heads), "use": use, "use_again": use_again}
    with torch.inference_mode():
        times = rounds(cases, device, repeats)
    for name, ts in times.items():
        print(f"context attn1_sd15_512 median_ms {name} {sorted(ts)[len(ts) // 2] * 1e3:.2f}")
    print(f"RATIO use_vs_plain_attn1 {ratio(times, 'use', 'plain'):.2f} target <= 2.2 (first call of a step)")
    print(f"RATIO use_again_vs_plain_attn1 {ratio(times, 'use_again', 'plain'):.2f} target <= 2.2")


def file_times(steps):
    layers = attn1_layers("sd15", (64, 64))
    g = torch.Generator().manual_seed(1)
    for compact in (False, True):
        store = ReferenceStore(compact=compact)
        for step in range(steps):
            for layer, tokens, width in layers:
                store.record(step, layer, torch.randn(1, tokens, width, generator=g), cond_rows=[0])
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "reference.safetensors")
            start = time.perf_counter()
            size = save_reference(store, path, model_family="sd15", resolution=(512, 512), steps=steps)
            saved = time.perf_counter() - start
            start = time.perf_counter()
            loaded, _ = load_reference(path)
            read = time.perf_counter() - start
        assert loaded.nbytes == store.nbytes
        mib = size / 1024 ** 2
        print(f"context reference_file sd15_512 {'8bit' if compact else '16bit'} steps={steps} "
              f"entries={len(store.entries)} size_MiB={mib:.1f} save_s={saved:.2f} load_s={read:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--file-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    print(f"context device={device} dtype={dtype} threads={args.threads} repeats={args.repeats}")
    stored_bytes()
    eight_bit_error(device, dtype)
    use_mode_speed(device, dtype, args.repeats)
    file_times(args.file_steps)


if __name__ == "__main__":
    main()
