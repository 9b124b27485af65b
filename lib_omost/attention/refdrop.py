"""RefDrop (reference feature guidance, arXiv 2405.17661): the math and the reference store.

Self-attention (attn1) only. With the image's own q, k, v and a reference k_ref, v_ref of the same layer and
step::

    out = (1 - c) * Attn(q, k, v) + c * Attn(q, k_ref, v_ref),    c in [-1, 1]

blended before ``to_out`` (equivalent: ``to_out`` is affine). c > 0 pulls towards the reference, c < 0
pushes away from it.

What is stored: the attention input that K and V are computed from (``n``, the normed hidden states of
attn1; one tensor where K and V are two), and K/V are recomputed at use through the layer's own ``to_k`` /
``to_v``. An ``InputEntry`` holds it in fp16 (0.25x the public ports' layout of fp16 K and V of the cond and
uncond rows), a ``QuantizedInput`` in 8 bits per value with a per-channel offset and step (0.125x plus the
offsets and steps). ``KVEntry`` (K and V themselves) is what reference files of format v1 hold; they keep
loading and working.

Bookkeeping: a reference is keyed by ``(step index, layer label, "cond" | "uncond")``. Steps are counted from
the sampler's sigma schedule (``step_index``). By default only the cond row of the first image is stored,
on the CPU; a stored reference (one row) is broadcast to every row of a later batch with ``expand``;
it is never regrouped. Rows of the negative prompt use the "uncond" entry when one was stored and the cond
entry otherwise (``ReferenceStore.reference``). The token count may differ from the image's (another
resolution); the K/V width must match (same model family), else ``ReferenceMismatchError``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import NamedTuple

import torch

from lib_omost.quoting import QUOTE_CHARS, quoted, shortened

from .core import attention, halve_ceil
from .plan import LayerKey

COND, UNCOND = "cond", "uncond"
BRANCHES = (COND, UNCOND)
REFERENCE_FORMAT_V1 = "sd-forge-omost.refdrop.v1"     # K and V (KVEntry)
REFERENCE_FORMAT = "sd-forge-omost.refdrop.v2"        # the attention input (InputEntry / QuantizedInput)
MIB = 1024 * 1024

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Projection = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]     # n -> (to_k(n), to_v(n))


class ReferenceMismatchError(ValueError):
    """The reference does not fit this model (K/V width or model family differs)."""


class MissingReferenceError(LookupError):
    """No reference was stored for a (step, layer, branch) that is being used."""


class ReferenceBudgetError(RuntimeError):
    """Storing the reference would exceed the memory budget."""


# ---------------------------------------------------------------------------------------- the math

def check_coefficient(c: float) -> float:
    c = float(c)
    if not (math.isfinite(c) and -1.0 <= c <= 1.0):
        raise ValueError(f"the RefDrop coefficient must be between -1 and 1, got {c}")
    return c


def check_reference_width(k_ref: torch.Tensor, k: torch.Tensor, layer: str = "this layer") -> None:
    """Raise ``ReferenceMismatchError`` when the reference's K/V width differs from the layer's."""
    if k_ref.shape[-1] != k.shape[-1]:
        raise ReferenceMismatchError(
            f"RefDrop reference K/V width {k_ref.shape[-1]} does not match {layer}'s {k.shape[-1]}: the "
            f"reference was saved with another model family (e.g. SD1.5 vs SDXL). Save a new reference "
            f"with the model in use.")


def broadcast_reference(x_ref: torch.Tensor, batch: int) -> torch.Tensor:
    """A reference ``[1, L, C]`` expanded (no copy) to ``batch`` rows; ``[batch, L, C]`` passes as is.

    Any other row count is refused: silently regrouping rows would pair images with the wrong reference.
    """
    if x_ref.dim() != 3:
        raise ValueError(f"a reference must be [rows, tokens, width], got shape {tuple(x_ref.shape)}")
    rows = x_ref.shape[0]
    if rows == batch:
        return x_ref
    if rows == 1:
        return x_ref.expand(batch, -1, -1)
    raise ValueError(f"the reference holds {rows} rows but this call has {batch}; a reference is either one "
                     f"row (broadcast to every image) or one row per batch row")


def reference_attention(q: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor, heads: int) -> torch.Tensor:
    """``Attn(q, k_ref, v_ref)`` with the reference moved to q's device/dtype and broadcast to q's batch."""
    k_ref = broadcast_reference(k_ref.to(q.device, q.dtype), q.shape[0])
    v_ref = broadcast_reference(v_ref.to(q.device, q.dtype), q.shape[0])
    return attention(q, k_ref, v_ref, heads)


def refdrop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_ref: torch.Tensor | None,
                      v_ref: torch.Tensor | None, heads: int, c: float, *,
                      inner: AttnFn | None = None) -> torch.Tensor:
    """``(1 - c) * Attn(q, k, v) + c * Attn(q, k_ref, v_ref)``.

    ``inner(q, k, v)`` computes the image's own attention (default: plain SDPA; in a composed plan, the
    inner stages). c = 0 returns ``inner``'s result itself (bit-identical, the reference is not touched and
    may be None); c = 1 returns the reference attention alone. The reference may have another token count
    and one row (broadcast to every row); its width must match (``ReferenceMismatchError``).
    """
    c = check_coefficient(c)
    own = inner if inner is not None else (lambda q_, k_, v_: attention(q_, k_, v_, heads))
    if c == 0.0:
        return own(q, k, v)
    if k_ref is None or v_ref is None:
        raise MissingReferenceError("RefDrop needs a reference K/V when the coefficient is not 0")
    check_reference_width(k_ref, k)
    check_reference_width(v_ref, v)
    ref = reference_attention(q, k_ref, v_ref, heads)
    if c == 1.0:
        return ref
    return ref.lerp_(own(q, k, v), 1.0 - c)     # in place on our own fresh tensor: c*ref + (1-c)*own


# ------------------------------------------------------------------------------------- step counting

def step_index(sigmas: Sequence[float] | torch.Tensor, sigma: float, rtol: float = 1e-4) -> int:
    """The sampling step a model call at ``sigma`` belongs to, from the schedule ``sigmas`` (steps + 1 values,
    descending, usually ending in 0).

    Step i covers ``sigmas[i+1] < sigma <= sigmas[i]`` (with a relative tolerance for the float32 round trip
    through the model). Second-order samplers call the model several times per step:
    midpoint calls (DPM2, DPM++ 2S/SDE, ...) fall strictly inside the interval and map to the step itself;
    Heun-type correctors evaluate exactly at ``sigmas[i+1]`` and so map to step i+1, the step whose noise
    level they see (the same index in Save and Use, so references stay consistent). Whatever the sampler,
    the store keeps the first call recorded for a key and every call with that key uses it.
    A sigma above ``sigmas[0]`` raises ValueError; a sigma at or below the last step maps to the last step.
    """
    values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if len(values) < 2:
        raise ValueError("a sigma schedule needs at least two values (steps + 1)")
    if any(a < b for a, b in pairwise(values)):
        raise ValueError("the sigma schedule must be descending")
    sigma = float(sigma)
    steps = len(values) - 1
    if sigma > values[0] * (1 + rtol):
        raise ValueError(f"sigma {sigma:g} is above the schedule's first sigma {values[0]:g}; "
                         f"was the schedule of this sampling pass passed?")
    count = sum(1 for s in values[:steps] if s * (1 + rtol) >= sigma)
    return max(count - 1, 0)


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


# ------------------------------------------------------------------------------------- reference files

@dataclass(frozen=True)
class ReferenceInfo:
    """What a reference file says about the generation that saved it."""
    model_family: str
    steps: int
    resolution: tuple[int, int]       # (width, height) in pixels
    widths: dict                      # layer label -> K/V width (the attention input's width: the same in SD)


def _entry_label(step: int, layer: str, branch: str) -> str:
    return f"step{step:04d}/{layer}/{branch}"


def _tensor_name(step: int, layer: str, branch: str, which: str) -> str:
    return f"{_entry_label(step, layer, branch)}/{which}"


_LAYER_LABEL = r"(?:input|middle|output):[0-9]{1,4}:[0-9]{1,4}"
_LAYER = re.compile(_LAYER_LABEL)
_ENTRY_NAME = re.compile(rf"step([0-9]{{1,6}})/({_LAYER_LABEL})/(cond|uncond)/(k|v|n|codes|low|scale)")
_RESOLUTION = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
FILE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "U8": 1}
# the entry types each format holds, and the dtypes of each part
FORMAT_ENTRIES = {REFERENCE_FORMAT_V1: (KVEntry,), REFERENCE_FORMAT: (InputEntry, QuantizedInput)}
_PART_DTYPES = {"k": FILE_DTYPES, "v": FILE_DTYPES, "n": FILE_DTYPES, "codes": {"U8": torch.uint8},
                "low": {"F16": torch.float16, "F32": torch.float32},
                "scale": {"F16": torch.float16, "F32": torch.float32}}
MODEL_FAMILIES = ("sd15", "sd2", "sdxl")
MAX_STEPS = 10_000                  # steps and image sides a reference file may state
MAX_SIDE = 65_536


class ReferenceFileError(ValueError):
    """A reference file that cannot be used: unreadable, not a RefDrop reference, or inconsistent. The message
    names the file, the part that is wrong and what it must be."""


@contextmanager
def _reading(path: str):
    """``safe_open`` on a reference file; any failure to read it (empty, truncated, random bytes, an absurd
    header) is a ReferenceFileError."""
    from safetensors import SafetensorError, safe_open

    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt") as f:
            yield f
    except SafetensorError as e:
        raise ReferenceFileError(f"{name} is not a readable safetensors file ({shortened(str(e), QUOTE_CHARS * 2)})"
                                 "; save the reference again") from None
    except OSError as e:
        raise ReferenceFileError(f"{name} cannot be read ({e.strerror or e})") from None


def _bad_metadata(name: str, key: str, value, expected: str) -> ReferenceFileError:
    return ReferenceFileError(f"{name}: its metadata {key!r} is {quoted(value)}, but must be {expected}; "
                              "save the reference again")


def _whole_number(name: str, key: str, text, low: int, high: int) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 9
            and low <= int(text) <= high):
        raise _bad_metadata(name, key, text, f"a whole number from {low} to {high}")
    return int(text)


def reference_format(meta: dict | None, name: str) -> str:
    """The file's format (v1: K/V, v2: the attention input); ReferenceFileError for anything else."""
    found = (meta or {}).get("format")
    if found not in FORMAT_ENTRIES:
        raise ReferenceFileError(f"{name} is not a RefDrop reference file (format {quoted(found)}, expected "
                                 f"{' or '.join(map(repr, FORMAT_ENTRIES))})")
    return found


