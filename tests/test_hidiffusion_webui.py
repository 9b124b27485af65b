"""HiDiffusion in the WebUI stand-in (Forge main and reForge, SD1.5-like and SDXL-like): every preset at odd
sizes with the attention grids each layer really sees (probe replace from the test extension of
tests/test_slothful_webui.py), the infotext, advanced-mode validation, time windows, seeded MSW-MSA shifts,
off after on, hires fix, the reForge upscale note and ControlNet."""


import pytest
import torch

from lib_omost.features import hidiffusion
from lib_omost.unet.raunet import DOWNSAMPLE_PAIRS, INPUT_BLOCKS, PRESETS
from tests.standin import harness
from tests.test_slothful_webui import (
    HELPER,
    ROOT,
    feature_args,
    generate,
    model_facts,
    probe_run,
    ui,  # noqa: F401  (the module-scoped WebUI fixture, one per flavour)
)

TITLE = "HiDiffusion"


@pytest.fixture(autouse=True)
def fresh(ui):
    from modules import errors
    errors.clear()
    ui.helper.STATE.update(probe=False, noise_seed=None, controlnet=False)
    ui.helper.LOG.clear()
    yield


def hidiff(ui, **values):
    return feature_args(ui, hidiffusion=values)


def halve(hw, times=1):
    for _ in range(times):
        hw = ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
    return hw


def expected_grids(family, latent_hw, raunet_in=None, ca_in=None):
    """{(block, number): (h, w)} of every attention block: stock ceil-halving Downsamples, RAU-Net keeping the
    even rows/columns after input block raunet_in - 1 (after its skip), CA pooling by 2 after input block
    ca_in (before its skip). Output block j sees the size of the skip it pops (input N - 1 - j)."""
    size, skips, grids = latent_hw, [], {}
    n = INPUT_BLOCKS[family]
    for k in range(n):
        grids[("input", k)] = size
        if k in DOWNSAMPLE_PAIRS[family]:
            size = halve(size)
        if k == ca_in:
            size = halve(size)
        skips.append(size)
        if raunet_in is not None and k == raunet_in - 1:
            size = halve(size)
    grids[("middle", 0)] = size
    for j in range(n):
        grids[("output", j)] = skips[n - 1 - j]
    return grids


def preset_line(family, mode, msw="0.2-1"):
    chosen = PRESETS[(family, mode)]
    parts = []
    if chosen.raunet:
        parts.append(f"RAU-Net input {chosen.raunet[0]}/output {chosen.raunet[1]} "
                     f"{chosen.raunet_window.start:g}-{chosen.raunet_window.end:g} (nearest)")
    if chosen.ca:
        start, end = chosen.ca_window
        parts.append(f"CA input {chosen.ca[0]}/output {chosen.ca[1]} {start:g}-{end:g}")
    return "; ".join(parts + [f"MSW-MSA {msw}"])


def infotext_value(result, key):
    from modules import infotext_utils
    return infotext_utils.parse_generation_parameters(result.infotexts[0])[key]


def msw_layers(family):
    blocks = hidiffusion.msw_blocks(family)
    return {layer for layer in model_facts(family)["channels"] if layer[:2] in blocks}


