"""Head reshapes, plain attention and layer geometry shared by every attention technique.

Tensors follow the WebUI's attention-replace convention: q, k, v are projected and laid out
``[B, N, heads * dim_head]``; the result has q's layout.

Fused kernels: every technique calls SDPA without a mask where it can (a mask moves CUDA off the flash
kernel). ``gathered_attention`` runs attention over gathered query / key subsets (windows, tiles,
regions) as unmasked SDPA calls; ``attention_lse`` also returns each query's log-sum-exp, so partial
attentions over disjoint key sets can be merged exactly (``regional.merge_partials``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] -> [B, H, N, D]."""
    b, n, c = x.shape
    if c % heads:
        raise ValueError(f"channel count {c} is not divisible by {heads} heads")
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain scaled-dot-product attention in the WebUI layout.

    ``mask`` is boolean (True = attend) or additive float, broadcastable to [B, H, Nq, Nk].
    K/V batch must equal q's batch (the WebUI helpers silently regroup otherwise; we refuse).
    """
    if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
        raise ValueError(f"attention batch mismatch: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads),
                                         split_heads(v, heads), attn_mask=mask)
    return merge_heads(out)


def halve_ceil(n: int, times: int) -> int:
    """Size after ``times`` stride-2, padding-1 downsamples (odd sizes round up)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


@lru_cache(maxsize=512)
def layer_hw(latent_hw: tuple[int, int], n_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of an attention layer holding ``n_tokens`` tokens in a latent of size ``latent_hw``.

    Halve the latent size with ceil until h*w == n_tokens (never sqrt(N): non-square and odd sizes are
    common). When no level matches, a size-changing patch ran before this layer (Deep Shrink, RAU-Net):
    take the factorisation h*w == n_tokens whose aspect ratio is closest to the latent's.
    """
    h, w = latent_hw
    while h * w > n_tokens and (h > 1 or w > 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w == n_tokens:
        return h, w
    aspect = math.log(latent_hw[0] / latent_hw[1])
    best = min((d for d in range(1, n_tokens + 1) if n_tokens % d == 0),
               key=lambda d: abs(math.log(d / (n_tokens // d)) - aspect))
    return best, n_tokens // best


def scale(dim_head: int) -> float:
    return 1.0 / math.sqrt(dim_head)


# ------------------------------------------------------------------- attention with log-sum-exp

def attention_lse_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SDPA output, log-sum-exp of each query's scaled logits) of [B, H, N, D] tensors, from explicit logits
    (float32 at least). The reference and the fallback of ``attention_lse``."""
    compute = torch.promote_types(q.dtype, torch.float32)
    logits = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * scale(q.shape[-1])
    lse = logits.logsumexp(-1)
    return (torch.exp(logits - lse[..., None]) @ v.to(compute)).to(q.dtype), lse


def _fused_lse_op(name: str) -> Callable | None:
    """A private ATen SDPA kernel that returns the log-sum-exp, as ``fn(q, k, v) -> (out, lse)``, or None."""
    op = getattr(torch.ops.aten, name, None)
    if op is None:
        return None
    if name == "_scaled_dot_product_efficient_attention":
        return lambda q, k, v: _crop_lse(op(q, k, v, None, True)[:2], q.shape[2])
    return lambda q, k, v: tuple(op(q, k, v)[:2])


def _crop_lse(pair, n_queries: int):
    out, lse = pair
    return out, lse[..., :n_queries]            # some versions pad the memory-efficient kernel's lse to 32


# candidates per device type, fastest first; the CUDA flash kernel needs fp16/bf16 and an sm80+ GPU
FUSED_LSE_OPS = {
    "cpu": ("_scaled_dot_product_flash_attention_for_cpu",),
    "cuda": ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention"),
}


def _probe_lse(fn: Callable, device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Does ``fn`` run here and agree with the explicit logits (natural-log lse, same output)?"""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, head_dim, generator=g).to(device, dtype) for n in (5, 7, 7))
    try:
        out, lse = fn(q, k, v)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    ref_out, ref_lse = attention_lse_math(q.double(), k.double(), v.double())
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 3e-2
    return (tuple(lse.shape) == tuple(ref_lse.shape)
            and torch.allclose(out.double(), ref_out.to(device), atol=tolerance)
            and torch.allclose(lse.double(), ref_lse.to(device), atol=max(tolerance, 1e-3)))


@cache
def lse_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> Callable:
    """The attention-with-lse function for (device, dtype, head size): the first fused kernel that passes a
    probe (run once, here), else ``attention_lse_math``."""
    for name in FUSED_LSE_OPS.get(device.type, ()):
        fn = _fused_lse_op(name)
        if fn is not None and _probe_lse(fn, device, dtype, head_dim):
            return fn
    return attention_lse_math


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(SDPA output, log-sum-exp [B, H, N]) of [B, H, N, D] tensors, on a fused kernel where one exists."""
    return lse_kernel(q.device, q.dtype, q.shape[-1])(q, k, v)


# ------------------------------------------------------------------------- gathered attention

class GatherCall(NamedTuple):
    """One unmasked SDPA call of ``count`` batch entries; entry e attends its own gathered tokens.

    ``queries`` [count * n_q]: token ids of the queries, entry by entry; ``keys`` / ``values``
    [count * n_k]: positions of each entry's keys / values in the key / value source.
    """
    count: int
    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       calls: Sequence[GatherCall], *, with_lse: bool = False):
    """Outputs ``[B, P, heads, D]`` of every call's queries in call order (P = all queries), and with
    ``with_lse`` their log-sum-exp ``[B, P, heads]`` (else None). No mask: every entry of a call has the
    same query and key counts."""
    batch = q.shape[0]
    outs, lses = [], []
    for call in calls:
        entries = batch * call.count
        # index_select, not advanced indexing: PyTorch's CPU advanced indexing along dim 1 is several times slower
        qs = split_heads(q.index_select(1, call.queries).view(entries, -1, q.shape[2]), heads)
        ks = split_heads(k.index_select(1, call.keys).view(entries, -1, k.shape[2]), heads)
        vs = split_heads(v.index_select(1, call.values).view(entries, -1, v.shape[2]), heads)
        if with_lse:
            out, lse = attention_lse(qs, ks, vs)
            lses.append(lse.transpose(1, 2).reshape(batch, -1, heads))
        else:
            out = F.scaled_dot_product_attention(qs, ks, vs)
        outs.append(out.transpose(1, 2).reshape(batch, -1, heads, out.shape[-1]))
    return _cat_tokens(outs), (_cat_tokens(lses) if with_lse else None)


def _cat_tokens(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)