def reference_info(meta: dict | None, name: str) -> ReferenceInfo:
    """The ReferenceInfo of a reference file's metadata (every key checked, each message naming the key)."""
    reference_format(meta, name)
    missing = [key for key in ("model_family", "steps", "resolution", "kv_width") if key not in meta]
    if missing:
        raise ReferenceFileError(f"{name}: its metadata lacks {', '.join(map(repr, missing))}; save the reference "
                                 "again")
    if meta["model_family"] not in MODEL_FAMILIES:
        raise _bad_metadata(name, "model_family", meta["model_family"], " or ".join(MODEL_FAMILIES))
    steps = _whole_number(name, "steps", meta["steps"], 1, MAX_STEPS)
    size = _RESOLUTION.fullmatch(meta["resolution"])
    if size is None or not all(1 <= int(side) <= MAX_SIDE for side in size.groups()):
        raise _bad_metadata(name, "resolution", meta["resolution"], f"WIDTHxHEIGHT in pixels (1 to {MAX_SIDE})")
    return ReferenceInfo(meta["model_family"], steps, (int(size.group(1)), int(size.group(2))),
                         _kv_widths(name, meta["kv_width"]))


def _kv_widths(name: str, text: str) -> dict:
    expected = 'a JSON object {"block:number:index": K/V width, ...}'
    try:
        widths = json.loads(text)
    except (ValueError, RecursionError):
        raise _bad_metadata(name, "kv_width", text, expected) from None
    if not (isinstance(widths, dict) and widths and all(
            _LAYER.fullmatch(label) and type(width) is int and 1 <= width <= 1 << 16
            for label, width in widths.items())):
        raise _bad_metadata(name, "kv_width", text, expected)
    return widths