# (width, height) -> resolution modes run at that size ("auto" is "low" at these sizes)
SIZES = {"forge": {(200, 136): ("low", "high", "ultra", "auto"), (136, 200): ("low", "high", "ultra")},
         "reforge": {(72, 56): ("low", "high", "ultra", "auto")}}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_preset_at_odd_sizes_gives_the_preset_grids_and_names_them(ui, family):
    """First step (inside every preset window, MSW-MSA not yet): each layer sees the grid the preset makes;
    last step (RAU-Net/CA over, MSW-MSA on): stock grids, and the MSW-MSA layers never reach the inner
    attention. Latent sizes 25 x 17, 17 x 25 (Forge), 9 x 7 (reForge): odd, not multiples of 64 px."""
    for (width, height), modes in SIZES[ui.flavour].items():
        latent = (height // 8, width // 8)
        for mode in modes:
            result, log = probe_run(ui, family, hidiff(ui, resolution=mode), width=width, height=height, cfg_scale=1)
            assert result.latents.shape == (1, 4, *latent) and torch.isfinite(result.latents).all()
            chosen = PRESETS[(family, "low" if mode == "auto" else mode)]
            active = expected_grids(family, latent, chosen.raunet and chosen.raunet[0], chosen.ca and chosen.ca[0])
            stock = expected_grids(family, latent)
            first, last = max(e["sigma"] for e in log), min(e["sigma"] for e in log)
            firsts = {e["layer"]: e["q"] for e in log if e["sigma"] == first}
            lasts = {e["layer"]: e["q"] for e in log if e["sigma"] == last}
            assert firsts == {layer: h * w for layer in model_facts(family)["channels"]
                              for h, w in [active[layer[:2]]]}, (width, height, mode)
            assert lasts == {layer: h * w for layer in set(model_facts(family)["channels"]) - msw_layers(family)
                             for h, w in [stock[layer[:2]]]}, (width, height, mode)
            applied = result.extra_generation_params["HiDiffusion applied"]
            assert applied == preset_line(family, "low" if mode == "auto" else mode), applied
            assert infotext_value(result, "HiDiffusion applied") == applied
    assert harness.reported_errors() == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_an_invalid_advanced_pair_names_the_valid_pairs_and_changes_nothing(ui, family):
    off = generate(ui, family).latents
    result = generate(ui, family, hidiff(ui, mode="Advanced", raunet_in=4, raunet_out=7))
    note = result.extra_generation_params["HiDiffusion note"]
    pairs = ", ".join(f"input {a} / output {b}" for a, b in sorted(DOWNSAMPLE_PAIRS[family].items()))
    assert note == (f"RAU-Net (Downsample/Upsample) blocks (4, 7) are not a pair of this {family} model; "
                    f"valid pairs: {pairs}; HiDiffusion did not run")
    assert "HiDiffusion applied" not in result.extra_generation_params
    assert torch.equal(result.latents, off)
    result = generate(ui, family, hidiff(ui, mode="Advanced", ca_start=0.6, ca_end=0.3))
    assert result.extra_generation_params["HiDiffusion note"].startswith("CA start 0.6 is after its end 0.3")
    assert torch.equal(result.latents, off)
    assert harness.reported_errors() == []


ADVANCED_ALL = dict(mode="Advanced", raunet=True, ca=True, msw_msa=True)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_a_window_without_any_step_is_bit_identical_to_off_with_the_patches_installed(ui, family):
    """Two steps sample at 0 % and 100 %: windows 0.3-0.6 exclude both."""
    size = dict(width=72, height=56)
    off = generate(ui, family, **size).latents
    args = hidiff(ui, **ADVANCED_ALL, raunet_start=0.3, raunet_end=0.6, ca_start=0.3, ca_end=0.6,
                  msw_start=0.3, msw_end=0.6)
    with harness.record_unet_calls() as calls:
        result = generate(ui, family, args, **size)
    assert torch.equal(result.latents, off)
    for call in calls:
        patches = call.transformer_options["patches"]
        assert len(patches["input_block_patch_after_skip"]) == len(patches["input_block_patch"]) == 1
        assert len(patches["output_block_patch"]) == 1
        replaced = {key[:2] for key in call.transformer_options["patches_replace"]["attn1"]}
        assert replaced == hidiffusion.msw_blocks(family)
    assert harness.reported_errors() == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_percent_windows_are_inclusive_at_both_ends(ui, family):
    """Three steps sample at exactly 0 %, 50 % and 100 % of the schedule; RAU-Net on one window edge or both."""
    runs = {(0.5, 0.5): [False, True, False], (0.0, 0.5): [True, True, False], (0.5, 1.0): [False, True, True]}
    for (start, end), expected in runs.items():
        args = hidiff(ui, mode="Advanced", raunet_start=start, raunet_end=end, ca=False, msw_msa=False)
        _, log = probe_run(ui, family, args, steps=3, width=72, height=56, cfg_scale=1)
        schedule = harness.schedule(harness.unet_patcher())
        sigmas = sorted({e["sigma"] for e in log}, reverse=True)
        assert sigmas == [float(s) for s in schedule.automatic_sigmas(3)[:3]]
        assert schedule.percent_to_sigma(0.5) == sigmas[1]       # the window edge is exactly a step's sigma
        deep = ("input", 4, 0)                   # the first attention after RAU-Net's Downsample (both families)
        h, w = expected_grids(family, (7, 9))[deep[:2]]
        reduced = [e["q"] < h * w for sigma in sigmas for e in log if e["layer"] == deep and e["sigma"] == sigma]
        assert reduced == expected, (start, end)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_msw_msa_shifts_are_reproducible_from_the_seed(ui, family, monkeypatch):
    """17 x 17 latents: the MSW-MSA layers' windows are at least 5 x 5 tokens, so shifts of k * (5 // 4) move them."""
    shifts = []
    real = hidiffusion.draw_shift
    monkeypatch.setattr(hidiffusion, "draw_shift",
                        lambda g, previous=None: shifts.append(real(g, previous)) or shifts[-1])
    ui.helper.STATE["noise_seed"] = 3                                     # one starting noise for every seed
    args = hidiff(ui, msw_start=0.0, msw_end=1.0, resolution="low")
    runs = []
    for seed in (1, 1, 2):
        shifts.clear()
        latents = generate(ui, family, args, seed=seed, width=136, height=136).latents
        runs.append((latents, list(shifts)))
    assert len(runs[0][1]) == 2 * len(msw_layers(family))                # one draw per layer and step
    assert all(a != b for a, b in zip(runs[0][1], runs[0][1][len(msw_layers(family)):]))   # never the same twice
    assert runs[0][1] == runs[1][1] and torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] != runs[2][1] and not torch.equal(runs[0][0], runs[2][0])


