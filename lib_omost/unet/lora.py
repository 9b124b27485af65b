"""LoRA updates added un-merged and restricted to a region (pure torch).

A LoRA changes a layer's weight W by ``scale * up @ down`` (conv: ``up`` 1x1 after ``down`` with the layer's
kernel, or ``down`` 1x1, ``mid`` with the kernel, ``up`` 1x1), with ``scale = weight * alpha / rank``
(``alpha`` missing: ``scale = weight``; both WebUIs' rule). Here W is never changed: the layer's own output is
kept and ``scale * up(down(x))`` is added where the region is, computed through the rank, never forming the
full matrix.

Where one region's update acts in one UNet call is a ``Gate``: batch rows, and within them either every
position, a pixel mask at the layer's grid, or (for a layer whose input is the text context, attn2 to_k /
to_v) the region's tokens. Outside the gate the layer output is the unpatched output, bit for bit (nothing is
added there); inside it equals the output of the weight with the LoRA merged in (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TOKENS, CONTEXT, CONV, VECTOR = "tokens", "context", "conv", "vector"      # what a layer's input is


@dataclass(frozen=True)
class LowRank:
    """One LoRA's factors for one layer: up [out, r(, 1, 1)], down [r, in(, kh, kw)], optional mid
    [r, r, kh, kw] (LoCon's Tucker form), and the scale weight * alpha / rank."""
    up: torch.Tensor
    down: torch.Tensor
    mid: torch.Tensor | None
    scale: float


def low_rank(up: torch.Tensor, down: torch.Tensor, alpha: float | None, mid: torch.Tensor | None,
             weight: float) -> LowRank:
    """The WebUIs' scale rule: alpha / rank (rank = down's first dimension), 1 without alpha, times weight."""
    rank = down.shape[0]
    return LowRank(up, down, mid, float(weight) * (float(alpha) / rank if alpha is not None else 1.0))


def merged_delta(lr: LowRank, weight_shape: Sequence[int]) -> torch.Tensor:
    """The full weight change scale * up @ down (through mid) in the layer's weight shape: the merged form,
    used by tests and to check a file's shapes; the sampling path never builds it."""
    down = lr.down
    if lr.mid is not None:       # (mid o down) as one [r, in, kh, kw] kernel
        down = torch.einsum("abhw,bi->aihw", lr.mid, lr.down.flatten(1))
    full = lr.up.flatten(1) @ down.flatten(1)
    return lr.scale * full.reshape(weight_shape)


def _linear_delta(lr: LowRank, x: torch.Tensor) -> torch.Tensor:
    down, up = lr.down.flatten(1).to(x), lr.up.flatten(1).to(x)
    return F.linear(F.linear(x, down), up) * lr.scale


def _conv_delta(lr: LowRank, x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    geometry = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    down = lr.down.to(x)
    if down.dim() == 2:
        down = down[:, :, None, None]
    if lr.mid is None:
        h = F.conv2d(x, down, **geometry)
    else:                        # 1x1 down before the kernel: zero padding commutes with a bias-free 1x1
        h = F.conv2d(F.conv2d(x, down), lr.mid.to(x), **geometry)
    up = lr.up.to(x)
    return F.conv2d(h, up if up.dim() == 4 else up[:, :, None, None]) * lr.scale


def lora_delta(lr: LowRank, x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """scale * up(down(x)) for this layer (Conv2d: with its stride, padding and dilation; else linear)."""
    if isinstance(layer, torch.nn.Conv2d):
        return _conv_delta(lr, x, layer)
    return _linear_delta(lr, x)


@dataclass(frozen=True)
class Gate:
    """Where one region's update acts in one call: ``rows`` (long [k]) of the batch, and within them
    ``pixels`` (bool [h, w] at the layer's grid) and/or ``tokens`` (long [t]: context positions); None = all."""
    rows: torch.Tensor
    pixels: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


def _positions(gate: Gate, kind: str, x: torch.Tensor) -> torch.Tensor | None:
    """The sequence positions (dim 1) a linear update touches, or None for all of them."""
    if kind == CONTEXT:
        return gate.tokens
    if kind == TOKENS and gate.pixels is not None:
        return gate.pixels.flatten().nonzero()[:, 0].to(x.device)
    return None


def add_gated(out: torch.Tensor, x: torch.Tensor, layer: torch.nn.Module, kind: str, lr: LowRank,
              gate: Gate) -> torch.Tensor:
    """``out`` (the layer's own output on ``x``) plus the update on the gate's rows/positions, in place on
    ``out`` (a fresh output of the layer). Linear layers compute the update only there; conv layers compute
    it on the gate's rows and keep it where ``pixels`` is set."""
    rows = gate.rows.to(out.device)
    if rows.numel() == 0:
        return out
    if kind == CONV:
        delta = lora_delta(lr, x[rows], layer).to(out.dtype)
        if gate.pixels is not None:
            kept = out[rows]
            delta = torch.where(gate.pixels.to(out.device), kept + delta, kept)
            out[rows] = delta
        else:
            out[rows] += delta
        return out
    if kind == VECTOR or x.dim() == 2:
        out[rows] += lora_delta(lr, x[rows], layer).to(out.dtype)
        return out
    positions = _positions(gate, kind, x)
    if positions is None:
        out[rows] += lora_delta(lr, x[rows], layer).to(out.dtype)
        return out
    if positions.numel() == 0:
        return out
    positions = positions.to(out.device)
    index = (rows[:, None], positions[None, :])
    out[index] += lora_delta(lr, x[index], layer).to(out.dtype)
    return out


Gates = Callable[[int, str, torch.Tensor, torch.Tensor], Sequence[tuple[int, Gate]]]


def gated_forward(layer: torch.nn.Module, original: Callable, kind: str,
                  updates: Sequence[tuple[int, LowRank]], gates: Gates) -> Callable:
    """A forward for ``layer``: ``original(x)`` plus each (region, LoRA factors) update where ``gates``
    says that region acts in the current call (``gates(region, kind, x, out)`` -> [(region, Gate)]; nothing
    outside a UNet call our wrapper announced). No update applies = the original output object itself."""
    cast: dict = {}          # the factors in the input's dtype and device, converted once, not per call

    def forward(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        for number, (region, lr) in enumerate(updates):
            for _, gate in gates(region, kind, x, out):
                key = (number, x.dtype, x.device)
                if key not in cast:
                    cast[key] = LowRank(*(None if t is None else t.to(x.device, x.dtype)
                                          for t in (lr.up, lr.down, lr.mid)), lr.scale)
                out = add_gated(out, x, layer, kind, cast[key], gate)
        return out
    return forward


def layer_kind(path: str, layer: torch.nn.Module) -> str:
    """What a LoRA-targeted layer reads: the text context (attn2 to_k / to_v), a feature map (Conv2d), or
    tokens of the feature map (other Linear layers; a 2-D input is seen at call time as a vector)."""
    if isinstance(layer, torch.nn.Conv2d):
        return CONV
    if path.endswith(("attn2.to_k", "attn2.to_v")):
        return CONTEXT
    return TOKENS
