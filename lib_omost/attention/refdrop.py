"""RefDrop (reference feature guidance, arXiv 2405.17661): the math and the reference store.

Self-attention (attn1) only. With the image's own q, k, v and a reference k_ref, v_ref of the same layer and
step::

    out = (1 - c) * Attn(q, k, v) + c * Attn(q, k_ref, v_ref),    c in [-1, 1]

blended before ``to_out`` (equivalent: ``to_out`` is affine). c > 0 pulls towards the reference, c < 0
pushes away from it.

Bookkeeping: a reference is keyed by ``(step index, layer label, "cond" | "uncond")``. Steps are counted from
the sampler's sigma schedule (``step_index``). By default only the cond row of the first image is stored,
fp16 on the CPU; a stored reference (one row) is broadcast to every row of a later batch with ``expand``;
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

import torch

from lib_omost.quoting import QUOTE_CHARS, quoted, shortened

from .core import attention, halve_ceil
from .plan import LayerKey

COND, UNCOND = "cond", "uncond"
BRANCHES = (COND, UNCOND)
REFERENCE_FORMAT = "sd-forge-omost.refdrop.v1"
MIB = 1024 * 1024

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def reference_bytes(layers: Iterable[tuple[object, int, int]], steps: int, rows: int = 1,
                    itemsize: int = 2) -> int:
    """Bytes of K and V for ``steps`` steps and ``rows`` stored rows per key over ``(layer, tokens, width)``."""
    return steps * rows * sum(2 * tokens * width * itemsize for _, tokens, width in layers)


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


@dataclass
class ReferenceStore:
    """K/V references keyed by ``(step, layer label, branch)``, stored in ``dtype`` on the CPU.

    ``budget_bytes`` (None = unlimited) bounds the total; a store that would exceed it raises
    ``ReferenceBudgetError`` naming the budget and what to change. The first call recorded for a key wins
    (later calls of the same step, e.g. a second-order sampler's, are ignored).
    """
    budget_bytes: int | None = None
    dtype: torch.dtype = torch.float16
    keep_uncond: bool = False
    entries: dict = field(default_factory=dict)
    nbytes: int = 0

    def put(self, step: int, layer, branch: str, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Store one entry (``[rows, L, C]`` each); False when the key already holds one."""
        key = (int(step), layer_label(layer), _check_branch(branch))
        if key in self.entries:
            return False
        if k.dim() != 3 or k.shape != v.shape:
            raise ValueError(f"k and v must be equal [rows, tokens, width] tensors, got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        size = 2 * k.numel() * torch.empty((), dtype=self.dtype).element_size()
        if self.budget_bytes is not None and self.nbytes + size > self.budget_bytes:
            raise ReferenceBudgetError(
                f"RefDrop: storing step {key[0]} layer {key[1]} ({key[2]}) needs {size / MIB:.1f} MiB more, "
                f"which would bring the reference to {(self.nbytes + size) / MIB:.1f} MiB, above the memory "
                f"budget of {self.budget_bytes / MIB:.1f} MiB. Raise the RefDrop memory budget, lower the "
                f"save percentage, disable layer groups, or save at a smaller resolution.")
        # always a private copy: a slice of the model's batch would keep the whole batch tensor alive
        self.entries[key] = tuple(torch.empty(x.shape, dtype=self.dtype).copy_(x.detach()) for x in (k, v))
        self.nbytes += size
        return True

    def record(self, step: int, layer, k: torch.Tensor, v: torch.Tensor, cond_rows: Sequence[int],
               uncond_rows: Sequence[int] = ()) -> list[str]:
        """Record one attn1 call: the first cond row (the first image), and the first uncond row when
        ``keep_uncond``. Returns the branches stored by this call."""
        stored = []
        for branch, rows in ((COND, cond_rows), (UNCOND, uncond_rows if self.keep_uncond else ())):
            if rows:
                row = int(rows[0])
                if self.put(step, layer, branch, k[row:row + 1], v[row:row + 1]):
                    stored.append(branch)
        return stored

    def get(self, step: int, layer, branch: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.entries.get((int(step), layer_label(layer), _check_branch(branch)))

    def reference(self, step: int, layer, branch: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The entry for a branch; an uncond row without its own entry uses the cond one. Raises
        ``MissingReferenceError`` when neither exists."""
        found = self.get(step, layer, branch) or (self.get(step, layer, COND) if branch == UNCOND else None)
        if found is None:
            raise MissingReferenceError(f"the RefDrop reference has no entry for step {step}, layer "
                                        f"{layer_label(layer)} ({branch}); it was saved with fewer steps, "
                                        f"another save percentage or other layers")
        return found

    def for_rows(self, step: int, layer, cond_rows: Sequence[int], uncond_rows: Sequence[int],
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference K/V for a whole call: ``[1, L, C]`` when every row uses the same entry (broadcast),
        else ``[batch, L, C]`` with each row's branch entry. Rows in neither list use the cond entry."""
        uncond = {int(r) for r in uncond_rows}
        ref_c = self.reference(step, layer, COND) if len(uncond) < batch else None
        ref_u = self.reference(step, layer, UNCOND) if uncond else None
        if ref_c is None or ref_u is None or ref_u is ref_c:
            return ref_c or ref_u
        if ref_u[0].shape != ref_c[0].shape:
            raise ValueError(f"cond and uncond references of step {step} layer {layer_label(layer)} differ "
                             f"in shape")
        pick = [ref_u if r in uncond else ref_c for r in range(batch)]
        return torch.cat([p[0] for p in pick]), torch.cat([p[1] for p in pick])

    def widths(self) -> dict[str, int]:
        return {layer: k.shape[-1] for (_, layer, _), (k, _) in sorted(self.entries.items())}

    def steps(self) -> list[int]:
        return sorted({step for step, _, _ in self.entries})


# ------------------------------------------------------------------------------------- reference files

@dataclass(frozen=True)
class ReferenceInfo:
    """What a reference file says about the generation that saved it."""
    model_family: str
    steps: int
    resolution: tuple[int, int]       # (width, height) in pixels
    widths: dict                      # layer label -> K/V width


def _entry_label(step: int, layer: str, branch: str) -> str:
    return f"step{step:04d}/{layer}/{branch}"


def _tensor_name(step: int, layer: str, branch: str, which: str) -> str:
    return f"{_entry_label(step, layer, branch)}/{which}"


_LAYER_LABEL = r"(?:input|middle|output):[0-9]{1,4}:[0-9]{1,4}"
_LAYER = re.compile(_LAYER_LABEL)
_ENTRY_NAME = re.compile(rf"step([0-9]{{1,6}})/({_LAYER_LABEL})/(cond|uncond)/(k|v)")
_RESOLUTION = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
FILE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
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


def reference_info(meta: dict | None, name: str) -> ReferenceInfo:
    """The ReferenceInfo of a reference file's metadata (every key checked, each message naming the key)."""
    meta = meta or {}
    if meta.get("format") != REFERENCE_FORMAT:
        raise ReferenceFileError(f"{name} is not a RefDrop reference file (format {quoted(meta.get('format'))}, "
                                 f"expected {REFERENCE_FORMAT!r})")
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


def _entry_shapes(f, info: ReferenceInfo, name: str) -> dict:
    """{(step, layer, branch): (shape, dtype name)} of a file's tensors, read from its header alone: every
    name a reference entry, k and v present with equal shapes [1, tokens >= 1, the layer's kv_width], a
    float dtype, steps below the file's step count, layers exactly those of kv_width."""
    found: dict = {}
    for tensor in f.keys():
        match = _ENTRY_NAME.fullmatch(tensor)
        if match is None:
            raise ReferenceFileError(f"{name}: tensor {quoted(tensor)} is not a RefDrop entry "
                                     "(stepNNNN/block:number:index/cond|uncond/k|v); save the reference again")
        step, layer, branch, which = int(match.group(1)), match.group(2), match.group(3), match.group(4)
        piece = f.get_slice(tensor)
        shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
        problem = _entry_problem(shape, dtype, step, info.steps, info.widths.get(layer))
        if problem:
            raise ReferenceFileError(f"{name}: tensor {tensor!r} {problem}; save the reference again")
        found.setdefault((step, layer, branch), {})[which] = (shape, dtype)
    for key, pair in found.items():
        if set(pair) != {"k", "v"} or pair["k"] != pair["v"]:
            raise ReferenceFileError(f"{name}: entry {_entry_label(*key)} needs k and v tensors of one "
                                     "shape and dtype; save the reference again")
    layers = {layer for _, layer, _ in found}
    if layers != set(info.widths):
        raise ReferenceFileError(f"{name}: its tensors cover {len(layers)} layers but its kv_width metadata lists "
                                 f"{len(info.widths)}; save the reference again")
    return {key: pair["k"] for key, pair in found.items()}


def _entry_problem(shape: tuple, dtype: str, step: int, steps: int, width: int | None) -> str | None:
    if width is None:
        return "is for a layer its kv_width metadata does not list"
    if dtype not in FILE_DTYPES:
        return f"has dtype {dtype}, not one of {', '.join(FILE_DTYPES)}"
    if len(shape) != 3 or shape[0] != 1 or shape[1] < 1 or shape[2] != width:
        return f"has shape {list(shape)}, not [1, tokens, {width}] (one row, the layer's K/V width)"
    if step >= steps:
        return f"is for step {step}, but the file says it holds {steps} steps"
    return None


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or infinity in ``x`` (amax propagates NaN; many times faster than isfinite(x).all() in fp16)."""
    return bool(torch.isfinite(x.abs().amax()))


def _stored_dtype(shapes: dict) -> torch.dtype:
    dtypes = {dtype for _, dtype in shapes.values()}
    return FILE_DTYPES[dtypes.pop()] if len(dtypes) == 1 else torch.float16


class ReferenceSaveError(OSError):
    """A reference file could not be written (the folder cannot be written, the disk is full, ...)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot write {path} ({reason})")
        self.path, self.reason = path, reason


def save_reference(store: ReferenceStore, path: str, *, model_family: str, resolution: tuple[int, int],
                   steps: int) -> int:
    """Write the store to a safetensors file (atomically: a temporary file, then rename); returns bytes.
    ReferenceSaveError (with the reason) when it cannot be written; nothing is left behind then.

    Tensor names encode the key (``step0003/input:4:0/cond/k``); metadata: format, model family, steps,
    resolution and the K/V width per layer.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if not store.entries:
        raise ValueError("the RefDrop reference is empty: nothing was recorded (was Save active?)")
    tensors = {}
    for (step, layer, branch), (k, v) in store.entries.items():
        tensors[_tensor_name(step, layer, branch, "k")] = k
        tensors[_tensor_name(step, layer, branch, "v")] = v
    metadata = {"format": REFERENCE_FORMAT, "model_family": model_family, "steps": str(int(steps)),
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
    """Read a reference file back into a store (same dtype as saved, CPU). Everything is checked before any
    tensor is read (ReferenceFileError), including the memory budget (ReferenceBudgetError); values must be
    finite."""
    name = os.path.basename(path)
    with _reading(path) as f:
        info = reference_info(f.metadata(), name)
        shapes = _entry_shapes(f, info, name)
        dtype = _stored_dtype(shapes)
        needed = 2 * sum(math.prod(shape) for shape, _ in shapes.values()) * torch.empty((), dtype=dtype).element_size()
        if budget_bytes is not None and needed > budget_bytes:
            raise ReferenceBudgetError(f"{name} needs {needed / MIB:.1f} MiB, above the memory budget of "
                                       f"{budget_bytes / MIB:.1f} MiB")
        store = ReferenceStore(budget_bytes=budget_bytes, dtype=dtype)
        for key in sorted(shapes):
            k, v = (f.get_tensor(_tensor_name(*key, which)) for which in ("k", "v"))
            if not (_all_finite(k) and _all_finite(v)):
                raise ReferenceFileError(f"{name}: entry {_entry_label(*key)} holds NaN or infinite "
                                         "values; save the reference again")
            store.put(*key, k, v)
    return store, info


def check_reference_family(info: ReferenceInfo, model_family: str) -> None:
    """Raise ``ReferenceMismatchError`` when a reference was saved with another model family (checked from
    the file's metadata: SD1.5 and SD2 share K/V widths, so the width check alone cannot tell them apart)."""
    if info.model_family != model_family:
        raise ReferenceMismatchError(
            f"this RefDrop reference was saved with a {info.model_family} model, but the model in use is "
            f"{model_family}; save a new reference with this model")
