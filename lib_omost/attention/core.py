"""Head reshapes, plain attention and layer geometry shared by every attention technique.

Tensors follow the WebUI's attention-replace convention: q, k, v are projected and laid out
``[B, N, heads * dim_head]``; the result has q's layout.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
