"""Regional cross-attention: Omost score manipulation, attention couple and DenseDiffusion.

Pure torch, in the WebUI's attention-replace layout (q ``[B, N, heads*d]``, k/v ``[B, L, heads*d]``).

Regional inputs shared by every method:

* ``token_regions`` -- LongTensor ``[L0]``: the region index of every token of the concatenated regional
  context (region order = the canvas order: 0 is the global region, then regions far -> near). When the
  WebUI repeats a cond to an LCM length the map is tiled the same way (``tile_token_regions``); the layout
  builders do that themselves from ``context_len`` and raise when the length does not divide.
* ``region_masks`` -- ``[R, N]`` pixel masks at the layer's ``h*w`` grid (``masks_at_layer``), bool for the
  hard-mask methods, bool or float (soft) for attention couple. Every pixel must lie in at least one region
  that owns tokens (the global region normally covers everything); otherwise a clear error is raised.

Each method has a *layout* builder (validates the inputs once, builds masks/scales on the masks' device,
synchronises with the device) and an attention function taking that layout (no validation, no device
synchronisation, so it stays cheap on a GPU). A layout depends on the layer grid, the context length, the
parameters and the dtype, so a caller builds one per (layer size, context length, dtype) and reuses it
for every layer and step of that size.

Speed (GPU): no method puts a mask in an attention kernel where it can avoid it (on CUDA a mask moves
SDPA off the flash kernel). Each region's tokens are attended, unmasked, by the pixels that use them:
queries gathered into entries of ``QUERY_BLOCK``, regions with equal token counts (77-token chunks) in one
SDPA call (``region_partials``); each pixel then combines its regions' partial outputs: attention couple
with its weights (overlay: reads its one region back), Omost and DenseDiffusion by log-sum-exp
(``merge_partials``), which is the softmax over the union of the regions' tokens, exactly.

Every attention function takes ``cond_rows``: the batch rows that carry the regional context. The other
rows (the negative prompt) get plain attention over their own context (``attention_by_rows``).
``None`` = all rows.

Which methods are hard masks (perturbing region B's tokens leaves every pixel outside B unchanged):
Omost score manipulation at strength >= 1 and attention couple at strength 1 (average and overlay).
DenseDiffusion is soft (it only pushes scores towards the row max / min): region B's tokens still reach
pixels outside B, so it is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .core import (
    GatherCall,
    attention,
    gathered_attention,
    merge_heads,
    scale,
    split_heads,
)

COUPLE_MODES = ("average", "overlay")
QUERY_BLOCK = 1024          # packed queries per SDPA batch entry of a region's partial attention
DENSE_CROSS_WEIGHT = 1.0    # DenseDiffusion's w for cross-attention (w^c)
DENSE_SELF_WEIGHT = 0.3     # DenseDiffusion's w for self-attention (w^s)

RegionalFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- inputs

def tile_token_regions(token_regions: torch.Tensor, context_len: int) -> torch.Tensor:
    """The token->region map of a cond that the WebUI repeated to ``context_len`` tokens.

    The WebUI repeats the whole token sequence ``context_len / L`` times (``c.repeat(1, n, 1)``), so the map
    is tiled, not interleaved. Equal lengths return the map itself.
    """
    length = int(token_regions.shape[0])
    if token_regions.dim() != 1 or length == 0:
        raise ValueError(f"token_regions must be a non-empty 1-D tensor, got shape {tuple(token_regions.shape)}")
    if context_len == length:
        return token_regions
    if context_len % length:
        raise ValueError(f"the context has {context_len} tokens, which is not a whole repetition of the "
                         f"{length}-token regional cond (the WebUI repeats conds to a common multiple); "
                         f"was the token->region map built for this cond?")
    return token_regions.repeat(context_len // length)


def masks_at_layer(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Canvas masks ``[R, H0, W0]`` resized to a layer's ``hw`` grid with nearest-exact, flattened ``[R, h*w]``.

    Bool masks stay bool; float (soft) masks stay float.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [regions, height, width], got shape {tuple(masks.shape)}")
    resized = F.interpolate(masks[:, None].float(), size=tuple(hw), mode="nearest-exact")[:, 0]
    resized = resized.flatten(1)
    return resized > 0.5 if masks.dtype == torch.bool else resized.to(masks.dtype)


def _check_regions(token_regions: torch.Tensor, region_masks: torch.Tensor, context_len: int,
                   hard: bool) -> torch.Tensor:
    """Validate the regional inputs; return the map tiled to ``context_len`` on the masks' device."""
    if region_masks.dim() != 2:
        raise ValueError(f"region_masks must be [regions, pixels] (masks_at_layer with the layer's h, w), "
                         f"got shape {tuple(region_masks.shape)}")
    if hard and region_masks.dtype != torch.bool:
        raise TypeError(f"this method needs hard (bool) region masks, got {region_masks.dtype}; "
                        f"threshold soft masks first (masks > 0.5)")
    if token_regions.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"token_regions must be an integer tensor, got {token_regions.dtype}")
    n_regions, n_pixels = region_masks.shape
    low, high = int(token_regions.min()), int(token_regions.max())
    if low < 0 or high >= n_regions:
        raise ValueError(f"token_regions holds region {low if low < 0 else high}, "
                         f"but only regions 0..{n_regions - 1} have masks")
    present = torch.zeros(n_regions, dtype=torch.bool)
    present[token_regions.cpu().long()] = True
    covered = (region_masks[present.to(region_masks.device)] != 0).any(0)
    if not bool(covered.all()):
        missing = int((~covered).sum())
        raise ValueError(f"{missing} of {n_pixels} pixels lie in no region that has tokens; the global region "
                         f"(region 0) must cover the whole canvas")
    return tile_token_regions(token_regions, context_len).to(region_masks.device).long()


