"""Regional attention math: Omost score manipulation, attention couple, DenseDiffusion (pure torch)."""

import math

import pytest
import torch

from lib_omost.attention import core
from lib_omost.attention.core import attention
from lib_omost.attention.regional import (
    DENSE_SELF_WEIGHT,
    allowed_tokens,
    attention_by_rows,
    attention_couple,
    couple_layout,
    couple_weights,
    dense_cross_layout,
    dense_self_layout,
    densediffusion_attention,
    masks_at_layer,
    omost_attention,
    omost_attention_explicit,
    omost_layout,
    owner_regions,
    region_partials,
    tile_token_regions,
)

H, W = 5, 7                       # odd layer grid
N = H * W
HEADS, DIM = 2, 4
C = HEADS * DIM
# region 0 global; 1, 2, 3 overlapping rectangles listed far -> near; unequal token counts
RECTS = [(0, 5, 0, 7), (0, 3, 0, 4), (2, 5, 3, 7), (1, 4, 2, 5)]
TOKENS = [4, 3, 5, 2]


def rect_masks(rects=RECTS, h=H, w=W):
    masks = torch.zeros(len(rects), h, w, dtype=torch.bool)
    for r, (top, bottom, left, right) in enumerate(rects):
        masks[r, top:bottom, left:right] = True
    return masks.flatten(1)


def token_map(counts=TOKENS):
    return torch.cat([torch.full((n,), r, dtype=torch.long) for r, n in enumerate(counts)])


def tensors(batch=1, length=None, seed=0, n=N):
    length = sum(TOKENS) if length is None else length
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, C, generator=g, dtype=torch.float64)
    k = torch.randn(batch, length, C, generator=g, dtype=torch.float64)
    v = torch.randn(batch, length, C, generator=g, dtype=torch.float64)
    return q, k, v


def heads_view(x):
    b, n, _ = x.shape
    return x.view(b, n, HEADS, DIM).permute(0, 2, 1, 3)


def merge(x):
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


