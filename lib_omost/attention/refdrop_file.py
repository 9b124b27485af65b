"""RefDrop reference files: safetensors of a ``ReferenceStore`` with metadata; format v2 (the attention
input, ``InputEntry`` / ``QuantizedInput``) is written, v1 (K and V, ``KVEntry``) is still read. Everything
read is validated (names, shapes, dtypes, metadata, finite values) before it is used.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lib_omost.quoting import QUOTE_CHARS, quoted, shortened

from .refdrop import ReferenceMismatchError
from .refdrop_store import (
    MIB,
    InputEntry,
    KVEntry,
    QuantizedInput,
    ReferenceBudgetError,
    ReferenceStore,
)

REFERENCE_FORMAT_V1 = "sd-forge-omost.refdrop.v1"     # K and V (KVEntry)
REFERENCE_FORMAT = "sd-forge-omost.refdrop.v2"        # the attention input (InputEntry / QuantizedInput)


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