def region_areas(region_masks: torch.Tensor) -> torch.Tensor:
    """Pixels of each region at this layer, ``[R]`` (float64; soft masks count fractionally)."""
    return region_masks.double().sum(1)


def allowed_tokens(token_regions: torch.Tensor, region_masks: torch.Tensor) -> torch.Tensor:
    """``[N, L]`` bool: pixel i may attend token j iff pixel i lies inside region r(j)."""
    return region_masks.bool().t()[:, token_regions]


def owner_regions(region_masks: torch.Tensor) -> torch.Tensor:
    """``[N]`` the nearest region containing each pixel: the last region (in far -> near order) whose mask
    holds it. Raises when a pixel lies in no region."""
    inside = region_masks != 0
    if not bool(inside.any(0).all()):
        raise ValueError("some pixels lie in no region; the global region (region 0) must cover the canvas")
    n_regions = inside.shape[0]
    return (n_regions - 1) - inside.flip(0).int().argmax(0)


def _region_weights(region_weights, n_regions: int, device) -> torch.Tensor:
    if region_weights is None:
        return torch.ones(n_regions, dtype=torch.float64, device=device)
    weights = torch.as_tensor(region_weights, dtype=torch.float64, device=device).flatten()
    if weights.shape[0] != n_regions:
        raise ValueError(f"region_weights has {weights.shape[0]} entries for {n_regions} regions")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"region_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


def _check_strength(strength: float, maximum: float = math.inf) -> float:
    strength = float(strength)
    if not (math.isfinite(strength) and 0.0 <= strength <= maximum):
        allowed = ">= 0" if maximum == math.inf else f"between 0 and {maximum:g}"
        raise ValueError(f"strength must be a finite number {allowed}, got {strength}")
    return strength


def _check_call(q: torch.Tensor, k: torch.Tensor, n_pixels: int, context_len: int, what: str) -> None:
    if q.shape[1] != n_pixels or k.shape[1] != context_len:
        raise ValueError(f"the {what} layout was built for {n_pixels} pixels x {context_len} tokens, this call "
                         f"has {q.shape[1]} x {k.shape[1]}; build one layout per layer size and context length")


