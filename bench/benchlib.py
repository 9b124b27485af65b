"""Shared by the benches (run as `python bench/bench_<topic>.py`, so this folder is on sys.path)."""

import argparse
import statistics
import time

import torch

# Level-0 self-attention layers by model and image side: ((h, w) tokens, heads, head size). SD1.5's first
# level is the latent (side / 8, 320 channels); SDXL's first attention level is the latent halved
# (side / 16, 640 channels).
LAYERS = {
    "sd15_384": ((48, 48), 8, 40),
    "sd15_520_odd": ((65, 65), 8, 40),
    "sd15_768": ((96, 96), 8, 40),
    "sd15_1536": ((192, 192), 8, 40),
    "sdxl_2048": ((128, 128), 10, 64),
}


def timed(fn, device) -> float:
    """Seconds for one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def rounds(cases: dict, device, repeats: int) -> dict:
    """{case: [seconds per round]}: every round runs each case once, back to back (after one warm-up call
    each), so load from other processes hits every case alike."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return times


def ratio(times: dict, a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b), both measured in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def attention_bench_args(description: str, layers: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
                         add_arguments=None):
    """(args, device, dtype) from the options every attention bench takes; sets the thread count.

    ``layers``: (CPU default, CUDA default) names from ``LAYERS`` for ``--sizes``; the chosen names are
    ``args.sizes``. The dtype defaults to float16 on CUDA and float32 elsewhere.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on CUDA, float32 elsewhere")
    if layers is not None:
        parser.add_argument("--sizes", default=None,
                            help=f"comma-separated layers from {', '.join(LAYERS)}; default: "
                                 f"{','.join(layers[0])} (CPU), {','.join(layers[1])} (CUDA)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("float16" if device.type == "cuda" else "float32")
    if layers is not None:
        args.sizes = args.sizes.split(",") if args.sizes else list(layers[device.type == "cuda"])
        unknown = [name for name in args.sizes if name not in LAYERS]
        if unknown:
            parser.error(f"unknown sizes {unknown}; choose from {', '.join(LAYERS)}")
    return args, device, getattr(torch, args.dtype)
