"""Shared by the benches (run as `python bench/bench_<topic>.py`, so this folder is on sys.path)."""

import argparse
import time

import torch


def timed(fn, device) -> float:
    """Seconds for one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def attention_bench_args(description: str):
    """(args, device, dtype) from the options every attention bench takes; sets the thread count."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, torch.device(args.device), getattr(torch, args.dtype)