def _outside_bias(allowed_nr: torch.Tensor, token_regions: torch.Tensor, outside: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[N, L]`` mask from a per-(pixel, region) table: 0 where allowed, ``outside`` elsewhere.
    One gather of N x L values (cheaper than building the bool [N, L] first)."""
    table = torch.zeros(allowed_nr.shape, dtype=dtype, device=allowed_nr.device)
    return table.masked_fill_(~allowed_nr, outside).index_select(1, token_regions)


# ------------------------------------------------------------------------------ cond / uncond rows

def attention_by_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                      cond_rows: Sequence[int] | None, regional: RegionalFn) -> torch.Tensor:
    """``regional(q, k, v)`` on the batch rows in ``cond_rows``, plain attention on the others.

    In one UNet call every row shares one context length (the WebUI repeats conds to their LCM), so k/v are
    plain tensors; rows may be in any order (uncond first or last, several images per chunk).
    ``cond_rows=None`` means every row is regional; an empty list means none is.
    """
    batch = q.shape[0]
    if cond_rows is None:
        return regional(q, k, v)
    rows = sorted(int(r) for r in cond_rows)
    if len(set(rows)) != len(rows) or any(r < 0 or r >= batch for r in rows):
        raise ValueError(f"cond_rows {list(cond_rows)} must be distinct rows of a batch of {batch}")
    if not rows:
        return attention(q, k, v, heads)
    if len(rows) == batch:
        return regional(q, k, v)
    if rows == list(range(rows[0], rows[-1] + 1)):           # contiguous (the usual case): slices, no gather
        head, tail = slice(0, rows[0]), slice(rows[-1] + 1, batch)
        mid = slice(rows[0], rows[-1] + 1)
        parts = [attention(q[head], k[head], v[head], heads)] if rows[0] > 0 else []
        parts.append(regional(q[mid], k[mid], v[mid]))
        if rows[-1] + 1 < batch:
            parts.append(attention(q[tail], k[tail], v[tail], heads))
        return torch.cat(parts)
    chosen = set(rows)
    rows_t = _row_index(tuple(rows), q.device)
    others_t = _row_index(tuple(r for r in range(batch) if r not in chosen), q.device)
    out = q.new_empty(batch, q.shape[1], v.shape[2])
    out[rows_t] = regional(q[rows_t], k[rows_t], v[rows_t])
    out[others_t] = attention(q[others_t], k[others_t], v[others_t], heads)
    return out


def attention_by_row_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                            groups: Sequence[tuple[Sequence[int], RegionalFn]]) -> torch.Tensor:
    """Each group's function on its batch rows (plain attention on rows in no group): the cond rows with
    the canvas's regional layout and the uncond rows with the negatives' own. Every run of consecutive rows
    of one group is one call on a slice (the usual batch is uncond rows then cond rows: two calls)."""
    batch = q.shape[0]
    owner: list[int | None] = [None] * batch
    for g, (rows, _) in enumerate(groups):
        for r in rows:
            if not 0 <= int(r) < batch or owner[int(r)] is not None:
                raise ValueError(f"row {r} of a batch of {batch} is out of range or in two row groups")
            owner[int(r)] = g
    parts, start = [], 0
    while start < batch:
        end = start + 1
        while end < batch and owner[end] == owner[start]:
            end += 1
        rows = slice(start, end)
        fn = (lambda q_, k_, v_: attention(q_, k_, v_, heads)) if owner[start] is None else groups[owner[start]][1]
        parts.append(fn(q[rows], k[rows], v[rows]))
        start = end
    return parts[0] if len(parts) == 1 else torch.cat(parts)


# --------------------------------------------------------------------- partial attentions

@dataclass(frozen=True)
class RegionPartials:
    """Partial attentions over key groups (a region's tokens) and how each pixel merges them.

    Every group is attended by the pixels that use it, packed into entries of ``block`` queries (the last
    one padded with pixel 0, whose output is never read); groups with the same token count share one
    unmasked SDPA call (``calls``). Slot s of pixel i is its s-th group (in group order) and
    ``slots[i, s]`` the packed position of that partial; unused slots point at position 0.
    """
    calls: tuple[GatherCall, ...]
    slots: torch.Tensor          # [N, S] packed position of each partial (unused: 0)
    slot_groups: torch.Tensor    # [N, S] group of each slot (unused: 0)
    used: torch.Tensor           # [N, S] bool
    packed_slot: torch.Tensor    # [P] flat (pixel * S + slot) of every packed query (padding: 0)
    segments: tuple              # (first packed position, pixels) of every group, in packed order
    entries: int                 # SDPA batch entries per image over all calls

    def slot_values(self, table: torch.Tensor, unused: float) -> torch.Tensor:
        """A per-(group, pixel) table ``[G, N]`` read at every slot: ``[N, S]``, ``unused`` at unused slots."""
        pixels = torch.arange(table.shape[1], device=table.device)[:, None]
        return table[self.slot_groups, pixels].masked_fill(~self.used, unused)

    def packed(self, values: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Per-slot values with the (pixel, slot) axes at ``dim``, ``dim + 1`` in packed order (one axis ``[P]``)."""
        return values.flatten(dim, dim + 1).index_select(dim, self.packed_slot)


def region_partials(group_tokens: Sequence[torch.Tensor], group_pixels: torch.Tensor,
                    block: int = QUERY_BLOCK) -> RegionPartials:
    """Pack the partial attentions: group g's tokens ``group_tokens[g]`` are attended by the pixels where
    ``group_pixels[g]`` (``[G, N]`` bool) holds. Built on the CPU, returned on ``group_pixels``' device."""
    device = group_pixels.device
    group_pixels = group_pixels.cpu()
    n_groups, n_pixels = group_pixels.shape
    block = min(block, n_pixels)
    packed = torch.full((n_groups, n_pixels), -1, dtype=torch.long)        # packed position of (group, pixel)
    calls, segments, start = [], [], 0
    for length in sorted({len(t) for g, t in enumerate(group_tokens) if group_pixels[g].any()}):
        queries, keys, count = [], [], 0
        for g, tokens in enumerate(group_tokens):
            inside = torch.nonzero(group_pixels[g]).flatten()
            if len(tokens) != length or not len(inside):
                continue
            chunks = -(-len(inside) // block)
            packed[g, inside] = start + torch.arange(len(inside))
            segments.append((start, inside.to(device)))
            queries += [inside, inside.new_zeros(chunks * block - len(inside))]
            keys += [tokens.cpu()] * chunks
            start, count = start + chunks * block, count + chunks
        keys_t = torch.cat(keys).to(device)
        calls.append(GatherCall(count, torch.cat(queries).to(device), keys_t, keys_t))
    used_by = packed >= 0
    n_slots = int(used_by.sum(0).max())
    group, pixel = torch.nonzero(used_by, as_tuple=True)
    slot = (used_by.cumsum(0) - 1)[group, pixel]
    slots = torch.zeros(n_pixels, n_slots, dtype=torch.long)
    slot_groups, used = torch.zeros_like(slots), torch.zeros(n_pixels, n_slots, dtype=torch.bool)
    slots[pixel, slot], slot_groups[pixel, slot], used[pixel, slot] = packed[group, pixel], group, True
    packed_slot = torch.zeros(start, dtype=torch.long)
    packed_slot[packed[group, pixel]] = pixel * n_slots + slot
    return RegionPartials(tuple(calls), slots.to(device), slot_groups.to(device), used.to(device),
                          packed_slot.to(device), tuple(segments), sum(call.count for call in calls))


def _slot_gather(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``x[:, slots]`` for packed per-query values ``[B, P, ...]``: ``[B, N, S, ...]``."""
    return x.index_select(1, slots.flatten()).view(x.shape[0], *slots.shape, *x.shape[2:])


def _accumulate(weighted: torch.Tensor, partials: RegionPartials, n_pixels: int) -> torch.Tensor:
    """Sum the weighted packed outputs ``[B, P, C]`` into their pixels: one ``index_add_`` per group
    (distinct pixels within a call, groups in a fixed order: deterministic on CUDA too)."""
    total = weighted.new_zeros(weighted.shape[0], n_pixels, weighted.shape[2])
    for start, pixels in partials.segments:
        total.index_add_(1, pixels, weighted[:, start:start + len(pixels)])
    return total


def merge_partials(out: torch.Tensor, lse: torch.Tensor, partials: RegionPartials,
                   log_weights: torch.Tensor) -> torch.Tensor:
    """Attention over the union of each pixel's key groups, from the partial outputs ``[B, P, H, D]`` and
    their log-sum-exp ``[B, P, H]``: ``y_i = sum_s softmax_s(lse_s + log_weight_s) out_s`` (exact: the
    softmax over a union of key sets, each set's terms scaled by ``exp(log_weight)``). ``log_weights``
    broadcasts to ``[B, N, S, H]``; -inf drops a slot. ``out`` is overwritten."""
    weights = (_slot_gather(lse, partials.slots) + log_weights).softmax(2)                  # [B, N, S, H]
    out.mul_(partials.packed(weights, dim=1).to(out.dtype)[..., None])
    return _accumulate(out.flatten(2), partials, partials.slots.shape[0])


def mix_partials(out: torch.Tensor, partials: RegionPartials, weights: torch.Tensor | None) -> torch.Tensor:
    """``y_i = sum_s w_s out_s`` with the packed weights ``[P]`` (None: one slot per pixel, weight 1: each
    pixel reads its one output back). ``out`` is overwritten."""
    out = out.flatten(2)
    if weights is None:
        return out.index_select(1, partials.slots[:, 0])
    return _accumulate(out.mul_(weights[:, None]), partials, partials.slots.shape[0])


def mask_free_default(device: torch.device) -> bool:
    """Whether a method with a mask-free and a masked form (Omost) runs mask-free by default on ``device``."""
    return device.type == "cuda"


def _groups_of(token_regions: torch.Tensor, n_regions: int) -> tuple[list[int], list[torch.Tensor]]:
    """The regions that own tokens and each one's token positions (in region order)."""
    owned = [(r, torch.nonzero(token_regions == r).flatten()) for r in range(n_regions)]
    owned = [(r, tokens) for r, tokens in owned if len(tokens)]
    return [r for r, _ in owned], [tokens for _, tokens in owned]


@lru_cache(maxsize=64)
def _row_index(rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Row indices on the device, made once (a host-to-device copy per call would synchronise)."""
    return torch.tensor(rows, device=device)


# --------------------------------------------------------------- (a) Omost score manipulation

@dataclass(frozen=True)
class OmostLayout:
    """Prepared Omost score manipulation for one (layer size, context length, dtype, device)."""
    n_pixels: int
    context_len: int
    key_scale: torch.Tensor | None              # [L] logit multiplier per token; None = plain attention
    token_regions: torch.Tensor | None = None   # [L] region of every token (tiled to the context)
    inside: torch.Tensor | None = None          # [N, R] bool: pixel i lies in region r
    outside: float = float("-inf")              # additive logit outside the pixel's regions
    bias: torch.Tensor | None = None            # masked form: [N, L] additive mask
    partials: RegionPartials | None = None      # mask-free form
    log_weights: torch.Tensor | None = None     # mask-free form: [N, S] 0 inside the slot's region, else outside


def omost_key_scale(token_regions: torch.Tensor, region_masks: torch.Tensor, strength: float = 1.0,
                    region_weights=None) -> torch.Tensor:
    """Per-token logit multiplier ``[L]`` (float64): ``w_r(j) * (N / A_r(j)) ** strength``.

    A region with no pixel at this layer counts as area 1 (its tokens are masked for every pixel anyway;
    this keeps the keys finite).
    """
    n_pixels = region_masks.shape[1]
    areas = region_areas(region_masks).clamp_min(1.0)
    weights = _region_weights(region_weights, region_masks.shape[0], region_masks.device)
    return (weights * (n_pixels / areas) ** strength)[token_regions]


def omost_layout(token_regions: torch.Tensor, region_masks: torch.Tensor, context_len: int, *,
                 strength: float = 1.0, region_weights=None, dtype: torch.dtype = torch.float32,
                 mask_free: bool | None = None) -> OmostLayout:
    """Validate and prepare Omost score manipulation (on ``region_masks``' device).

    At strength 1: ``logit_ij = (q_i . k_j / sqrt d) * N / A_r(j)`` if pixel i is inside region r(j), else
    ``-inf``. ``strength`` (>= 0): the key scale becomes ``w_r * (N / A_r) ** strength`` and a token outside
    the pixel's regions keeps a factor ``1 - strength`` of its softmax weight (additive bias
    ``log(1 - strength)``); at strength >= 1 the mask is hard (values above 1 only sharpen the area
    emphasis). Strength 0 is plain attention over the whole context (the weights are then ignored).
    ``region_weights`` (``[R]``, >= 0, default 1): multiplies the logits of that region's tokens, like the
    area factor itself (1 = Omost's behaviour).

    ``mask_free`` chooses the form (both exact): region partials merged by log-sum-exp (default on CUDA,
    where a mask moves SDPA off the flash kernel) or one SDPA with the additive ``[N, L]`` mask (default
    elsewhere: PyTorch's CPU flash kernel takes a float mask in the kernel, and the single call moves less
    memory than the partials' gathers).
    """
    strength = _check_strength(strength)
    n_pixels = region_masks.shape[-1]
    regions = _check_regions(token_regions, region_masks, context_len, hard=True)
    if strength == 0.0:
        return OmostLayout(n_pixels, context_len, None, None)
    key_scale = omost_key_scale(regions, region_masks, strength, region_weights).to(dtype)
    outside = math.log(1.0 - strength) if strength < 1.0 else float("-inf")
    inside = region_masks.t()
    if not (mask_free_default(region_masks.device) if mask_free is None else mask_free):
        return OmostLayout(n_pixels, context_len, key_scale, regions, inside, outside,
                           bias=_outside_bias(inside, regions, outside, dtype))
    present, tokens = _groups_of(regions, region_masks.shape[0])
    table = torch.full((len(present), n_pixels), outside, dtype=torch.promote_types(dtype, torch.float32),
                       device=region_masks.device).masked_fill_(inside[:, present].t(), 0.0)
    pixels = table > float("-inf")          # hard mask: a region's pixels; soft: every pixel
    partials = region_partials(tokens, pixels)
    return OmostLayout(n_pixels, context_len, key_scale, regions, inside, outside,
                       partials=partials, log_weights=partials.slot_values(table, float("-inf")))


def omost_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, layout: OmostLayout, *,
                    cond_rows: Sequence[int] | None = None) -> torch.Tensor:
    """Omost score manipulation on the ``cond_rows`` (plain attention on the others).

    No ``N x L`` logits: key j is scaled by ``s_j``. Mask-free form: the logits of a (pixel, region) block
    are then plain attention logits plus one constant bias, so each region's tokens are attended, unmasked,
    by the pixels that see them (``region_partials``: one fused SDPA call per token count, with the
    log-sum-exp) and every pixel merges its regions' partial outputs by log-sum-exp plus bias
    (``merge_partials``): the softmax over the union, exactly. Masked form: one SDPA with the additive
    0 / bias mask. A strength-0 layout returns plain attention.
    """
    _check_call(q, k, layout.n_pixels, layout.context_len, "Omost")
    if layout.key_scale is None:
        return attention(q, k, v, heads)
    key_scale = layout.key_scale[:, None]

    def regional(q_, k_, v_):
        if layout.partials is None:
            return attention(q_, k_ * key_scale, v_, heads, mask=layout.bias)
        out, lse = gathered_attention(q_, k_ * key_scale, v_, heads, layout.partials.calls, with_lse=True)
        return merge_partials(out, lse, layout.partials, layout.log_weights[..., None])

    return attention_by_rows(q, k, v, heads, cond_rows, regional)


def omost_attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                             layout: OmostLayout) -> torch.Tensor:
    """Reference formulation of ``omost_attention`` (all rows regional) with explicit ``[B, H, N, L]``
    logits, as the original Omost pipeline computes them. Slow; for tests and the benchmark baseline."""
    _check_call(q, k, layout.n_pixels, layout.context_len, "Omost")
    if layout.key_scale is None:
        return attention(q, k, v, heads)
    qh, kh, vh = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    logits = (qh @ kh.transpose(-1, -2)) * scale(qh.shape[-1])
    logits = logits * layout.key_scale.to(logits)
    logits = logits + _outside_bias(layout.inside, layout.token_regions, layout.outside, logits.dtype)
    return merge_heads(logits.softmax(-1) @ vh)


# ----------------------------------------------------------------------- (b) attention couple

@dataclass(frozen=True)
class CoupleLayout:
    """Prepared attention couple for one (layer size, context length, dtype, device)."""
    n_pixels: int
    context_len: int
    mode: str
    strength: float
    partials: RegionPartials | None = None
    weights: torch.Tensor | None = None     # average: [P] mixing weight of every packed query; overlay: None


def couple_weights(region_masks: torch.Tensor, mode: str = "average", region_weights=None,
                   to_global: Sequence[int] = ()) -> torch.Tensor:
    """``[R, N]`` mixing weights of attention couple (float64).

    average: ``w_r(i) = u_r m_r(i) / sum_s u_s m_s(i)`` (``u`` = region_weights, default 1; soft masks
    allowed). overlay: 1 for the nearest region containing pixel i (the last one in far -> near order), 0
    for the others (``region_weights`` do not apply). The regions in ``to_global`` hand their weight to the
    global region 0 (a region whose text is the global one: a region without its own negative prompt).
    """
    if mode not in COUPLE_MODES:
        raise ValueError(f"attention couple mode {mode!r} is not one of {', '.join(COUPLE_MODES)}")
    if mode == "overlay":
        weights = F.one_hot(owner_regions(region_masks), region_masks.shape[0]).t().double()
    else:
        units = _region_weights(region_weights, region_masks.shape[0], region_masks.device)
        weighted = region_masks.double() * units[:, None]
        total = weighted.sum(0)
        if not bool((total > 0).all()):
            raise ValueError("some pixels have no region with a positive mask and weight; the global region "
                             "(region 0) must cover the canvas with a weight above 0")
        weights = weighted / total
    moved = [r for r in to_global if r != 0]
    if moved:
        weights[0] += weights[moved].sum(0)
        weights[moved] = 0.0
    return weights


def couple_layout(token_regions: torch.Tensor, region_masks: torch.Tensor, context_len: int, *,
                  mode: str = "average", strength: float = 1.0, region_weights=None,
                  dtype: torch.dtype = torch.float32, block: int = QUERY_BLOCK,
                  tokenless_to_global: bool = False) -> CoupleLayout:
    """Validate and prepare attention couple: ``y_i = sum_r w_r(i) softmax(q_i K_r^T / sqrt d) V_r``.

    ``mode`` "average" uses ``couple_weights`` (soft masks and ``region_weights`` allowed); "overlay" gives
    each pixel to its nearest region (bool masks). ``strength`` in [0, 1] blends with plain attention over
    the whole context: ``(1 - strength) * plain + strength * couple``. A region without tokens is an error,
    unless ``tokenless_to_global``: then its weight goes to the global region (the negative prompts, where
    a region without its own uses the global one).
    """
    strength = _check_strength(strength, maximum=1.0)
    if mode not in COUPLE_MODES:
        raise ValueError(f"attention couple mode {mode!r} is not one of {', '.join(COUPLE_MODES)}")
    n_pixels = region_masks.shape[-1]
    regions = _check_regions(token_regions, region_masks, context_len, hard=(mode == "overlay"))
    if strength == 0.0:
        return CoupleLayout(n_pixels, context_len, mode, strength)
    present, tokens = _groups_of(regions, region_masks.shape[0])
    tokenless = [r for r in range(region_masks.shape[0]) if r not in present] if tokenless_to_global else []
    weights = couple_weights(region_masks, mode, region_weights, to_global=tokenless)
    used = weights > 0
    for r in set(range(len(weights))) - set(present):
        if bool(used[r].any()):
            raise ValueError("in overlay mode the nearest region of every pixel must have tokens" if mode == "overlay"
                             else f"region {r} has a positive mask but no tokens in the context")
    partials = region_partials(tokens, used[present], block)
    mix = None if mode == "overlay" else partials.packed(partials.slot_values(weights[present].to(dtype), 0.0))
    return CoupleLayout(n_pixels, context_len, mode, strength, partials, mix)


def attention_couple(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, layout: CoupleLayout, *,
                     cond_rows: Sequence[int] | None = None) -> torch.Tensor:
    """Attention couple on the ``cond_rows`` (plain attention on the others).

    No mask: each region's tokens are attended by the pixels where its weight is positive (overlay: each
    pixel by its owner region only), packed into unmasked SDPA calls (``region_partials``), and each pixel
    sums its regions' outputs with its weights (overlay: reads its one output back). Strength 0 and 1 skip
    the unused term of the blend with plain attention.
    """
    _check_call(q, k, layout.n_pixels, layout.context_len, "attention couple")
    if layout.strength == 0.0:
        return attention(q, k, v, heads)

    def regional(q_, k_, v_):
        out, _ = gathered_attention(q_, k_, v_, heads, layout.partials.calls)
        out = mix_partials(out, layout.partials, layout.weights)
        if layout.strength < 1.0:
            out = torch.lerp(attention(q_, k_, v_, heads), out, layout.strength)
        return out

    return attention_by_rows(q, k, v, heads, cond_rows, regional)


# ---------------------------------------------------------------------- (c) DenseDiffusion

@dataclass(frozen=True)
class DenseLayout:
    """Prepared DenseDiffusion modulation: key groups (regions' tokens, or pixels by nearest region for
    self-attention), which pixels each group is "allowed" for, and ``S_i``."""
    n_pixels: int
    context_len: int
    size_reg: torch.Tensor      # [N] S_i = 1 - size_weight * A_owner(i) / N
    key_groups: torch.Tensor    # [L] group of every key
    inside: torch.Tensor        # [N, G] bool: pixel i is paired with group g's keys
    partials: RegionPartials    # every pixel attends every group
    slot_inside: torch.Tensor   # [N, S] bool: ``inside`` at every slot

    @property
    def allowed(self) -> torch.Tensor:
        """``[N, L]`` bool: pixel i is paired with key j."""
        return self.inside[:, self.key_groups]


def _dense_layout(key_groups: torch.Tensor, inside: torch.Tensor, size_reg: torch.Tensor) -> DenseLayout:
    tokens = [torch.nonzero(key_groups == g).flatten() for g in range(inside.shape[1])]
    partials = region_partials(tokens, torch.ones_like(inside.t()))
    return DenseLayout(inside.shape[0], len(key_groups), size_reg, key_groups, inside, partials,
                       partials.slot_values(inside.t(), False))


def dense_size_regularizer(region_masks: torch.Tensor, size_weight: float = 1.0) -> torch.Tensor:
    """``S_i = 1 - size_weight * A_owner(i) / N`` (``[N]``), with owner(i) the nearest region holding pixel i.

    DenseDiffusion's segments form a partition; canvas regions overlap (the global one covers all), so a
    pixel's region is its nearest one (the one drawn on top), and pixels only the global region covers get
    ``1 - size_weight``.
    """
    owner = owner_regions(region_masks)
    areas = region_areas(region_masks.bool())
    return 1.0 - size_weight * areas[owner] / region_masks.shape[1]


def dense_cross_layout(token_regions: torch.Tensor, region_masks: torch.Tensor, context_len: int, *,
                       size_weight: float = 1.0) -> DenseLayout:
    """Cross-attention: pixel i is paired with token j iff it lies in region r(j) (the global region's
    tokens pair with every pixel)."""
    regions = _check_regions(token_regions, region_masks, context_len, hard=True)
    present, _ = _groups_of(regions, region_masks.shape[0])
    group_of = torch.full((region_masks.shape[0],), -1, dtype=torch.long, device=regions.device)
    group_of[present] = torch.arange(len(present), device=regions.device)
    return _dense_layout(group_of[regions], region_masks.t()[:, present],
                         dense_size_regularizer(region_masks, size_weight))


def dense_self_layout(region_masks: torch.Tensor, *, size_weight: float = 1.0) -> DenseLayout:
    """Self-attention (``L == N``): pixels i and j are paired iff they have the same nearest region
    (DenseDiffusion's same-segment rule on the partition of nearest regions)."""
    if region_masks.dtype != torch.bool:
        raise TypeError(f"DenseDiffusion needs hard (bool) region masks, got {region_masks.dtype}")
    owner = owner_regions(region_masks)
    owners, key_groups = torch.unique(owner, return_inverse=True)
    return _dense_layout(key_groups, owner[:, None] == owners[None, :], dense_size_regularizer(region_masks, size_weight))


def dense_time_factor(timestep: float) -> float:
    """``lambda_t = (t / 1000) ** 5`` with t the model timestep (0..1000)."""
    if not 0.0 <= float(timestep) <= 1000.0:
        raise ValueError(f"timestep must be between 0 and 1000, got {timestep}")
    return (float(timestep) / 1000.0) ** 5


def densediffusion_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                             layout: DenseLayout, timestep: float, *, weight: float = DENSE_CROSS_WEIGHT,
                             cond_rows: Sequence[int] | None = None) -> torch.Tensor:
    """DenseDiffusion attention modulation on the ``cond_rows`` (plain attention on the others).

    With ``s = QK^T / sqrt d`` per head and ``c_i = weight * lambda_t * S_i``:
    ``s'_ij = s_ij + c_i (rowmax_i - s_ij)`` where allowed, else ``s_ij - c_i (s_ij - rowmin_i)``; then
    softmax and V. ``weight`` is DenseDiffusion's w (``DENSE_CROSS_WEIGHT`` 1.0 for cross-attention,
    ``DENSE_SELF_WEIGHT`` 0.3 for self-attention); a UI strength multiplies it. The original applies it in
    the early steps only (the caller's time window).

    Two passes. Up to a per-row constant, ``s'_ij = (1 - c_i) s_ij + [allowed] c_i (rowmax_i - rowmin_i)``:
    the row extrema need the logits once (one matmul and ``aminmax``, float32 at least); then each key
    group is attended by every pixel with queries scaled by ``1 - c_i`` (fused SDPA with log-sum-exp) and
    the groups are merged with the bonus on the allowed ones (``merge_partials``).
    """
    _check_call(q, k, layout.n_pixels, layout.context_len, "DenseDiffusion")
    factor = float(weight) * dense_time_factor(timestep)
    if factor == 0.0:
        return attention(q, k, v, heads)
    c = factor * layout.size_reg
    inside = layout.slot_inside[None, :, :, None]                                         # [1, N, S, 1]

    def regional(q_, k_, v_):
        compute = torch.promote_types(q_.dtype, torch.float32)
        s = split_heads(q_, heads).to(compute) @ split_heads(k_, heads).to(compute).transpose(-1, -2)
        low, high = torch.aminmax(s, dim=-1)
        spread = (high - low) * (c.to(compute) * scale(q_.shape[2] // heads))                # [B, H, N]
        temperature = (1.0 - c).to(q_.dtype)[:, None]
        out, lse = gathered_attention(q_ * temperature, k_, v_, heads, layout.partials.calls, with_lse=True)
        return merge_partials(out, lse, layout.partials, spread.transpose(1, 2)[:, :, None, :] * inside)

    return attention_by_rows(q, k, v, heads, cond_rows, regional)
