"""RefDrop's reference store: what is kept of a generation's self-attention, in memory, and its size.

What is stored: the attention input that K and V are computed from (``n``, the normed hidden states of
attn1; one tensor where K and V are two), and K/V are recomputed at use through the layer's own ``to_k`` /
``to_v``. An ``InputEntry`` holds it in fp16 (0.25x the public ports' layout of fp16 K and V of the cond and
uncond rows), a ``QuantizedInput`` in 8 bits per value with a per-channel offset and step (0.125x plus the
offsets and steps). ``KVEntry`` (K and V themselves) is what reference files of format v1 hold; they keep
loading and working.

Bookkeeping: a reference is keyed by ``(step index, layer label, "cond" | "uncond")`` (steps:
``lib_omost.attention.refdrop.step_index``). By default only the cond row of the first image is stored,
on the CPU. Rows of the negative prompt use the "uncond" entry when one was stored and the cond entry
otherwise (``ReferenceStore.reference``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .core import halve_ceil
from .plan import LayerKey
from .refdrop import MissingReferenceError, ReferenceMismatchError

COND, UNCOND = "cond", "uncond"
BRANCHES = (COND, UNCOND)
MIB = 1024 * 1024

Projection = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]     # n -> (to_k(n), to_v(n))


class ReferenceBudgetError(RuntimeError):
    """Storing the reference would exceed the memory budget."""


# ------------------------------------------------------------------------------------- layer tables

# attn1 layers per family: (block, number, depth, level); level = downsamples before the block.
_ATTN1_TABLE = {
    "sd15": [("input", 1, 1, 0), ("input", 2, 1, 0), ("input", 4, 1, 1), ("input", 5, 1, 1),
             ("input", 7, 1, 2), ("input", 8, 1, 2), ("middle", 0, 1, 3),
             ("output", 3, 1, 2), ("output", 4, 1, 2), ("output", 5, 1, 2),
             ("output", 6, 1, 1), ("output", 7, 1, 1), ("output", 8, 1, 1),
             ("output", 9, 1, 0), ("output", 10, 1, 0), ("output", 11, 1, 0)],
    "sdxl": [("input", 4, 2, 1), ("input", 5, 2, 1), ("input", 7, 10, 2), ("input", 8, 10, 2),
             ("middle", 0, 10, 2), ("output", 0, 10, 2), ("output", 1, 10, 2), ("output", 2, 10, 2),
             ("output", 3, 2, 1), ("output", 4, 2, 1), ("output", 5, 2, 1)],
}
_MODEL_CHANNELS = {"sd15": 320, "sdxl": 320}
_LEVEL_MULT = {"sd15": (1, 2, 4, 4), "sdxl": (1, 2, 4)}


def attn1_layers(family: str, latent_hw: tuple[int, int]) -> list[tuple[LayerKey, int, int]]:
    """Every self-attention layer of a family as ``(LayerKey, tokens, K/V width)`` at a latent size
    (SD1.5: 16 layers; SDXL: 70). "sd2" has SD1.5's layout. Sizes halve with ceil per downsample."""
    layout = "sd15" if family in ("sd15", "sd2") else family
    if layout not in _ATTN1_TABLE:
        raise ValueError(f"unknown model family {family!r}; RefDrop knows sd15, sd2 and sdxl")
    layers = []
    for block, number, depth, level in _ATTN1_TABLE[layout]:
        tokens = halve_ceil(latent_hw[0], level) * halve_ceil(latent_hw[1], level)
        width = _MODEL_CHANNELS[layout] * _LEVEL_MULT[layout][level]
        layers += [(LayerKey(block, number, index), tokens, width) for index in range(depth)]
    return layers


KV16, INPUT16, INPUT8 = "kv16", "input16", "input8"


def entry_bytes(form: str, tokens: int, width: int) -> int:
    """Bytes of one stored row: fp16 K and V (``KV16``, the public ports' and format v1's layout), the fp16
    attention input (``INPUT16``), or its 8-bit codes with an fp16 offset and step per channel (``INPUT8``)."""
    if form == KV16:
        return 2 * tokens * width * 2
    if form == INPUT16:
        return tokens * width * 2
    if form == INPUT8:
        return tokens * width + 2 * width * 2
    raise ValueError(f"unknown reference form {form!r}; one of {KV16}, {INPUT16}, {INPUT8}")


def reference_bytes(layers: Iterable[tuple[object, int, int]], steps: int, rows: int = 1, form: str = KV16) -> int:
    """Bytes for ``steps`` steps and ``rows`` stored rows per key over ``(layer, tokens, width)`` in a form."""
    return steps * rows * sum(entry_bytes(form, tokens, width) for _, tokens, width in layers)


def public_layout_bytes(layers: Iterable[tuple[object, int, int]], steps: int) -> int:
    """The public RefDrop ports' layout: fp16 K and V of the cond and the uncond row, every step and layer."""
    return reference_bytes(layers, steps, rows=2, form=KV16)