def _entry_shapes(f, info: ReferenceInfo, entry_types: tuple, name: str) -> dict:
    """{(step, layer, branch): (entry type, {part: (shape, dtype name)})} of a file's tensors, read from its
    header alone: every name a reference entry, each entry's parts exactly those of one entry type the
    file's format holds, shapes [1, tokens >= 1, the layer's kv_width] ([1, 1, width] for an offset and
    step) with one token count per entry, dtypes those of the part, steps below the file's step count,
    layers exactly those of kv_width."""
    found: dict = {}
    for tensor in f.keys():
        match = _ENTRY_NAME.fullmatch(tensor)
        if match is None:
            parts = "|".join(p for t in entry_types for p in t._fields)
            raise ReferenceFileError(f"{name}: tensor {quoted(tensor)} is not a RefDrop entry "
                                     f"(stepNNNN/block:number:index/cond|uncond/{parts}); save the reference again")
        step, layer, branch, part = int(match.group(1)), match.group(2), match.group(3), match.group(4)
        piece = f.get_slice(tensor)
        shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
        problem = _part_problem(part, shape, dtype, step, info.steps, info.widths.get(layer))
        if problem:
            raise ReferenceFileError(f"{name}: tensor {tensor!r} {problem}; save the reference again")
        found.setdefault((step, layer, branch), {})[part] = (shape, dtype)
    typed = {}
    for key, parts in found.items():
        kind = next((t for t in entry_types if set(t._fields) == set(parts)), None)
        tokens = {shape[1] for part, (shape, _) in parts.items() if part not in ("low", "scale")}
        if kind is None or len(tokens) != 1 or (kind is KVEntry and parts["k"][1] != parts["v"][1]):
            forms = " or ".join("+".join(t._fields) for t in entry_types)
            raise ReferenceFileError(f"{name}: entry {_entry_label(*key)} holds {'+'.join(sorted(parts))}, not "
                                     f"{forms} with one token count (and k, v of one dtype); save the reference again")
        typed[key] = (kind, parts)
    layers = {layer for _, layer, _ in found}
    if layers != set(info.widths):
        raise ReferenceFileError(f"{name}: its tensors cover {len(layers)} layers but its kv_width metadata lists "
                                 f"{len(info.widths)}; save the reference again")
    return typed