def test_disabling_after_an_enabled_generation_leaves_the_unet_as_never_enabled(ui):
    for family in ("sd15", "sdxl"):
        size = dict(width=72, height=56)
        model = harness.load_model(family)
        diffusion_model = model.forge_objects_original.unet.model.diffusion_model
        weights = {k: v.clone() for k, v in diffusion_model.state_dict().items()}
        never = generate(ui, family, **size).latents
        on = generate(ui, family, hidiff(ui, resolution="ultra", msw_start=0.0), **size).latents
        assert not torch.equal(on, never)
        again = generate(ui, family, **size)
        assert torch.equal(again.latents, never)
        assert "HiDiffusion applied" not in again.extra_generation_params
        assert all(torch.equal(v, weights[k]) for k, v in diffusion_model.state_dict().items())
        assert not [m for m in diffusion_model.modules() if "forward" in vars(m)]        # nothing monkeypatched
        for source in (model.forge_objects_original, model.forge_objects_after_applying_lora):
            assert source.unet.model_options == {"transformer_options": {}}
    assert harness.reported_errors() == []


@pytest.mark.parametrize("hires_pass", [True, False])
def test_hires_fix_with_and_without_the_hires_pass(ui, hires_pass):
    args = hidiff(ui, resolution="low", hires_pass=hires_pass)
    result, log = probe_run(ui, "sd15", args, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                            width=72, height=56)
    hires = [e for e in log if e["hr"]]
    assert hires and {e["latent"] for e in hires} == {(14, 18)}
    schedule = harness.schedule(harness.unet_patcher())
    raunet_until = schedule.percent_to_sigma(PRESETS[("sd15", "low")].raunet_window.end)
    msw_from = schedule.percent_to_sigma(0.2)
    active = expected_grids("sd15", (14, 18), raunet_in=3)
    stock = expected_grids("sd15", (14, 18))
    for sigma in {e["sigma"] for e in hires}:
        seen = {e["layer"]: e["q"] for e in hires if e["sigma"] == sigma}
        grids = active if hires_pass and sigma >= raunet_until else stock
        skipped = msw_layers("sd15") if hires_pass and sigma <= msw_from else set()
        assert seen == {layer: h * w for layer in set(model_facts("sd15")["channels"]) - skipped
                        for h, w in [grids[layer[:2]]]}, sigma
    assert hires_pass == any(e["q"] < stock[e["layer"][:2]][0] * stock[e["layer"][:2]][1] for e in hires)
    params = result.extra_generation_params
    assert params["HiDiffusion applied"] == preset_line("sd15", "low")
    assert params["HiDiffusion applied (hires pass)"] == (preset_line("sd15", "low") if hires_pass
                                                          else "nothing (Apply in hires pass is off)")
    assert harness.reported_errors() == []


