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

import torch
import torch.nn.functional as F

from .core import attention, merge_heads, scale, split_heads

COUPLE_MODES = ("average", "overlay")
COUPLE_QUERY_BLOCK = 512    # queries per stacked batch entry in attention couple
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
    others = [r for r in range(batch) if r not in chosen]
    rows_t = torch.tensor(rows, device=q.device)
    others_t = torch.tensor(others, device=q.device)
    out = q.new_empty(batch, q.shape[1], v.shape[2])
    out[rows_t] = regional(q[rows_t], k[rows_t], v[rows_t])
    out[others_t] = attention(q[others_t], k[others_t], v[others_t], heads)
    return out


# --------------------------------------------------------------- (a) Omost score manipulation

@dataclass(frozen=True)
class OmostLayout:
    """Prepared Omost score manipulation for one (layer size, context length, dtype)."""
    n_pixels: int
    context_len: int
    key_scale: torch.Tensor | None      # [L] logit multiplier per token; None = plain attention
    bias: torch.Tensor | None           # [N, L] additive mask (0 inside, log(1 - strength) or -inf outside)


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
                 strength: float = 1.0, region_weights=None, dtype: torch.dtype = torch.float32) -> OmostLayout:
    """Validate and prepare Omost score manipulation (on ``region_masks``' device).

    At strength 1: ``logit_ij = (q_i . k_j / sqrt d) * N / A_r(j)`` if pixel i is inside region r(j), else
    ``-inf``. ``strength`` (>= 0): the key scale becomes ``w_r * (N / A_r) ** strength`` and a token outside
    the pixel's regions keeps a factor ``1 - strength`` of its softmax weight (additive bias
    ``log(1 - strength)``); at strength >= 1 the mask is hard (values above 1 only sharpen the area
    emphasis). Strength 0 is plain attention over the whole context (the weights are then ignored).
    ``region_weights`` (``[R]``, >= 0, default 1): multiplies the logits of that region's tokens, like the
    area factor itself (1 = Omost's behaviour).
    """
    strength = _check_strength(strength)
    n_pixels = region_masks.shape[-1]
    regions = _check_regions(token_regions, region_masks, context_len, hard=True)
    if strength == 0.0:
        return OmostLayout(n_pixels, context_len, None, None)
    key_scale = omost_key_scale(regions, region_masks, strength, region_weights).to(dtype)
    outside = math.log(1.0 - strength) if strength < 1.0 else float("-inf")
    bias = _outside_bias(region_masks.t(), regions, outside, dtype)
    return OmostLayout(n_pixels, context_len, key_scale, bias)


def omost_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, layout: OmostLayout, *,
                    cond_rows: Sequence[int] | None = None) -> torch.Tensor:
    """Omost score manipulation on the ``cond_rows`` (plain attention on the others).

    No ``N x L`` logits: key j is scaled by ``s_j`` and SDPA gets the region mask in its additive 0 / -inf
    form (PyTorch's CPU kernel takes its fused path only for float masks; on CUDA both forms use the same
    kernel). A strength-0 layout returns plain attention.
    """
    _check_call(q, k, layout.n_pixels, layout.context_len, "Omost")
    if layout.key_scale is None:
        return attention(q, k, v, heads)
    key_scale = layout.key_scale.to(k.device, k.dtype)[:, None]
    bias = layout.bias.to(q.device, q.dtype)

    def regional(q_, k_, v_):
        return attention(q_, k_ * key_scale, v_, heads, mask=bias)

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
    logits = logits + layout.bias.to(logits)
    return merge_heads(logits.softmax(-1) @ vh)


# ----------------------------------------------------------------------- (b) attention couple

@dataclass(frozen=True)
class CoupleLayout:
    """Prepared attention couple for one (layer size, context length, dtype)."""
    n_pixels: int
    context_len: int
    mode: str
    strength: float
    bias: torch.Tensor | None = None          # overlay: [N, L] 0 on the owner region's tokens, -inf elsewhere
    pixels: torch.Tensor | None = None        # average: packed queries' pixels [E * block]
    mix: torch.Tensor | None = None           # average: packed queries' weights [E * block] (0 = padding)
    token_index: torch.Tensor | None = None   # average: each entry's region tokens [E, Lmax]
    key_bias: torch.Tensor | None = None      # average: [E, Lmax] -inf on padded keys, or None
    spans: tuple = ()                         # average: (first packed query, pixel count) per region
    block: int = COUPLE_QUERY_BLOCK