# ------------------------------------------------------------------------------------------- storage

def layer_label(layer) -> str:
    """A layer key as its label ``"block:number:index"`` (from a LayerKey, a 3-tuple or a label)."""
    if isinstance(layer, str):
        parts = layer.split(":")
        if len(parts) == 3 and parts[0] in ("input", "middle", "output") and all(p.isdigit() for p in parts[1:]):
            return layer
        raise ValueError(f"layer label {layer!r} is not of the form block:number:index")
    block, number, index = layer
    return LayerKey(str(block), int(number), int(index)).label()


def _check_branch(branch: str) -> str:
    if branch not in BRANCHES:
        raise ValueError(f"branch {branch!r} is not one of {', '.join(BRANCHES)}")
    return branch


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# shared by the entry types: the first part is [1, tokens, width]; bytes of all parts
_WIDTH = property(lambda entry: entry[0].shape[-1], doc="the layer's width")
_NBYTES = property(lambda entry: _nbytes(entry), doc="bytes of every part")


def _projected(project: Projection | None, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if project is None:
        raise ReferenceMismatchError("this layer's K/V projections are unknown, so a reference of its attention "
                                     "input cannot be used there")
    return project(n)


class KVEntry(NamedTuple):
    """One row's K and V as the layer projected them (``[1, tokens, width]`` each): reference format v1."""
    k: torch.Tensor
    v: torch.Tensor

    width = _WIDTH
    nbytes = _NBYTES

    def kv(self, device, dtype, project: Projection | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k.to(device, dtype), self.v.to(device, dtype)


class InputEntry(NamedTuple):
    """One row of the attention input that K and V are computed from (``[1, tokens, width]``)."""
    n: torch.Tensor

    width = _WIDTH
    nbytes = _NBYTES

    def kv(self, device, dtype, project: Projection | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V through the layer's own projections, computed in ``dtype`` on ``device``."""
        return _projected(project, self.n.to(device, dtype))


class QuantizedInput(NamedTuple):
    """The attention input in 8 bits per value: ``n ~ low + codes * scale`` per channel (``low`` and ``scale``
    ``[1, 1, width]``, ``codes`` uint8 ``[1, tokens, width]``); each value is off by at most ``scale / 2``."""
    codes: torch.Tensor
    low: torch.Tensor
    scale: torch.Tensor

    width = _WIDTH
    nbytes = _NBYTES

    def dequantized(self, device, dtype) -> torch.Tensor:
        low, scale = (x.to(device, torch.float32) for x in (self.low, self.scale))
        return torch.addcmul(low, self.codes.to(device).to(torch.float32), scale).to(dtype)

    def kv(self, device, dtype, project: Projection | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return _projected(project, self.dequantized(device, dtype))


Entry = KVEntry | InputEntry | QuantizedInput
ENTRY_TYPES = (KVEntry, InputEntry, QuantizedInput)
FP16_MAX = 65504.0


def _rounded(x: torch.Tensor, dtype: torch.dtype, towards: float, too_far) -> torch.Tensor:
    """``x`` in ``dtype``, moved one step ``towards`` where ``too_far(rounded)`` (nearest rounding went past)."""
    rounded = x.to(dtype)
    return torch.where(too_far(rounded), torch.nextafter(rounded, torch.full_like(rounded, towards)), rounded)


def quantize_input(n: torch.Tensor) -> QuantizedInput:
    """8-bit codes per channel over the tokens of ``n`` ``[rows, tokens, width]`` (computed where ``n`` is,
    returned on the CPU). Offset and step are fp16 (fp32 when a value is beyond fp16's range); the codes are
    computed against the rounded offset and step, so the error bound ``scale / 2`` holds for what is stored."""
    x = n.detach().to(torch.float32)
    low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    side = torch.float16 if bool(torch.maximum(low.abs(), high.abs()).amax() < FP16_MAX / 2) else torch.float32
    # the offset rounded down and the step up, so that [low, low + 255 * scale] still holds every value
    exact_low = low
    low = _rounded(low, side, -math.inf, lambda r: r.float() > exact_low)
    scale = (high - low.float()) / 255
    scale = _rounded(scale, side, math.inf, lambda s: low.float() + 255 * s.float() < high)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))       # a constant channel: every code 0
    codes = ((x - low.float()) / scale.float()).round_().clamp_(0, 255).to(torch.uint8)
    return QuantizedInput(codes.cpu(), low.cpu(), scale.cpu())


@dataclass
class ReferenceStore:
    """References keyed by ``(step, layer label, branch)`` on the CPU, each an ``Entry``.

    Recording keeps the attention input: fp16 ``InputEntry`` (``dtype``), or ``QuantizedInput`` when
    ``compact``. ``budget_bytes`` (None = unlimited) bounds the total; a store that would exceed it raises
    ``ReferenceBudgetError`` naming the budget and what to change. The first call recorded for a key wins
    (later calls of the same step, e.g. a second-order sampler's, are ignored).
    """
    budget_bytes: int | None = None
    dtype: torch.dtype = torch.float16
    keep_uncond: bool = False
    compact: bool = False
    entries: dict = field(default_factory=dict)
    nbytes: int = 0

    def put(self, step: int, layer, branch: str, entry: Entry) -> bool:
        """Store one entry (one row); False when the key already holds one."""
        key = (int(step), layer_label(layer), _check_branch(branch))
        if key in self.entries:
            return False
        if not isinstance(entry, ENTRY_TYPES):
            raise TypeError(f"a reference entry is one of {', '.join(t.__name__ for t in ENTRY_TYPES)}, "
                            f"got {type(entry).__name__}")
        size = entry.nbytes
        if self.budget_bytes is not None and self.nbytes + size > self.budget_bytes:
            raise ReferenceBudgetError(
                f"RefDrop: storing step {key[0]} layer {key[1]} ({key[2]}) needs {size / MIB:.1f} MiB more, "
                f"which would bring the reference to {(self.nbytes + size) / MIB:.1f} MiB, above the memory "
                f"budget of {self.budget_bytes / MIB:.1f} MiB. Raise the RefDrop memory budget, lower the "
                f"save percentage, disable layer groups, or save at a smaller resolution.")
        self.entries[key] = entry
        self.nbytes += size
        return True

    def encode(self, row: torch.Tensor) -> Entry:
        """One row (``[1, tokens, width]``) of the attention input as this store keeps it, a private CPU copy
        (a slice of the model's batch would keep the whole batch tensor alive)."""
        if row.dim() != 3 or row.shape[0] != 1:
            raise ValueError(f"a recorded row must be [1, tokens, width], got {tuple(row.shape)}")
        if self.compact:
            return quantize_input(row)
        return InputEntry(torch.empty(row.shape, dtype=self.dtype).copy_(row.detach()))

    def record(self, step: int, layer, x: torch.Tensor, cond_rows: Sequence[int],
               uncond_rows: Sequence[int] = ()) -> list[str]:
        """Record one attn1 call's input ``x`` (``[batch, tokens, width]``): the first cond row (the first
        image), and the first uncond row when ``keep_uncond``. Returns the branches stored by this call."""
        stored = []
        for branch, rows in ((COND, cond_rows), (UNCOND, uncond_rows if self.keep_uncond else ())):
            key = (int(step), layer_label(layer), branch)
            if rows and key not in self.entries:
                row = int(rows[0])
                if self.put(step, layer, branch, self.encode(x[row:row + 1])):
                    stored.append(branch)
        return stored

    def get(self, step: int, layer, branch: str) -> Entry | None:
        return self.entries.get((int(step), layer_label(layer), _check_branch(branch)))

    def reference(self, step: int, layer, branch: str) -> Entry:
        """The entry for a branch; an uncond row without its own entry uses the cond one. Raises
        ``MissingReferenceError`` when neither exists."""
        found = self.get(step, layer, branch) or (self.get(step, layer, COND) if branch == UNCOND else None)
        if found is None:
            raise MissingReferenceError(f"the RefDrop reference has no entry for step {step}, layer "
                                        f"{layer_label(layer)} ({branch}); it was saved with fewer steps, "
                                        f"another save percentage or other layers")
        return found

    def for_rows(self, step: int, layer, cond_rows: Sequence[int], uncond_rows: Sequence[int], batch: int,
                 kv_of: Callable[[Entry], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference K/V for a whole call, each entry turned into K/V by ``kv_of``: ``[1, L, C]`` when every
        row uses the same entry (broadcast), else ``[batch, L, C]`` with each row's branch entry. Rows in
        neither list use the cond entry."""
        uncond = {int(r) for r in uncond_rows}
        ref_c = self.reference(step, layer, COND) if len(uncond) < batch else None
        ref_u = self.reference(step, layer, UNCOND) if uncond else None
        if ref_c is None or ref_u is None or ref_u is ref_c:
            return kv_of(ref_c or ref_u)
        kv_c, kv_u = kv_of(ref_c), kv_of(ref_u)
        if kv_u[0].shape != kv_c[0].shape:
            raise ValueError(f"cond and uncond references of step {step} layer {layer_label(layer)} differ "
                             f"in shape")
        pick = [kv_u if r in uncond else kv_c for r in range(batch)]
        return torch.cat([p[0] for p in pick]), torch.cat([p[1] for p in pick])

    def widths(self) -> dict[str, int]:
        return {layer: entry.width for (_, layer, _), entry in sorted(self.entries.items())}

    def steps(self) -> list[int]:
        return sorted({step for step, _, _ in self.entries})
