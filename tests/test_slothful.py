"""Slothful attention: schedule, stride -> grid, reductions and their exactness (pure torch)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lib_omost.attention import slothful as S
from lib_omost.attention.core import attention


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- schedule --------------------------------------------------------------------------------------

def test_schedule_time_clips_to_unit_interval():
    assert S.schedule_time(1000) == 0.0
    assert S.schedule_time(0) == 1.0
    assert S.schedule_time(250) == 0.75
    assert S.schedule_time(1200) == 0.0 and S.schedule_time(-5) == 1.0


def test_time_ratio_formula():
    assert S.time_ratio(600, peak_time=0.4, time_decay=2.0) == 1.0           # time 0.4 is the peak
    assert S.time_ratio(900, peak_time=0.4, time_decay=0.0) == 1.0           # no decay: always 1
    t = 1 - 100 / 1000
    assert S.time_ratio(100, 0.4, 2.0) == pytest.approx(math.exp(-((t - 0.4) * 2.0) ** 2), rel=1e-15)


def test_depth_rate_per_family():
    # SD1.5 levels 320 / 640 / 1280 channels, model_channels 320: depth 1, 2, 4.
    assert [S.layer_depth(c, 320) for c in (320, 640, 1280)] == [1, 2, 4]
    assert [S.depth_rate(d, sdxl=False) for d in (1, 2, 4)] == [1, 0.5, 0.25]
    # SDXL's attention levels are 640 and 1280 channels: depth 2 and 4 with rate 2/depth.
    assert [S.depth_rate(d, sdxl=True) for d in (2, 4)] == [1, 0.5]
    with pytest.raises(ValueError):
        S.layer_depth(0, 320)


def test_stride_at_peak_is_slothful_times_depth_factor():
    peak_t = 600                                                            # time 0.4 = default peak
    assert S.slothful_stride(6.0, peak_t, 320, 320, sdxl=False) == 6.0
    assert S.slothful_stride(6.0, peak_t, 640, 320, sdxl=False) == 6.0 * 0.5 ** 2
    assert S.slothful_stride(6.0, peak_t, 640, 320, sdxl=True) == 6.0
    assert S.slothful_stride(6.0, peak_t, 1280, 320, sdxl=True, depth_decay=1.0) == 3.0
    off_peak = S.slothful_stride(4.0, 100, 320, 320, sdxl=False)
    assert off_peak == pytest.approx(4.0 * S.time_ratio(100), rel=1e-15)


def test_sides_are_not_swapped():
    inp, out = S.DEFAULT_INPUT_SIDE, S.DEFAULT_OUTPUT_SIDE
    assert (inp.slothful, out.slothful) == (6.0, 4.0)
    assert S.side_for_block("input", inp, out) is inp
    assert S.side_for_block("output", inp, out) is out
    assert S.side_for_block("middle", inp, out) is None
    with pytest.raises(ValueError, match="input"):
        S.side_for_block("down", inp, out)


def test_side_rejects_bad_values():
    with pytest.raises(ValueError, match="2D_AVG"):
        S.SlothfulSide(mode="3D")
    with pytest.raises(ValueError, match="k_blend"):
        S.SlothfulSide(k_blend=1.5)


# --- stride -> grid --------------------------------------------------------------------------------

# stride: (1D step, (sy, sx)) with sy = ceil(sqrt(stride)), sx = ceil(stride / sy)
FACTORISATION = {
    0.0: (1, (1, 1)), 1.0: (1, (1, 1)), 1.2: (2, (2, 1)), 2.0: (2, (2, 1)), 3.0: (3, (2, 2)),
    4.0: (4, (2, 2)), 4.5: (5, (3, 2)), 6.0: (6, (3, 2)), 7.0: (7, (3, 3)), 9.0: (9, (3, 3)),
    10.0: (10, (4, 3)), 16.0: (16, (4, 4)), 17.0: (17, (5, 4)),
}


@pytest.mark.parametrize("stride", sorted(FACTORISATION))
def test_factorisation_table(stride):
    step, grid = FACTORISATION[stride]
    assert S.grid_1d(stride) == step
    assert S.grid_2d(stride) == grid


def test_grid_is_clamped_to_the_map():
    assert S.reduction_grid((3, 5), 50.0, "2D_AVG") == ((3, 5), 3, 5)
    assert S.reduction_grid((3, 5), 50.0, "1D_MAX") == ((1, 15), 1, 15)


def test_on_a_short_grid_the_column_step_comes_from_the_clamped_row_step():
    """The original's rule: sy = min(ceil(sqrt(s)), h), sx = min(ceil(s / sy), w)."""
    assert S.reduction_grid((2, 40), 9.0, "2D_AVG") == ((2, 40), 2, 5)       # not (2, 3): ~9x fewer keys
    assert S.reduction_grid((1, 64), 6.0, "2D_MAX") == ((1, 64), 1, 6)
    assert S.reduction_grid((3, 3), 16.0, "2D_AVG") == ((3, 3), 3, 3)        # both steps clamped
    assert S.reduction_grid((40, 2), 9.0, "2D_AVG") == ((40, 2), 3, 2)       # rows long enough: unchanged
    for h in range(1, 6):
        for stride in (1.5, 2.0, 4.5, 9.0, 17.0, 30.0):
            sy = min(math.ceil(math.sqrt(stride)), h)
            assert S.reduction_grid((h, 50), stride, "2D_AVG") == ((h, 50), sy, min(math.ceil(stride / sy), 50))
    x = torch.randn(1, 80, 3, dtype=torch.float64)
    assert S.reduce_tokens(x, (2, 40), 9.0).shape == (1, 8, 3)