def couple_weights(region_masks: torch.Tensor, mode: str = "average", region_weights=None) -> torch.Tensor:
    """``[R, N]`` mixing weights of attention couple (float64).

    average: ``w_r(i) = u_r m_r(i) / sum_s u_s m_s(i)`` (``u`` = region_weights, default 1; soft masks
    allowed). overlay: 1 for the nearest region containing pixel i (the last one in far -> near order), 0
    for the others (``region_weights`` do not apply).
    """
    if mode not in COUPLE_MODES:
        raise ValueError(f"attention couple mode {mode!r} is not one of {', '.join(COUPLE_MODES)}")
    if mode == "overlay":
        owner = owner_regions(region_masks)
        return F.one_hot(owner, region_masks.shape[0]).t().double()
    weights = _region_weights(region_weights, region_masks.shape[0], region_masks.device)
    weighted = region_masks.double() * weights[:, None]
    total = weighted.sum(0)
    if not bool((total > 0).all()):
        raise ValueError("some pixels have no region with a positive mask and weight; the global region "
                         "(region 0) must cover the canvas with a weight above 0")
    return weighted / total


def _couple_entries(weights: torch.Tensor, regions: torch.Tensor, block: int, dtype: torch.dtype):
    """Pack the (region, pixel) pairs with a positive weight into entries of ``block`` queries each.

    Returns per packed query its pixel and weight (padding queries: pixel 0, weight 0), per entry the token
    indices of its region (padded to the longest region), the key padding bias (None when no padding) and
    per region the span of its real queries in the packed order.
    """
    pixels, mix, tokens, spans = [], [], [], []
    for r in range(weights.shape[0]):
        inside = torch.nonzero(weights[r] > 0).flatten()
        if not len(inside):
            continue
        group = torch.nonzero(regions == r).flatten()
        if not len(group):
            raise ValueError(f"region {r} has a positive mask but no tokens in the context")
        chunks = -(-len(inside) // block)
        pad = chunks * block - len(inside)
        spans.append((len(tokens) * block, len(inside)))
        pixels += [inside, inside.new_zeros(pad)]
        mix += [weights[r, inside], weights.new_zeros(pad)]
        tokens += [group] * chunks
    longest = max(len(t) for t in tokens)
    token_index = torch.zeros(len(tokens), longest, dtype=torch.long, device=weights.device)
    valid = torch.zeros(len(tokens), longest, dtype=torch.bool, device=weights.device)
    for row, group in enumerate(tokens):
        token_index[row, :len(group)] = group
        valid[row, :len(group)] = True
    key_bias = None
    if not bool(valid.all()):
        key_bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))
    return torch.cat(pixels), torch.cat(mix).to(dtype), token_index, key_bias, tuple(spans)


def couple_layout(token_regions: torch.Tensor, region_masks: torch.Tensor, context_len: int, *,
                  mode: str = "average", strength: float = 1.0, region_weights=None,
                  dtype: torch.dtype = torch.float32, block: int = COUPLE_QUERY_BLOCK) -> CoupleLayout:
    """Validate and prepare attention couple: ``y_i = sum_r w_r(i) softmax(q_i K_r^T / sqrt d) V_r``.

    ``mode`` "average" uses ``couple_weights`` (soft masks and ``region_weights`` allowed); "overlay" gives
    each pixel to its nearest region (bool masks). ``strength`` in [0, 1] blends with plain attention over
    the whole context: ``(1 - strength) * plain + strength * couple``.
    """
    strength = _check_strength(strength, maximum=1.0)
    if mode not in COUPLE_MODES:
        raise ValueError(f"attention couple mode {mode!r} is not one of {', '.join(COUPLE_MODES)}")
    n_pixels = region_masks.shape[-1]
    regions = _check_regions(token_regions, region_masks, context_len, hard=(mode == "overlay"))
    if strength == 0.0:
        return CoupleLayout(n_pixels, context_len, mode, strength)
    if mode == "overlay":
        owner = owner_regions(region_masks)
        if not bool(torch.isin(owner, regions).all()):
            raise ValueError("in overlay mode the nearest region of every pixel must have tokens")
        owned = F.one_hot(owner, region_masks.shape[0]).bool()                      # [N, R]
        return CoupleLayout(n_pixels, context_len, mode, strength,
                            bias=_outside_bias(owned, regions, float("-inf"), dtype))
    weights = couple_weights(region_masks, mode, region_weights)
    block = min(block, n_pixels)
    pixels, mix, token_index, key_bias, spans = _couple_entries(weights, regions, block, dtype)
    return CoupleLayout(n_pixels, context_len, mode, strength, pixels=pixels, mix=mix, token_index=token_index,
                        key_bias=key_bias, spans=spans, block=block)


