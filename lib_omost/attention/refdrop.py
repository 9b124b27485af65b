"""RefDrop (reference feature guidance, arXiv 2405.17661): the math.

Self-attention (attn1) only. With the image's own q, k, v and a reference k_ref, v_ref of the same layer and
step::

    out = (1 - c) * Attn(q, k, v) + c * Attn(q, k_ref, v_ref),    c in [-1, 1]

blended before ``to_out`` (equivalent: ``to_out`` is affine). c > 0 pulls towards the reference, c < 0
pushes away from it. A stored reference (one row) is broadcast to every row of a later batch with
``expand``; it is never regrouped. The token count may differ from the image's (another resolution); the
K/V width must match (same model family), else ``ReferenceMismatchError``. Steps are counted from the
sampler's sigma schedule (``step_index``).

What a reference holds and how it is kept: ``lib_omost.attention.refdrop_store``; its file format (v1, v2):
``lib_omost.attention.refdrop_file``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch

from .core import attention

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ReferenceMismatchError(ValueError):
    """The reference does not fit this model (K/V width or model family differs)."""


class MissingReferenceError(LookupError):
    """No reference was stored for a (step, layer, branch) that is being used."""


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