def _part_problem(part: str, shape: tuple, dtype: str, step: int, steps: int, width: int | None) -> str | None:
    if width is None:
        return "is for a layer its kv_width metadata does not list"
    allowed = _PART_DTYPES[part]
    if dtype not in allowed:
        return f"has dtype {dtype}, not one of {', '.join(allowed)}"
    per_channel = part in ("low", "scale")
    if len(shape) != 3 or shape[0] != 1 or shape[1] < 1 or (per_channel and shape[1] != 1) or shape[2] != width:
        expected = f"[1, 1, {width}] (one value per channel)" if per_channel else \
            f"[1, tokens, {width}] (one row, the layer's K/V width)"
        return f"has shape {list(shape)}, not {expected}"
    if step >= steps:
        return f"is for step {step}, but the file says it holds {steps} steps"
    return None


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or infinity in ``x`` (amax propagates NaN; many times faster than isfinite(x).all() in fp16)."""
    return not x.is_floating_point() or bool(torch.isfinite(x.abs().amax()))


class ReferenceSaveError(OSError):
    """A reference file could not be written (the folder cannot be written, the disk is full, ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot write {path} ({reason})")
        self.path, self.reason = path, reason


def save_reference(store: ReferenceStore, path: str, *, model_family: str, resolution: tuple[int, int],
                   steps: int) -> int:
    """Write the store to a safetensors file (atomically: a temporary file, then rename); returns bytes.
    ReferenceSaveError (with the reason) when it cannot be written; nothing is left behind then.

    Tensor names encode the key and the entry's part (``step0003/input:4:0/cond/n``); metadata: format (v2
    for attention inputs, v1 for a store of K/V entries, as loaded from an old file), model family, steps,
    resolution and the K/V width per layer.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if not store.entries:
        raise ValueError("the RefDrop reference is empty: nothing was recorded (was Save active?)")
    formats = {fmt for entry in store.entries.values() for fmt, types in FORMAT_ENTRIES.items()
               if isinstance(entry, types)}
    if len(formats) != 1:
        raise ValueError("a RefDrop reference holds either K/V entries or attention inputs, not both")
    tensors = {_tensor_name(*key, part): tensor for key, entry in store.entries.items()
               for part, tensor in entry._asdict().items()}
    metadata = {"format": formats.pop(), "model_family": model_family, "steps": str(int(steps)),
                "resolution": f"{int(resolution[0])}x{int(resolution[1])}",
                "kv_width": json.dumps(store.widths(), sort_keys=True)}
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
        return os.path.getsize(path)
    except (OSError, SafetensorError) as e:
        if os.path.isfile(tmp):             # a half-written temporary file
            os.remove(tmp)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else shortened(str(e), QUOTE_CHARS * 2)
        raise ReferenceSaveError(path, reason) from None


def read_reference_info(path: str) -> ReferenceInfo:
    """The metadata of a reference file, without loading its tensors; ReferenceFileError when unusable."""
    with _reading(path) as f:
        return reference_info(f.metadata(), os.path.basename(path))


def load_reference(path: str, *, budget_bytes: int | None = None) -> tuple[ReferenceStore, ReferenceInfo]:
    """Read a reference file (format v1: K/V; v2: the attention input, 16- or 8-bit) back into a store (same
    dtypes as saved, CPU). Everything is checked before any tensor is read (ReferenceFileError), including
    the memory budget (ReferenceBudgetError); values must be finite."""
    name = os.path.basename(path)
    with _reading(path) as f:
        meta = f.metadata()
        info = reference_info(meta, name)
        entries = _entry_shapes(f, info, FORMAT_ENTRIES[reference_format(meta, name)], name)
        needed = sum(math.prod(shape) * _ITEMSIZE[dtype] for _, parts in entries.values()
                     for shape, dtype in parts.values())
        if budget_bytes is not None and needed > budget_bytes:
            raise ReferenceBudgetError(f"{name} needs {needed / MIB:.1f} MiB, above the memory budget of "
                                       f"{budget_bytes / MIB:.1f} MiB")
        store = ReferenceStore(budget_bytes=budget_bytes)
        for key in sorted(entries):
            kind = entries[key][0]
            entry = kind(*(f.get_tensor(_tensor_name(*key, part)) for part in kind._fields))
            if not all(_all_finite(t) for t in entry):
                raise ReferenceFileError(f"{name}: entry {_entry_label(*key)} holds NaN or infinite "
                                         "values; save the reference again")
            store.put(*key, entry)
    return store, info


def check_reference_family(info: ReferenceInfo, model_family: str) -> None:
    """Raise ``ReferenceMismatchError`` when a reference was saved with another model family (checked from
    the file's metadata: SD1.5 and SD2 share K/V widths, so the width check alone cannot tell them apart)."""
    if info.model_family != model_family:
        raise ReferenceMismatchError(
            f"this RefDrop reference was saved with a {info.model_family} model, but the model in use is "
            f"{model_family}; save a new reference with this model")
