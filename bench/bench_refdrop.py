"""RefDrop memory and speed.

* Stored bytes for a 20-step SDXL run at 1024 x 1024 (the real 70 attn1 layers, sizes from the layer table):
  ours (cond row only, fp16) vs the public ports' layout (cond + uncond rows, fp16). Computed from shapes.
* Use-mode attn1 time vs plain attn1 at an SD1.5 layer (512 x 512: 4096 tokens, 320 channels, 8 heads,
  uncond + cond rows). On the CPU the reference is used as Save leaves it (fp16, converted in the call); on
  a GPU the ratio is with the reference already on the device (a stage prefetching each step), the host
  copy in every call is printed as context. Medians of per-round ratios.
* Save and load time of a reference file (SD1.5 at 512 x 512, --file-steps steps), as context.

    python bench/bench_refdrop.py [--device cuda] [--repeats 5] [--threads 2] [--file-steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib_omost.attention.core import attention
from lib_omost.attention.refdrop import (
    COND,
    ReferenceStore,
    attn1_layers,
    load_reference,
    refdrop_attention,
    reference_bytes,
    save_reference,
)

GIB = 1024 ** 3


def stored_bytes():
    layers = attn1_layers("sdxl", (128, 128))
    ours = reference_bytes(layers, steps=20, rows=1, itemsize=2)
    public = reference_bytes(layers, steps=20, rows=2, itemsize=2)
    print(f"context sdxl_1024_20_steps layers={len(layers)} ours_GiB={ours / GIB:.2f} public_GiB={public / GIB:.2f}")
    print(f"RATIO stored_bytes_vs_public {ours / public:.2f} target <= 0.5")


def synced(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def use_mode_speed(device, dtype, repeats):
    n, width, heads = 64 * 64, 320, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, width, generator=g).to(device, dtype) for _ in range(3))
    store = ReferenceStore()
    store.put(0, ("input", 1, 0), COND, torch.randn(1, n, width, generator=g), torch.randn(1, n, width, generator=g))

    def use_stored():
        """The reference as Save leaves it (fp16 on the CPU), moved/converted in the call."""
        k_ref, v_ref = store.for_rows(0, ("input", 1, 0), cond_rows=[1], uncond_rows=[0], batch=2)
        return refdrop_attention(q, k, v, k_ref, v_ref, heads, 0.5)

    resident = tuple(x.to(device, dtype) for x in store.get(0, ("input", 1, 0), COND))

    def use_resident():
        """The reference already on the device in the call dtype (a stage prefetching each step)."""
        return refdrop_attention(q, k, v, *resident, heads, 0.5)

    cases = {"plain": lambda: attention(q, k, v, heads), "use": use_stored, "use_resident": use_resident}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        times = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                synced(device)
                start = time.perf_counter()
                fn()
                synced(device)
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"context attn1_sd15_512 median_ms {name} {statistics.median(ts) * 1e3:.2f}")

    def ratio(a):
        return statistics.median(u / p for u, p in zip(times[a], times["plain"]))

    if device.type == "cpu":
        print(f"RATIO use_vs_plain_attn1 {ratio('use'):.2f} target <= 2.2")
        print(f"context use_resident_vs_plain {ratio('use_resident'):.2f}")
    else:
        print(f"RATIO use_vs_plain_attn1 {ratio('use_resident'):.2f} target <= 2.2")
        print(f"context use_with_host_copy_each_call_vs_plain {ratio('use'):.2f} "
              f"(prefetch each step's references to the device)")


def file_times(steps):
    layers = attn1_layers("sd15", (64, 64))
    store = ReferenceStore()
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for layer, tokens, width in layers:
            k = torch.randn(1, tokens, width, generator=g, dtype=torch.float16)
            store.put(step, layer, COND, k, k)
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
    print(f"context reference_file sd15_512 steps={steps} entries={len(store.entries)} size_MiB={mib:.0f} "
          f"save_s={saved:.2f} ({mib / saved:.0f} MiB/s) load_s={read:.2f} ({mib / read:.0f} MiB/s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--file-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"context device={device} dtype={args.dtype} threads={args.threads} repeats={args.repeats}")
    stored_bytes()
    use_mode_speed(device, getattr(torch, args.dtype), args.repeats)
    file_times(args.file_steps)


if __name__ == "__main__":
    main()