def _couple_average(q, k, v, heads, layout: CoupleLayout):
    """Each region attends only the pixels where its weight is positive: those queries are packed into
    entries of ``layout.block`` queries stacked along the batch axis, each entry with its region's K/V
    (padded to the longest region with masked keys): one SDPA call. The weighted outputs are added back
    region by region (``index_add_`` with distinct pixels per region, in a fixed order: deterministic on
    CUDA too). Equal to stacking every region over all N pixels, with less work."""
    batch, n_pixels, _ = q.shape
    pixels, index = layout.pixels.to(q.device), layout.token_index.to(q.device)
    entries, longest = index.shape
    block = layout.block
    # advanced indexing, not index_select: PyTorch's CPU index_select along dim 1 runs on one thread
    qs = split_heads(q[:, pixels].reshape(batch * entries, block, q.shape[2]), heads)
    ks = split_heads(k[:, index.flatten()].reshape(batch * entries, longest, k.shape[2]), heads)
    vs = split_heads(v[:, index.flatten()].reshape(batch * entries, longest, v.shape[2]), heads)
    mask = None
    if layout.key_bias is not None:
        mask = layout.key_bias.to(q.device, q.dtype).repeat(batch, 1)[:, None, None, :]   # [B*E, 1, 1, Lmax]
    out = merge_heads(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask))
    out = out.view(batch, entries * block, -1).mul_(layout.mix.to(out)[:, None])   # in place: no extra buffer
    total = out.new_zeros(batch, n_pixels, out.shape[2])
    for start, count in layout.spans:
        total.index_add_(1, pixels[start:start + count], out[:, start:start + count])
    return total


def attention_couple(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, layout: CoupleLayout, *,
                     cond_rows: Sequence[int] | None = None) -> torch.Tensor:
    """Attention couple on the ``cond_rows`` (plain attention on the others).

    average: all regions in one SDPA call (``_couple_average``). overlay: one masked SDPA over the
    concatenated context, each pixel attending only its owner region's tokens (the same sum with one-hot
    weights). Strength 0 and 1 skip the unused term of the blend with plain attention.
    """
    _check_call(q, k, layout.n_pixels, layout.context_len, "attention couple")
    if layout.strength == 0.0:
        return attention(q, k, v, heads)

    def regional(q_, k_, v_):
        if layout.mode == "overlay":
            out = attention(q_, k_, v_, heads, mask=layout.bias.to(q_.device, q_.dtype))
        else:
            out = _couple_average(q_, k_, v_, heads, layout)
        if layout.strength < 1.0:
            out = torch.lerp(attention(q_, k_, v_, heads), out, layout.strength)
        return out

    return attention_by_rows(q, k, v, heads, cond_rows, regional)


# ---------------------------------------------------------------------- (c) DenseDiffusion

@dataclass(frozen=True)
class DenseLayout:
    """Prepared DenseDiffusion modulation: which (pixel, key) pairs are "allowed" and ``S_i``."""
    allowed: torch.Tensor      # [N, L] bool
    size_reg: torch.Tensor     # [N] S_i = 1 - size_weight * A_owner(i) / N


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
    return DenseLayout(allowed_tokens(regions, region_masks), dense_size_regularizer(region_masks, size_weight))


def dense_self_layout(region_masks: torch.Tensor, *, size_weight: float = 1.0) -> DenseLayout:
    """Self-attention (``L == N``): pixels i and j are paired iff they have the same nearest region
    (DenseDiffusion's same-segment rule on the partition of nearest regions)."""
    if region_masks.dtype != torch.bool:
        raise TypeError(f"DenseDiffusion needs hard (bool) region masks, got {region_masks.dtype}")
    owner = owner_regions(region_masks)
    return DenseLayout(owner[:, None] == owner[None, :], dense_size_regularizer(region_masks, size_weight))


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
    the early steps only (the caller's time window). Logits are explicit (float32 at least).
    """
    _check_call(q, k, layout.allowed.shape[0], layout.allowed.shape[1], "DenseDiffusion")
    factor = float(weight) * dense_time_factor(timestep)
    allowed = layout.allowed.to(q.device)

    def regional(q_, k_, v_):
        compute = torch.promote_types(q_.dtype, torch.float32)
        qh, kh, vh = (split_heads(x, heads).to(compute) for x in (q_, k_, v_))
        s = (qh @ kh.transpose(-1, -2)) * scale(qh.shape[-1])
        c = (factor * layout.size_reg.to(s))[:, None]
        rowmax, rowmin = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
        s = torch.where(allowed, s + c * (rowmax - s), s - c * (s - rowmin))
        return merge_heads(s.softmax(-1) @ vh).to(q_.dtype)

    return attention_by_rows(q, k, v, heads, cond_rows, regional)