def omost_formula(q, k, v, regions, masks, strength=1.0, weights=None):
    """logit_ij = q_i.k_j/sqrt(d) * w_r * (N/A_r)^strength inside region r(j); outside: bias log(1-strength)."""
    n_regions = masks.shape[0]
    weights = torch.ones(n_regions, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
    areas = masks.double().sum(1)
    logits = heads_view(q) @ heads_view(k).transpose(-1, -2) / math.sqrt(DIM)
    for j in range(k.shape[1]):
        r = int(regions[j])
        logits[..., j] *= weights[r] * (N / areas[r]) ** strength
        outside = ~masks[r]
        logits[..., outside, j] += math.log(1 - strength) if strength < 1 else -math.inf
    return merge(logits.softmax(-1) @ heads_view(v))


def close(a, b, atol=1e-10):
    return torch.allclose(a, b, rtol=1e-9, atol=atol)


def plain(q, k, v):
    return attention(q, k, v, HEADS)


# one-shot forms: build the layout for this call, then run the method
def omost(q, k, v, regions, masks, cond_rows=None, **params):
    layout = omost_layout(regions, masks, k.shape[1], dtype=q.dtype, **params)
    return omost_attention(q, k, v, HEADS, layout, cond_rows=cond_rows)


def explicit(q, k, v, regions, masks, **params):
    layout = omost_layout(regions, masks, k.shape[1], dtype=q.dtype, **params)
    return omost_attention_explicit(q, k, v, HEADS, layout)


def couple(q, k, v, regions, masks, cond_rows=None, **params):
    layout = couple_layout(regions, masks, k.shape[1], dtype=q.dtype, **params)
    return attention_couple(q, k, v, HEADS, layout, cond_rows=cond_rows)


def dense(q, k, v, regions, masks, timestep, cond_rows=None, weight=1.0):
    layout = dense_cross_layout(regions, masks, k.shape[1])
    return densediffusion_attention(q, k, v, HEADS, layout, timestep, weight=weight, cond_rows=cond_rows)


# ------------------------------------------------------------------------------------------ inputs

def test_tile_token_regions_repeats_the_whole_sequence():
    regions = token_map()
    tiled = tile_token_regions(regions, 3 * len(regions))
    assert torch.equal(tiled, torch.cat([regions] * 3))
    assert tile_token_regions(regions, len(regions)) is regions


def test_tile_token_regions_rejects_a_length_that_does_not_divide():
    with pytest.raises(ValueError, match="not a whole repetition"):
        tile_token_regions(token_map(), 2 * sum(TOKENS) + 1)


def test_masks_at_layer_is_nearest_exact():
    canvas = torch.zeros(2, 90, 90, dtype=torch.bool)
    canvas[0] = True
    canvas[1, 15:75, 0:60] = True
    out = masks_at_layer(canvas, (H, W)).view(2, H, W)
    rows = [min(int((o + 0.5) * 90 / H), 89) for o in range(H)]
    cols = [min(int((o + 0.5) * 90 / W), 89) for o in range(W)]
    expected = canvas[1][rows][:, cols]
    assert out.dtype == torch.bool and out[0].all()
    assert torch.equal(out[1], expected)


def test_owner_is_the_last_region_holding_the_pixel():
    masks = rect_masks()
    owner = owner_regions(masks)
    for i in range(N):
        assert int(owner[i]) == max(r for r in range(masks.shape[0]) if masks[r, i])


def test_allowed_tokens():
    masks, regions = rect_masks(), token_map()
    allowed = allowed_tokens(regions, masks)
    for i in range(N):
        for j in range(len(regions)):
            assert bool(allowed[i, j]) == bool(masks[regions[j], i])


def test_uncovered_pixels_are_rejected():
    masks = rect_masks()
    q, k, v = tensors(length=sum(TOKENS[1:]))
    regions = token_map(TOKENS[1:]) + 1          # no global tokens: some pixels see nothing
    with pytest.raises(ValueError, match="global region"):
        omost(q, k, v, regions, masks)


def test_bad_region_index_and_soft_masks_are_rejected():
    q, k, v = tensors()
    with pytest.raises(ValueError, match="only regions 0..3"):
        omost(q, k, v, token_map() * 2, rect_masks())
    with pytest.raises(TypeError, match="bool"):
        omost(q, k, v, token_map(), rect_masks().double())


# -------------------------------------------------------------------------------- Omost method

def test_omost_equals_the_explicit_formula():
    q, k, v = tensors(batch=2)
    masks, regions = rect_masks(), token_map()
    expected = omost_formula(q, k, v, regions, masks)
    assert close(omost(q, k, v, regions, masks), expected, atol=1e-10)
    assert close(explicit(q, k, v, regions, masks), expected, atol=1e-10)


@pytest.mark.parametrize("strength", [0.3, 0.9, 1.5])
def test_omost_strength_and_weights_follow_the_documented_formula(strength):
    q, k, v = tensors(seed=1)
    masks, regions = rect_masks(), token_map()
    weights = [1.0, 0.5, 2.0, 1.25]
    expected = omost_formula(q, k, v, regions, masks, strength, weights)
    out = omost(q, k, v, regions, masks, strength=strength, region_weights=weights)
    assert close(out, expected, atol=1e-10)
    slow = explicit(q, k, v, regions, masks, strength=strength, region_weights=weights)
    assert close(slow, expected, atol=1e-10)


@pytest.mark.parametrize("strength", [0.3, 0.9, 1.0, 1.5])
def test_omost_mask_free_form_equals_the_formula(strength):
    # the form CUDA runs: region partials without any mask, merged by log-sum-exp
    q, k, v = tensors(batch=2, seed=20)
    masks, regions = rect_masks(), token_map()
    weights = [1.0, 0.5, 2.0, 1.25]
    layout = omost_layout(regions, masks, k.shape[1], dtype=q.dtype, strength=strength, region_weights=weights,
                          mask_free=True)
    assert layout.bias is None and layout.partials is not None
    expected = omost_formula(q, k, v, regions, masks, strength, weights)
    assert close(omost_attention(q, k, v, HEADS, layout), expected, atol=1e-10)


def test_omost_default_form_follows_the_device():
    layout = omost_layout(token_map(), rect_masks(), sum(TOKENS))
    assert layout.partials is None and layout.bias is not None          # CPU: one fused call with the float mask


def test_omost_strength_zero_is_exactly_plain_attention():
    q, k, v = tensors(seed=2)
    out = omost(q, k, v, token_map(), rect_masks(), strength=0.0)
    assert torch.equal(out, plain(q, k, v))


def test_omost_single_full_canvas_region_is_plain_attention():
    q, k, v = tensors(length=9, seed=3)
    masks = torch.ones(1, N, dtype=torch.bool)
    out = omost(q, k, v, torch.zeros(9, dtype=torch.long), masks)
    assert close(out, plain(q, k, v), atol=1e-12)


def test_omost_differs_from_plain_attention_with_regions():
    q, k, v = tensors(seed=4)
    out = omost(q, k, v, token_map(), rect_masks())
    assert not torch.allclose(out, plain(q, k, v), atol=1e-3)


# ------------------------------------------------------------------------------ attention couple

def couple_formula(q, k, v, regions, masks, mode, weights=None):
    n_regions = masks.shape[0]
    if mode == "overlay":
        mix = torch.zeros(n_regions, N, dtype=torch.float64)
        for i in range(N):
            mix[max(r for r in range(n_regions) if masks[r, i] > 0), i] = 1.0
    else:
        u = torch.ones(n_regions, dtype=torch.float64) if weights is None else torch.tensor(weights, dtype=torch.float64)
        m = masks.double() * u[:, None]
        mix = m / m.sum(0)
    out = torch.zeros_like(q)
    for r in range(n_regions):
        idx = (regions == r).nonzero().flatten()
        if len(idx):
            out += mix[r][None, :, None] * plain(q, k[:, idx], v[:, idx])
    return out


@pytest.mark.parametrize("mode", ["average", "overlay"])
def test_couple_equals_the_per_region_sum(mode):
    q, k, v = tensors(batch=2, seed=5)
    masks, regions = rect_masks(), token_map()
    out = couple(q, k, v, regions, masks, mode=mode)
    assert close(out, couple_formula(q, k, v, regions, masks, mode), atol=1e-10)


def test_couple_soft_masks_and_weights():
    q, k, v = tensors(seed=6)
    masks = rect_masks().double() * torch.tensor([1.0, 0.6, 0.8, 0.3])[:, None]
    weights = [0.5, 1.0, 2.0, 1.5]
    regions = token_map()
    out = couple(q, k, v, regions, masks, region_weights=weights)
    assert close(out, couple_formula(q, k, v, regions, masks, "average", weights), atol=1e-10)
    assert close(couple_weights(masks, "average", weights).sum(0), torch.ones(N, dtype=torch.float64))


@pytest.mark.parametrize("block", [1, 4, 16])
def test_couple_packing_in_small_blocks_is_exact(block):
    # regions split into several padded entries of `block` queries; soft masks; two images
    q, k, v = tensors(batch=2, seed=19)
    masks = rect_masks().double() * torch.tensor([1.0, 0.5, 0.8, 0.3])[:, None]
    regions = token_map()
    layout = couple_layout(regions, masks, k.shape[1], dtype=q.dtype, block=block)
    assert layout.partials.entries >= masks.shape[0]
    out = attention_couple(q, k, v, HEADS, layout)
    assert close(out, couple_formula(q, k, v, regions, masks, "average"))


def test_couple_equal_length_regions_need_no_padding():
    counts = [3, 3, 3, 3]
    q, k, v = tensors(length=12, seed=7)
    masks, regions = rect_masks(), token_map(counts)
    assert len(couple_layout(regions, masks, 12).partials.calls) == 1      # one SDPA call, no key padding
    out = couple(q, k, v, regions, masks)
    assert close(out, couple_formula(q, k, v, regions, masks, "average"), atol=1e-10)


@pytest.mark.parametrize("mode", ["average", "overlay"])
def test_couple_single_full_canvas_region_is_plain_attention(mode):
    q, k, v = tensors(length=6, seed=8)
    out = couple(q, k, v, torch.zeros(6, dtype=torch.long), torch.ones(1, N, dtype=torch.bool),
                           mode=mode)
    assert close(out, plain(q, k, v), atol=1e-12)


def test_couple_strength_blends_with_plain_attention():
    q, k, v = tensors(seed=9)
    masks, regions = rect_masks(), token_map()
    full = couple(q, k, v, regions, masks)
    half = couple(q, k, v, regions, masks, strength=0.25)
    assert close(half, 0.75 * plain(q, k, v) + 0.25 * full, atol=1e-12)
    assert torch.equal(couple(q, k, v, regions, masks, strength=0.0), plain(q, k, v))
    with pytest.raises(ValueError, match="between 0 and 1"):
        couple(q, k, v, regions, masks, strength=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        omost(q, k, v, regions, masks, strength=-0.5)
    with pytest.raises(ValueError, match="not one of"):
        couple(q, k, v, regions, masks, mode="sum")


# ------------------------------------------------------------------------------- DenseDiffusion

def dense_formula(q, k, v, allowed, size_reg, timestep, weight):
    lam = (timestep / 1000) ** 5
    s = heads_view(q) @ heads_view(k).transpose(-1, -2) / math.sqrt(DIM)
    out = s.clone()
    for i in range(s.shape[2]):
        c = weight * lam * float(size_reg[i])
        row = s[:, :, i, :]
        hi, lo = row.max(-1, keepdim=True).values, row.min(-1, keepdim=True).values
        for j in range(s.shape[3]):
            if allowed[i, j]:
                out[:, :, i, j] = row[..., j] + c * (hi[..., 0] - row[..., j])
            else:
                out[:, :, i, j] = row[..., j] - c * (row[..., j] - lo[..., 0])
    return merge(out.softmax(-1) @ heads_view(v))


def test_dense_size_regularizer_uses_the_nearest_region():
    masks = rect_masks()
    size_reg = dense_cross_layout(token_map(), masks, sum(TOKENS), size_weight=0.5).size_reg
    assert torch.equal(dense_self_layout(masks, size_weight=0.5).size_reg, size_reg)
    areas = masks.sum(1).double()
    for i in range(N):
        owner = max(r for r in range(masks.shape[0]) if masks[r, i])
        assert math.isclose(float(size_reg[i]), 1 - 0.5 * float(areas[owner]) / N, rel_tol=1e-6)


def test_dense_cross_equals_the_formula():
    q, k, v = tensors(batch=2, seed=10)
    masks, regions = rect_masks(), token_map()
    layout = dense_cross_layout(regions, masks, k.shape[1])
    assert torch.equal(layout.allowed, allowed_tokens(regions, masks))
    out = dense(q, k, v, regions, masks, timestep=900.0)
    assert close(out, dense_formula(q, k, v, layout.allowed, layout.size_reg, 900.0, 1.0), atol=1e-10)
    assert not torch.allclose(out, plain(q, k, v), atol=1e-3)


def test_dense_self_equals_the_formula():
    q, k, v = tensors(length=N, seed=11)
    masks = rect_masks()
    layout = dense_self_layout(masks)
    owner = owner_regions(masks)
    assert torch.equal(layout.allowed, owner[:, None] == owner[None, :])
    out = densediffusion_attention(q, k, v, HEADS, layout, timestep=999.0, weight=DENSE_SELF_WEIGHT)
    assert close(out, dense_formula(q, k, v, layout.allowed, layout.size_reg, 999.0, 0.3), atol=1e-10)


def test_dense_at_timestep_zero_is_plain_attention():
    q, k, v = tensors(seed=12)
    out = dense(q, k, v, token_map(), rect_masks(), timestep=0.0)
    assert close(out, plain(q, k, v), atol=1e-12)
    with pytest.raises(ValueError, match="between 0 and 1000"):
        dense(q, k, v, token_map(), rect_masks(), timestep=1200.0)


def test_layouts_are_checked_against_the_call():
    q, k, v = tensors(seed=13)
    regions, masks = token_map(), rect_masks()
    layouts = [(densediffusion_attention, dense_cross_layout(regions, masks, k.shape[1]), (500.0,)),
               (omost_attention, omost_layout(regions, masks, k.shape[1]), ()),
               (attention_couple, couple_layout(regions, masks, k.shape[1]), ())]
    for method, layout, extra in layouts:
        with pytest.raises(ValueError, match="one layout per layer size and context length"):
            method(q, k.repeat(1, 2, 1), v.repeat(1, 2, 1), HEADS, layout, *extra)
        with pytest.raises(ValueError, match="one layout per layer size and context length"):
            method(q[:, :-1], k, v, HEADS, layout, *extra)


# --------------------------------------------------------------------- properties of all methods

METHODS = {
    "omost": lambda q, k, v, reg, m, **kw: omost(q, k, v, reg, m, **kw),
    "omost-mask-free": lambda q, k, v, reg, m, **kw: omost(q, k, v, reg, m, mask_free=True, **kw),
    "couple-average": lambda q, k, v, reg, m, **kw: couple(q, k, v, reg, m, **kw),
    "couple-overlay": lambda q, k, v, reg, m, **kw: couple(q, k, v, reg, m, mode="overlay", **kw),
    "dense": lambda q, k, v, reg, m, **kw: dense(q, k, v, reg, m, 800.0, **kw),
}


@pytest.mark.parametrize("name", METHODS)
def test_lcm_repetition_leaves_the_result_unchanged(name):
    q, k, v = tensors(seed=14)
    masks, regions = rect_masks(), token_map()
    method = METHODS[name]
    once = method(q, k, v, regions, masks)
    thrice = method(q, k.repeat(1, 3, 1), v.repeat(1, 3, 1), regions, masks)
    assert close(once, thrice, atol=1e-10)
    with pytest.raises(ValueError, match="whole repetition"):
        method(q, k[:, :-1], v[:, :-1], regions, masks)


@pytest.mark.parametrize("name", ["omost", "omost-mask-free", "couple-average", "couple-overlay"])
def test_hard_mask_methods_keep_pixels_outside_b_unchanged(name):
    q, k, v = tensors(seed=15)
    masks, regions = rect_masks(), token_map()
    b = 2
    k2, v2 = k.clone(), v.clone()
    k2[:, regions == b] += 3.0
    v2[:, regions == b] -= 2.0
    method = METHODS[name]
    before, after = method(q, k, v, regions, masks), method(q, k2, v2, regions, masks)
    outside = ~masks[b]
    assert close(before[:, outside], after[:, outside], atol=1e-12)
    reached = masks[b] if name != "couple-overlay" else owner_regions(masks) == b
    assert (before[:, reached] - after[:, reached]).abs().amax() > 1e-3


def test_densediffusion_is_soft_region_b_reaches_pixels_outside_b():
    q, k, v = tensors(seed=15)
    masks, regions = rect_masks(), token_map()
    k2, v2 = k.clone(), v.clone()
    v2[:, regions == 2] -= 2.0
    method = METHODS["dense"]
    outside = ~masks[2]
    diff = method(q, k, v, regions, masks)[:, outside] - method(q, k2, v2, regions, masks)[:, outside]
    assert diff.abs().amax() > 1e-3


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("cond_rows", [[2, 3], [0, 1], [1, 2], [0, 2], [1, 3]])
def test_cond_rows_are_regional_and_the_others_plain(name, cond_rows):
    # batch 4: two images x (cond, uncond) in any chunk order; every row shares the context length
    q, k, v = tensors(batch=4, seed=16)
    masks, regions = rect_masks(), token_map()
    method = METHODS[name]
    out = method(q, k, v, regions, masks, cond_rows=cond_rows)
    for row in range(4):
        one = slice(row, row + 1)
        if row in cond_rows:
            expected = method(q[one], k[one], v[one], regions, masks)
        else:
            expected = plain(q[one], k[one], v[one])
        assert close(out[one], expected, atol=1e-10), (row, cond_rows)


def test_no_cond_rows_is_plain_attention_and_bad_rows_are_rejected():
    q, k, v = tensors(batch=2, seed=17)
    masks, regions = rect_masks(), token_map()
    assert torch.equal(omost(q, k, v, regions, masks, cond_rows=[]), plain(q, k, v))
    with pytest.raises(ValueError, match="distinct rows of a batch of 2"):
        omost(q, k, v, regions, masks, cond_rows=[2])
    with pytest.raises(ValueError, match="distinct rows"):
        attention_by_rows(q, k, v, HEADS, [0, 0], plain)


def test_float32_matches_float64():
    q, k, v = tensors(batch=2, seed=18)
    masks, regions = rect_masks(), token_map()
    for name, method in METHODS.items():
        hi = method(q, k, v, regions, masks)
        lo = method(q.float(), k.float(), v.float(), regions, masks)
        assert lo.dtype == torch.float32
        assert torch.allclose(lo.double(), hi, atol=1e-4), name


# ------------------------------------------------------------------------------ fused kernels



@pytest.mark.parametrize("name", ["omost-mask-free", "couple-average", "couple-overlay", "dense"])
def test_no_mask_reaches_the_kernel(name, unmasked_sdpa):
    q, k, v = tensors(batch=4, seed=21)
    masks, regions = rect_masks(), token_map()
    METHODS[name](q, k, v, regions, masks, cond_rows=[1, 3])


def test_equal_token_counts_run_in_one_call_and_unequal_ones_without_padding():
    masks = rect_masks()
    equal = couple_layout(token_map([77, 77, 77, 77]), masks, 308).partials
    assert len(equal.calls) == 1 and equal.calls[0].keys.numel() == equal.entries * 77
    mixed = couple_layout(token_map([154, 77, 77, 154]), masks, 462).partials
    assert sorted(len(c.keys) // c.count for c in mixed.calls) == [77, 154]      # each entry its own tokens


def test_region_partials_slots():
    # group 0 covers every pixel, group 1 pixels 1 and 3; blocks of 2 queries
    tokens = [torch.arange(3), torch.arange(3, 5)]
    pixels = torch.tensor([[True] * 4, [False, True, False, True]])
    partials = region_partials(tokens, pixels, block=2)
    assert [c.count for c in partials.calls] == [1, 2]                 # 2 tokens: group 1; 3 tokens: group 0
    assert partials.calls[0].queries.tolist() == [1, 3]
    assert partials.calls[1].queries.tolist() == [0, 1, 2, 3]
    assert partials.used.tolist() == [[True, False], [True, True], [True, False], [True, True]]
    assert partials.slot_groups[partials.used].tolist() == [0, 0, 1, 0, 0, 1]
    # packed order: call 0 (group 1: pixels 1, 3), then call 1 (group 0: pixels 0..3)
    assert partials.slots[partials.used].tolist() == [2, 3, 0, 4, 5, 1]


def test_attention_lse_matches_the_explicit_logits():
    g = torch.Generator().manual_seed(22)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64) for n in (9, 5, 5))
    ref_out, ref_lse = core.attention_lse_math(q, k, v)
    logits = q @ k.transpose(-1, -2) / 4.0
    assert torch.allclose(ref_lse, logits.logsumexp(-1), atol=1e-12)
    assert core.lse_kernel(q.device, torch.float64, 16) is not core.attention_lse_math   # the CPU flash kernel
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        out, lse = core.attention_lse(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype and torch.allclose(out.double(), ref_out, atol=atol)
        assert torch.allclose(lse.double(), ref_lse, atol=max(atol, 1e-3))


def test_a_kernel_with_another_lse_convention_is_rejected():
    def base2(q, k, v):
        out, lse = core.attention_lse_math(q, k, v)
        return out, lse / math.log(2)

    assert not core._probe_lse(base2, torch.device("cpu"), torch.float32, 8)
    assert core._probe_lse(core.attention_lse_math, torch.device("cpu"), torch.float32, 8)


# Low precision: every method against its float64 result, as a fraction of the output's largest magnitude.
# Omost's area factor N / A_r multiplies rounded keys, so its error is larger (the masked form has the same).
LOW_PRECISION_TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def sdxl_like_layer(seed=23):
    """16 x 16 pixels, 4 heads x 32, regions of 154 / 77 / 77 / 154 tokens (77-token chunks)."""
    masks = rect_masks([(0, 16, 0, 16), (0, 8, 0, 10), (6, 16, 5, 16), (3, 12, 3, 12)], 16, 16)
    regions = token_map([154, 77, 77, 154])
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(2, n, 4 * 32, generator=g, dtype=torch.float64) for n in (256, len(regions), len(regions))]
    return qkv, regions, masks


LAYER_METHODS = {
    "omost": lambda x, reg, m, d: omost_attention(*x, 4, omost_layout(reg, m, len(reg), dtype=d, mask_free=False)),
    "omost-mask-free": lambda x, reg, m, d: omost_attention(*x, 4, omost_layout(reg, m, len(reg), dtype=d,
                                                                                   mask_free=True)),
    "couple": lambda x, reg, m, d: attention_couple(*x, 4, couple_layout(reg, m, len(reg), dtype=d)),
    "overlay": lambda x, reg, m, d: attention_couple(*x, 4, couple_layout(reg, m, len(reg), mode="overlay", dtype=d)),
    "dense": lambda x, reg, m, d: densediffusion_attention(*x, 4, dense_cross_layout(reg, m, len(reg)), 900.0),
}


@pytest.mark.parametrize("dtype", list(LOW_PRECISION_TOLERANCE), ids=str)
def test_low_precision_error_is_bounded(dtype):
    qkv, regions, masks = sdxl_like_layer()
    errors = {}
    for name, method in LAYER_METHODS.items():
        ref = method(qkv, regions, masks, torch.float64)
        out = method([t.to(dtype) for t in qkv], regions, masks, dtype)
        errors[name] = float((out.double() - ref).abs().max() / ref.abs().max())
        assert errors[name] <= LOW_PRECISION_TOLERANCE[dtype], (name, errors[name])
    assert errors["omost-mask-free"] <= 1.5 * errors["omost"] + 1e-7      # as precise as the masked form
