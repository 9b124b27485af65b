"""RAU-Net: dilated-conv equality, resizes, CA pooling, pair tables, presets, time windows, skip shapes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_omost.attention.core import halve_ceil
from lib_omost.unet import raunet as R

SIZES = [(8, 8), (9, 9), (16, 12), (17, 25), (13, 6), (5, 3)]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def stock_conv(c_in, c_out, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, dtype=torch.float64)


# --- the downsample --------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", SIZES)
def test_subsample_then_stock_conv_equals_stride4_dilation2_conv(hw):
    conv = stock_conv(3, 4)
    x = rand(2, 3, *hw)
    dilated = F.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2)
    out = R.raunet_downsample(x, conv)
    assert out.shape == dilated.shape
    assert out.shape[-2:] == (halve_ceil(hw[0], 2), halve_ceil(hw[1], 2))
    assert torch.allclose(out, dilated, rtol=0, atol=1e-12)


def test_keep_even_takes_rows_and_columns_0_2_4():
    x = torch.arange(35.0).view(1, 1, 5, 7)
    assert torch.equal(R.keep_even(x), x[:, :, [0, 2, 4]][:, :, :, [0, 2, 4, 6]])


# --- resizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", R.UPSCALE_MODES)
@pytest.mark.parametrize("skip", [(16, 16), (17, 25), (9, 4)])
def test_resize_matches_the_skip_size(mode, skip):
    x = rand(1, 2, halve_ceil(skip[0], 2), halve_ceil(skip[1], 2))
    assert R.resize_to(x, skip, mode).shape[-2:] == skip
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
    assert R.raunet_upsample(x, skip, conv, mode).shape == (1, 3, *skip)


def test_nearest_resize_by_four_repeats_pixels():
    x = rand(1, 2, 3, 5)
    expected = x.repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert torch.equal(R.resize_to(x, (12, 20), "nearest"), expected)
    assert R.resize_to(x, (3, 5), "bicubic") is x


def test_unknown_resize_mode_is_named():
    with pytest.raises(ValueError, match="nearest, bilinear, bicubic, area"):
        R.resize_to(rand(1, 1, 4, 4), (8, 8), "lanczos")


@pytest.mark.parametrize("hw", SIZES)
def test_ca_avg_pool_rounds_up_and_averages_real_pixels(hw):
    x = rand(1, 2, *hw, seed=3)
    out = R.ca_downsample(x)
    assert out.shape[-2:] == (halve_ceil(hw[0], 1), halve_ceil(hw[1], 1))
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            want = x[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((-2, -1))
            assert torch.allclose(out[..., i, j], want, rtol=0, atol=1e-12)
    if hw[0] % 2 == 0 and hw[1] % 2 == 0:
        assert torch.equal(out, F.avg_pool2d(x, 2))


def test_ca_resize_modes_and_factor_checks():
    x = rand(1, 2, 17, 25)
    for mode in R.UPSCALE_MODES:
        assert R.ca_downsample(x, 2.0, mode).shape[-2:] == (9, 13)
    assert R.ca_downsample(x, 1.5, "bicubic").shape[-2:] == (12, 17)
    with pytest.raises(ValueError, match="whole"):
        R.ca_downsample(x, 1.5, "avg_pool")
    with pytest.raises(ValueError, match="avg_pool"):
        R.ca_downsample(x, 2.0, "max")
    assert R.ca_upsample(R.ca_downsample(x), (17, 25), "nearest").shape[-2:] == (17, 25)


# --- tables ----------------------------------------------------------------------------------------

def test_pair_tables():
    assert R.valid_pairs("sd15", "raunet") == [(3, 8), (6, 5), (9, 2)]
    assert R.valid_pairs("sdxl", "raunet") == [(3, 5), (6, 2)]
    for family, n in R.INPUT_BLOCKS.items():
        for block_in, block_out in R.valid_pairs(family, "ca"):
            assert block_out == n - block_in
    for family, pair in (("sd15", (4, 8)), ("sd15", (1, 11)), ("sdxl", (4, 5)), ("sdxl", (2, 7))):
        assert pair in R.valid_pairs(family, "ca")
    assert (3, 9) not in R.valid_pairs("sd15", "ca")           # a Downsample block is not a CA block


def test_validate_pair_names_the_valid_pairs():
    assert R.validate_pair("sd15", "raunet", ("3", 8)) == (3, 8)
    with pytest.raises(ValueError) as err:
        R.validate_pair("sdxl", "raunet", (3, 8))
    assert "input 3 / output 5" in str(err.value) and "input 6 / output 2" in str(err.value)
    with pytest.raises(ValueError, match="input 4 / output 8"):
        R.validate_pair("sd15", "ca", (4, 7))
    with pytest.raises(ValueError, match="sd15, sdxl"):
        R.validate_pair("flux", "raunet", (3, 8))
    with pytest.raises(ValueError, match="raunet, ca"):
        R.valid_pairs("sd15", "deep_shrink")


def test_presets_match_the_design_table_and_use_valid_pairs():
    assert R.preset("sd15", "low") == R.Preset((3, 8), (0.0, 0.4), None, None)
    assert R.preset("sd15", "high") == R.Preset((3, 8), (0.0, 0.5), (1, 11), (0.0, 0.35))
    assert R.preset("sd15", "ultra") == R.Preset((3, 8), (0.0, 0.6), (1, 11), (0.0, 0.45))
    assert R.preset("sdxl", "low") == R.Preset(None, None, None, None)
    assert R.preset("sdxl", "high") == R.Preset(None, None, (4, 5), (0.0, 0.5))
    assert R.preset("sdxl", "ultra") == R.Preset((3, 5), (0.0, 0.45), (4, 5), (0.0, 0.6))
    for (family, _), p in R.PRESETS.items():
        if p.raunet:
            R.validate_pair(family, "raunet", p.raunet)
        if p.ca:
            R.validate_pair(family, "ca", p.ca)
        assert (p.raunet is None) == (p.raunet_window is None) and (p.ca is None) == (p.ca_window is None)
    R.validate_pair("sd15", "raunet", R.ADVANCED_DEFAULTS["raunet"])
    R.validate_pair("sd15", "ca", R.ADVANCED_DEFAULTS["ca"])
    with pytest.raises(ValueError, match="low, high, ultra"):
        R.preset("sd15", "max")


# --- time windows ----------------------------------------------------------------------------------

def percent_to_sigma(p):
    return 14.6 * (1 - p) + 0.03 * p                  # any decreasing map stands in for the model's


def test_sigma_window_is_inclusive_at_both_ends():
    start, end = R.sigma_window(R.Window(0.0, 0.4), percent_to_sigma)
    assert (start, end) == (percent_to_sigma(0.0), percent_to_sigma(0.4))
    assert R.in_sigma_window(start, start, end) and R.in_sigma_window(end, start, end)
    assert R.in_sigma_window((start + end) / 2, start, end)
    eps = 1e-9
    assert not R.in_sigma_window(end - eps, start, end)
    assert not R.in_sigma_window(start + eps, start, end)
    with pytest.raises(ValueError, match="start <= end"):
        R.sigma_window(R.Window(0.5, 0.2), percent_to_sigma)


def test_step_window_follows_the_original_step_fraction():
    assert [s for s in range(20) if R.in_step_window(s, 20, 0.4)] == list(range(8))
    assert [s for s in range(10) if R.in_step_window(s, 10, 0.7)] == list(range(7))
    assert [s for s in range(10) if R.in_step_window(s, 10, 0.3)] == list(range(3))
    assert not any(R.in_step_window(s, 30, 0.0) for s in range(30))
    # SDXL "aggressive": CA after the first 8/50 steps until 0.4
    assert [s for s in range(50) if R.in_step_window(s, 50, 0.4, start_ratio=8 / 50)] == list(range(8, 20))


# --- skip-compatible shapes through a UNet skeleton ------------------------------------------------

# (input blocks, Downsample input blocks, output blocks ending with an Upsample): Forge's layout.
LAYOUT = {"sd15": (12, (3, 6, 9), (2, 5, 8)), "sdxl": (9, (3, 6), (2, 5))}


def run_skeleton(family, hw, raunet=None, ca=None, mode="bicubic"):
    """Shapes only: identity blocks, stock stride-2 downsamples, skip concats (torch.cat fails on a size
    mismatch) and Upsamples to the next skip's size, as the WebUI's UNet forward does."""
    n, downs, ups = LAYOUT[family]
    down, up = stock_conv(1, 1), nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64)
    h, hs = rand(1, 1, *hw), []
    for i in range(n):
        if i in downs:
            h = R.raunet_downsample(h, down) if raunet and raunet[0] == i else down(h)
        if ca and ca[0] == i:
            h = R.ca_downsample(h)
        hs.append(h)
    for j in range(n):
        skip = hs.pop()
        if ca and ca[1] == j:
            h = R.ca_upsample(h, skip.shape[-2:])
        h = torch.cat([h, skip], 1).sum(1, keepdim=True)
        if j in ups:
            target = hs[-1].shape[-2:]
            if raunet and raunet[1] == j:
                h = R.raunet_upsample(h, target, up, mode)
            else:
                h = up(F.interpolate(h, size=target, mode="nearest"))
    return h


@pytest.mark.parametrize("family", R.FAMILIES)
@pytest.mark.parametrize("hw", [(64, 64), (17, 25), (21, 13), (96, 80)])
def test_every_preset_gives_skip_compatible_shapes(family, hw):
    for mode in R.RESOLUTION_MODES:
        p = R.preset(family, mode)
        assert run_skeleton(family, hw, p.raunet, p.ca).shape[-2:] == hw


@pytest.mark.parametrize("family", R.FAMILIES)
def test_every_valid_pair_combination_gives_skip_compatible_shapes(family):
    for hw in ((33, 47), (40, 40)):
        for raunet in [None, *R.valid_pairs(family, "raunet")]:
            for ca in [None, *R.valid_pairs(family, "ca")]:
                assert run_skeleton(family, hw, raunet, ca, "nearest").shape[-2:] == hw, (raunet, ca)


def test_a_wrong_ca_pair_breaks_the_skip_concat():
    with pytest.raises(RuntimeError):
        run_skeleton("sd15", (40, 40), None, (4, 7))
    with pytest.raises(RuntimeError):
        run_skeleton("sdxl", (40, 40), None, (4, 4))