def test_auto_resolution_of_the_hires_pass_follows_its_own_size(ui, monkeypatch):
    """With a native side of 64 px (patched), a 64 x 64 first pass is "low" and its 2x hires pass "high"."""
    monkeypatch.setitem(hidiffusion.NATIVE_SIDE, "sd15", 64)
    result = generate(ui, "sd15", hidiff(ui), enable_hr=True, hr_scale=2, hr_second_pass_steps=1)
    assert result.extra_generation_params["HiDiffusion applied"] == preset_line("sd15", "low")
    assert result.extra_generation_params["HiDiffusion applied (hires pass)"] == preset_line("sd15", "high")


def test_upscale_mode_on_forge_and_the_nearest_note_on_reforge(ui, monkeypatch):
    resized = []
    real = hidiffusion.resize_to
    monkeypatch.setattr(hidiffusion, "resize_to",
                        lambda x, hw, mode="bicubic": resized.append((x.shape[-2:], hw, mode)) or real(x, hw, mode))
    common = dict(mode="Advanced", ca_in=1, ca_out=11, raunet_end=1.0, ca_end=1.0, msw_msa=False)
    size = dict(width=136, height=72)
    nearest = generate(ui, "sd15", hidiff(ui, **common, upscale_mode="nearest"), **size).latents
    resized.clear()
    result = generate(ui, "sd15", hidiff(ui, **common, upscale_mode="bicubic"), **size)
    applied = result.extra_generation_params["HiDiffusion applied"]
    if ui.flavour == "forge":
        assert "HiDiffusion note" not in result.extra_generation_params
        assert applied.startswith("RAU-Net input 3/output 8 0-1 (bicubic)")
        assert not torch.equal(result.latents, nearest)
        # resized to the skip really stored before the Downsample: 9 x 17 pooled by CA at block 1 -> 5 x 9
        assert resized and all(tuple(hw) == (5, 9) and mode == "bicubic" for _, hw, mode in resized)
    else:
        assert result.extra_generation_params["HiDiffusion note"] == (
            "reForge has no hook before the Upsample: the paired Upsample resizes with nearest, not bicubic")
        assert applied.startswith("RAU-Net input 3/output 8 0-1 (nearest)")
        assert torch.equal(result.latents, nearest) and resized == []
    assert harness.reported_errors() == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_controlnet_skips_raunet_and_ca_with_a_message(ui, family):
    ui.helper.STATE["controlnet"] = True
    size = dict(width=72, height=56, cfg_scale=1)
    result, log = probe_run(ui, family, hidiff(ui, resolution="ultra", msw_start=0.5), **size)
    only_msw = generate(ui, family, hidiff(ui, mode="Advanced", raunet=False, ca=False, msw_start=0.5), **size)
    assert result.extra_generation_params["HiDiffusion note"] == (
        "ControlNet is active: its residuals have the normal UNet sizes, so RAU-Net and CA are skipped for this "
        "generation (MSW-MSA still runs)")
    assert result.extra_generation_params["HiDiffusion applied"] == "MSW-MSA 0.5-1"
    stock = expected_grids(family, (7, 9))
    first, last = max(e["sigma"] for e in log), min(e["sigma"] for e in log)
    assert all(e["q"] == stock[e["layer"][:2]][0] * stock[e["layer"][:2]][1] for e in log)
    assert {e["layer"] for e in log if e["sigma"] == first} == set(model_facts(family)["channels"])
    layers = set(model_facts(family)["channels"])
    assert {e["layer"] for e in log if e["sigma"] == last} == layers - msw_layers(family)
    assert torch.equal(result.latents, only_msw.latents)
    nothing = generate(ui, family, hidiff(ui, resolution="ultra", msw_msa=False), **size)
    assert nothing.extra_generation_params["HiDiffusion applied"] == (
        "nothing (RAU-Net and CA skipped because ControlNet is active)")
    assert harness.reported_errors() == []