# --- reductions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("mode", S.MODES)
def test_stride_at_most_one_returns_the_input_itself(stride, mode):
    x = rand(2, 12, 4)
    assert S.reduce_tokens(x, (3, 4), stride, mode, 0.5) is x
    k, v = S.slothful_kv(x, (3, 4), stride, mode, 0.3, 0.7)
    assert k is x and v is x
    valid = torch.ones(1, 12, dtype=torch.bool)
    y, vy = S.reduce_tokens_masked(x, (3, 4), stride, mode, 0.5, valid)
    assert y is x and vy is valid


@pytest.mark.parametrize("hw", [(6, 8), (7, 5)])
@pytest.mark.parametrize("stride", [2.0, 4.0, 6.0])
def test_strided_sample_equals_slicing(hw, stride):
    h, w = hw
    x = rand(2, h * w, 3)
    sy, sx = S.grid_2d(stride)
    expected = x.view(2, h, w, 3)[:, ::sy, ::sx].reshape(2, -1, 3)
    assert torch.equal(S.reduce_tokens(x, hw, stride, "2D_AVG", 0.0), expected)
    assert torch.equal(S.reduce_tokens(x, hw, stride, "2D_MAX", 0.0), expected)
    step = S.grid_1d(stride)
    assert torch.equal(S.reduce_tokens(x, hw, stride, "1D_AVG", 0.0), x[:, ::step])


def test_pooling_equals_torch_pooling_on_divisible_sizes():
    x = rand(2, 6 * 8, 3)
    grid = x.view(2, 6, 8, 3).permute(0, 3, 1, 2)
    for kind, fn in (("AVG", F.avg_pool2d), ("MAX", F.max_pool2d)):
        expected = fn(grid, (2, 2), stride=(2, 2)).permute(0, 2, 3, 1).reshape(2, -1, 3)
        assert torch.equal(S.reduce_tokens(x, (6, 8), 4.0, f"2D_{kind}", 1.0), expected)
    seq = x.transpose(1, 2)
    for kind, fn in (("AVG", F.avg_pool1d), ("MAX", F.max_pool1d)):
        expected = fn(seq, 4, stride=4).transpose(1, 2)
        assert torch.equal(S.reduce_tokens(x, (6, 8), 4.0, f"1D_{kind}", 1.0), expected)


def explicit_pool(x, hw, sy, sx, reduce):
    """Window-by-window reference: every window clipped to the map, reduced over its real tokens."""
    h, w = hw
    g = x.view(x.shape[0], h, w, x.shape[2])
    rows = []
    for i in range(0, h, sy):
        for j in range(0, w, sx):
            win = g[:, i:i + sy, j:j + sx].reshape(x.shape[0], -1, x.shape[2])
            rows.append(reduce(win))
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("hw", [(7, 5), (5, 9), (1, 11)])
@pytest.mark.parametrize("stride", [3.0, 4.5, 10.0])
def test_pooling_on_odd_sizes_covers_partial_windows(hw, stride):
    x = rand(2, hw[0] * hw[1], 3, seed=1)
    sy = min(S.grid_2d(stride)[0], hw[0])                     # the column step from the clamped row step
    sx = min(math.ceil(stride / sy), hw[1])
    mean = explicit_pool(x, hw, sy, sx, lambda t: t.mean(1))
    top = explicit_pool(x, hw, sy, sx, lambda t: t.amax(1))
    assert torch.allclose(S.reduce_tokens(x, hw, stride, "2D_AVG", 1.0), mean, rtol=0, atol=1e-12)
    assert torch.equal(S.reduce_tokens(x, hw, stride, "2D_MAX", 1.0), top)
    step = S.grid_1d(stride)
    n = hw[0] * hw[1]
    mean1 = explicit_pool(x, (1, n), 1, step, lambda t: t.mean(1))
    assert torch.allclose(S.reduce_tokens(x, hw, stride, "1D_AVG", 1.0), mean1, rtol=0, atol=1e-12)
    # one and pool have the same count, so every blend is defined
    assert S.reduce_tokens(x, hw, stride, "2D_AVG", 0.0).shape == mean.shape


@pytest.mark.parametrize("mode", S.MODES)
def test_blend_is_lerp_from_sample_to_pool(mode):
    x = rand(1, 7 * 6, 4, seed=2)
    one = S.reduce_tokens(x, (7, 6), 4.0, mode, 0.0)
    pool = S.reduce_tokens(x, (7, 6), 4.0, mode, 1.0)
    assert not torch.allclose(one, pool)
    mix = S.reduce_tokens(x, (7, 6), 4.0, mode, 0.25)
    assert torch.allclose(mix, 0.75 * one + 0.25 * pool, rtol=0, atol=1e-12)
    k, v = S.slothful_kv(x, (7, 6), 4.0, mode, 0.0, 1.0)
    assert torch.equal(k, one) and torch.equal(v, pool)
    k, v = S.slothful_kv(x, (7, 6), 4.0, mode, 0.5, 0.5)
    assert k is v


def test_bad_arguments_are_named():
    x = rand(1, 12, 2)
    with pytest.raises(ValueError, match="1D_AVG, 1D_MAX, 2D_AVG, 2D_MAX"):
        S.reduce_tokens(x, (3, 4), 4.0, "2D_MEAN")
    with pytest.raises(ValueError, match="blend"):
        S.reduce_tokens(x, (3, 4), 4.0, "2D_AVG", -0.1)
    with pytest.raises(ValueError, match="3x5"):
        S.reduce_tokens(x, (3, 5), 4.0, "2D_AVG")


def piecewise_constant(b, hw, block, c, seed):
    """A map constant on every block[0] x block[1] cell (sizes divisible)."""
    h, w = hw
    cells = rand(b, h // block[0], w // block[1], c, seed=seed)
    return cells.repeat_interleave(block[0], 1).repeat_interleave(block[1], 2).reshape(b, h * w, c)


@pytest.mark.parametrize("mode", S.MODES)
@pytest.mark.parametrize("blend", [0.0, 0.4, 1.0])
def test_reduced_attention_equals_full_attention_on_piecewise_constant_maps(mode, blend):
    # Every key is repeated equally often, so dropping the repeats leaves the softmax average unchanged.
    hw, stride, heads = (12, 12), 6.0, 2
    block = (1, S.grid_1d(stride)) if mode.startswith("1D") else S.grid_2d(stride)
    k = piecewise_constant(2, hw, block, 8, seed=3)
    v = piecewise_constant(2, hw, block, 8, seed=4)
    q = rand(2, 144, 8, seed=5)
    k_r, v_r = S.reduce_tokens(k, hw, stride, mode, blend), S.reduce_tokens(v, hw, stride, mode, blend)
    assert k_r.shape[1] < k.shape[1]
    assert torch.allclose(attention(q, k_r, v_r, heads), attention(q, k, v, heads), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", S.MODES)
def test_masked_reduction_ignores_padding(mode):
    hw, stride = (5, 6), 4.0
    x = rand(3 * 2, 30, 3, seed=6)                  # batch 3 x 2 validity rows
    valid = torch.ones(2, 5, 6, dtype=torch.bool)
    valid[0, 0, :] = False                           # row 0 of tile 0 is padding
    valid[1, :, 5] = False                           # last column of tile 1 is padding
    valid = valid.view(2, 30)
    red, red_valid = S.reduce_tokens_masked(x, hw, stride, mode, 1.0, valid)
    (gh, gw), sy, sx = S.reduction_grid(hw, stride, mode)
    assert torch.equal(red_valid, valid.view(2, gh, gw)[:, ::sy, ::sx].reshape(2, -1))
    g = x.view(6, gh, gw, 3)
    vg = valid.view(2, gh, gw)
    out = red.view(6, -1, 3)
    idx = 0
    for i in range(0, gh, sy):
        for j in range(0, gw, sx):
            for row in range(6):
                m = vg[row % 2, i:i + sy, j:j + sx]
                vals = g[row, i:i + sy, j:j + sx][m]
                if not red_valid[row % 2, idx]:
                    assert torch.equal(out[row, idx], torch.zeros(3, dtype=torch.float64))
                    continue
                want = vals.mean(0) if mode.endswith("AVG") else vals.amax(0)
                assert torch.allclose(out[row, idx], want, rtol=0, atol=1e-12)
            idx += 1
    # all-valid masks give exactly the unmasked reduction
    full = torch.ones(2, 30, dtype=torch.bool)
    plain = S.reduce_tokens(x, hw, stride, mode, 1.0)
    assert torch.allclose(S.reduce_tokens_masked(x, hw, stride, mode, 1.0, full)[0], plain, rtol=0, atol=1e-12)
