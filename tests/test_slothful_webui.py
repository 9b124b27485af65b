"""Slothful / Near-sighted attention in the WebUI stand-in (Forge main and reForge, SD1.5-like and SDXL-like):
what reaches the attention of every layer, observed by a foreign attn1 replace that a test extension installs
before ours (the AttentionPlan wraps it as its inner attention)."""

import math
import os
import textwrap

import pytest
import torch

from lib_omost.attention.core import layer_hw
from lib_omost.attention.slothful import reduction_grid, slothful_stride
from lib_omost.features import hidiffusion, omost, refdrop, slothful
from lib_omost.forge.pass_plan import PLAN_LINE
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A test-only extension, loaded before ours (tests/test_hidiffusion_webui.py uses it too): a probe replace on
# every attn1 layer (recording what it gets), fixed noise (so that two seeds can share one starting noise),
# and a stand-in for an active ControlNet (a non-empty controlnet_linked_list on the patcher).
HELPER = textwrap.dedent('''
    import torch
    from modules import scripts
    from lib_omost.forge.webui import attention_function, attention_layers

    STATE = {"probe": False, "noise_seed": None, "controlnet": False}
    LOG = []


    class TestHelper(scripts.Script):
        sorting_priority = -100

        def title(self):
            return "Test helper"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            if STATE["noise_seed"] is not None:
                shape = kwargs["noise"].shape
                p.modified_noise = torch.randn(shape, generator=torch.Generator().manual_seed(STATE["noise_seed"]))
            if not (STATE["probe"] or STATE["controlnet"]):
                return
            unet = p.sd_model.forge_objects.unet.clone()
            p.sd_model.forge_objects.unet = unet
            if STATE["controlnet"]:
                unet.controlnet_linked_list = object()
            if not STATE["probe"]:
                return
            attention = attention_function()

            def probe(q, k, v, extra_options):
                block = extra_options["block"]
                LOG.append({"layer": (block[0], int(block[1]), int(extra_options.get("block_index", 0))),
                            "q": q.shape[1], "k": k.shape[1], "sigma": float(extra_options["sigmas"].max()),
                            "latent": tuple(extra_options["original_shape"][-2:]), "hr": bool(p.is_hr_pass)})
                return attention(q, k, v, extra_options["n_heads"], extra_options)
            for layer in attention_layers(unet):
                unet.set_model_attn1_replace(probe, layer.block, layer.number, layer.index)
''')


@pytest.fixture(scope="module", params=harness.FLAVOURS)
def ui(request, tmp_path_factory):
    ext = tmp_path_factory.mktemp("helper_ext")
    (ext / "scripts").mkdir()
    (ext / "scripts" / "helper.py").write_text(HELPER)
    with harness.use_flavour(request.param):
        webui = harness.start_webui([str(ext), ROOT])
        webui.flavour = request.param
        webui.helper = next(d.module for d in webui.scripts.scripts_data if d.script_class.__name__ == "TestHelper")
        yield webui


@pytest.fixture(autouse=True)
def fresh(request):
    if "ui" in request.fixturenames:
        webui = request.getfixturevalue("ui")
        from modules import errors
        errors.clear()
        webui.helper.STATE.update(probe=False, noise_seed=None, controlnet=False)
        webui.helper.LOG.clear()
    yield


def feature_args(ui, **features):
    """UI default args with the given accordions enabled: feature module -> {param: value}."""
    modules = {"slothful": slothful, "hidiffusion": hidiffusion, "refdrop": refdrop, "omost": omost}
    args = ui.ui_defaults()
    for key, overrides in features.items():
        feature = modules[key].FEATURE
        values = {**feature.defaults(), "enabled": True, **overrides}
        script = ui.script(feature.title)
        args[script.args_from:script.args_to] = [values[name] for name in feature.arg_names]
    return args


def generate(ui, family, args=None, **kwargs):
    harness.load_model(family)
    kwargs = {"prompt": "a cat", "cfg_scale": 5, **kwargs}
    return ui.txt2img(script_args=args, **kwargs)


def probe_run(ui, family, args, **kwargs):
    ui.helper.STATE["probe"] = True
    ui.helper.LOG.clear()
    result = generate(ui, family, args, **kwargs)
    ui.helper.STATE["probe"] = False
    return result, list(ui.helper.LOG)


def expected_k(entry, side: dict, *, channels: dict, model_channels: int, sdxl: bool, timestep, peak=0.4, decay=2.0):
    """The K/V length Slothful must give one call (from the schedule formula, the model's timestep)."""
    if entry["layer"][0] == "middle":
        return entry["q"]
    hw = layer_hw(entry["latent"], entry["q"])
    t = float(timestep(torch.tensor([entry["sigma"]]))[0])
    stride = slothful_stride(side[entry["layer"][0]], t, channels[entry["layer"]], model_channels, sdxl=sdxl,
                             depth_decay=2.0, peak_time=peak, time_decay=decay)
    if stride <= 1:
        return entry["q"]
    (gh, gw), sy, sx = reduction_grid(hw, stride, "2D_AVG")
    return math.ceil(gh / sy) * math.ceil(gw / sx)


def model_facts(family):
    from lib_omost.forge.webui import attention_layers
    unet = harness.unet_patcher()
    layers = {tuple(k): c for k, c in attention_layers(unet).items()}
    return dict(channels=layers, model_channels=harness.model_channels(unet), sdxl=family == "sdxl",
                timestep=harness.schedule(unet).timestep)


SIZE = {"sd15": (136, 72), "sdxl": (264, 72)}     # first attention level 17 x 9 tokens: two 16-token tiles


def test_every_mode_changes_the_image_on_both_families(ui, monkeypatch):
    tiled = []
    real = slothful.tiled_attention
    monkeypatch.setattr(slothful, "tiled_attention", lambda *a, **k: tiled.append(a[4]) or real(*a, **k))
    for family in ("sd15", "sdxl"):
        width, height = SIZE[family]
        off = generate(ui, family, width=width, height=height, cfg_scale=1).latents
        for mode in (slothful.SLOTHFUL, slothful.TILE, slothful.NEAR_SIGHTED):
            tiled.clear()
            args = feature_args(ui, slothful=dict(mode=mode, tile_size=16, base_tile=16, peak_tile=16))
            result = generate(ui, family, args, width=width, height=height, cfg_scale=1)
            assert not torch.equal(result.latents, off), (family, mode)
            assert torch.isfinite(result.latents).all()
            assert ui.pasted_values(slothful.FEATURE, result.infotexts[0])["mode"] == mode
            # the tiled modes really tiled: first-level maps of this size, 16-token tiles
            assert bool(tiled) == (mode != slothful.SLOTHFUL), (family, mode)
            assert all(max(hw) > 16 for hw in tiled)
    assert harness.reported_errors() == []


def test_near_sighted_without_tiles_is_slothful_through_the_inner_attention(ui):
    """64 x 64 px: no map is larger than a 16-token tile, so Near-sighted attention only reduces K/V, exactly as
    Slothful does, and every call still reaches the inner attention (here the probe replace)."""
    side = dict(in_slothful=8.0, out_slothful=8.0, base_tile=16, peak_tile=16)
    for family in ("sd15", "sdxl"):
        sloth = generate(ui, family, feature_args(ui, slothful=dict(mode=slothful.SLOTHFUL, **side))).latents
        near, log = probe_run(ui, family, feature_args(ui, slothful=dict(mode=slothful.NEAR_SIGHTED, **side)))
        assert torch.equal(near.latents, sloth)
        facts = model_facts(family)
        assert {e["layer"] for e in log} == set(facts["channels"])
        assert all(e["k"] == expected_k(e, {"input": 8.0, "output": 8.0}, **facts) for e in log)
        assert any(e["k"] < e["q"] for e in log)
    assert harness.reported_errors() == []


def test_slothful_zero_everywhere_is_bit_identical_to_off(ui):
    for family in ("sd15", "sdxl"):
        off = generate(ui, family).latents
        args = feature_args(ui, slothful=dict(in_slothful=0.0, out_slothful=0.0))
        result, log = probe_run(ui, family, args)
        assert torch.equal(result.latents, off), family
        assert log and all(entry["k"] == entry["q"] for entry in log)
        assert "Slothful / Near-sighted attention Input slothful: 0" in result.infotexts[0]
    assert harness.reported_errors() == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_each_side_reduces_only_its_own_blocks_by_the_schedule(ui, family):
    for side in ({"input": 0.0, "output": 8.0}, {"input": 8.0, "output": 0.0}):
        args = feature_args(ui, slothful=dict(in_slothful=side["input"], out_slothful=side["output"]))
        _, log = probe_run(ui, family, args)
        facts = model_facts(family)
        assert {entry["layer"] for entry in log} == set(facts["channels"])       # every layer reached the probe
        for entry in log:
            assert entry["k"] == expected_k(entry, side, **facts), entry
        reduced = {entry["layer"][0] for entry in log if entry["k"] < entry["q"]}
        assert reduced == {block for block, value in side.items() if value}     # e.g. output only
    assert harness.reported_errors() == []


def test_middle_block_is_never_reduced(ui):
    """Even where the schedule would reduce it (slothful 50 on a middle grid of 2 x 3 or 2 x 2 tokens: the
    first step's stride, computed as for an input layer of the same width, shortens it)."""
    side = {"input": 50.0, "output": 50.0}
    for family, size in (("sd15", dict(width=136, height=72)), ("sdxl", {})):
        _, log = probe_run(ui, family, feature_args(ui, slothful=dict(in_slothful=50.0, out_slothful=50.0)), **size)
        facts = model_facts(family)
        assert all(entry["k"] == expected_k(entry, side, **facts) for entry in log)
        middle = [entry for entry in log if entry["layer"][0] == "middle"]
        assert middle and all(entry["k"] == entry["q"] for entry in middle)
        first = max(entry["sigma"] for entry in middle)
        for entry in middle:
            as_input = {**entry, "layer": ("input", *entry["layer"][1:])}
            widths = {**facts, "channels": {as_input["layer"]: facts["channels"][entry["layer"]]}}
            assert entry["sigma"] != first or expected_k(as_input, side, **widths) < entry["q"]


def test_the_timestep_comes_from_the_models_own_sigma_to_timestep(ui):
    """With the model's sigma -> timestep answering 600 (progress 0.4 = the peak), the stride is the full
    slothful value at every call: 9 on SD1.5's first level -> a 3 x 3 grid -> 8x8 tokens become 9.
    With the real schedule the same settings give 12 (first step) and 16 (last step)."""
    args = feature_args(ui, slothful=dict(in_slothful=9.0, out_slothful=9.0))
    _, real = probe_run(ui, "sd15", args)
    first_level = {(e["sigma"], e["k"]) for e in real if e["layer"] == ("input", 1, 0)}
    assert sorted(k for _, k in first_level) == [12, 16]
    schedule = harness.schedule(harness.unet_patcher())
    try:
        schedule.timestep = lambda sigma: torch.full_like(sigma, 600.0)
        _, peaked = probe_run(ui, "sd15", args)
    finally:
        del schedule.timestep
    facts = model_facts("sd15")
    facts["timestep"] = lambda sigma: torch.full_like(sigma, 600.0)
    assert {e["k"] for e in peaked if e["layer"] == ("input", 1, 0)} == {9}
    assert all(e["k"] == expected_k(e, {"input": 9.0, "output": 9.0}, **facts) for e in peaked)


def test_near_sighted_padding_offsets_follow_the_seed(ui):
    """Same starting noise, different seeds: only the padding offsets differ (17 x 9 tokens in two 16-token
    tiles of 9 rows need a padding row), so same seed -> identical, other seed -> different; without tiles
    the seed does not matter."""
    ui.helper.STATE["noise_seed"] = 7
    size = dict(width=136, height=72)
    plain = [generate(ui, "sd15", seed=seed, **size).latents for seed in (1, 2)]
    assert torch.equal(plain[0], plain[1])                        # the noise is fixed: seed alone changes nothing
    args = feature_args(ui, slothful=dict(mode=slothful.TILE, tile_size=16))
    first, again, other = (generate(ui, "sd15", args, seed=seed, **size).latents for seed in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, plain[0])
    assert harness.reported_errors() == []


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_msw_msa_takes_precedence_on_its_layers_and_the_infotext_says_so(ui, family, monkeypatch):
    """MSW-MSA active only on the last step (window 0.5-1): there it runs on its layers (the inner attention,
    our probe, is not called there; MSW-MSA's windows are), Slothful everywhere else and on the first step."""
    windows = []
    real = hidiffusion.msw_msa_attention
    monkeypatch.setattr(hidiffusion, "msw_msa_attention",
                        lambda q, k, v, heads, hw, shift: windows.append(hw) or real(q, k, v, heads, hw, shift))
    args = feature_args(ui, slothful=dict(in_slothful=8.0, out_slothful=8.0),
                        hidiffusion=dict(msw_start=0.5, msw_end=1.0))
    result, log = probe_run(ui, family, args, width=72, height=56, cfg_scale=1)
    msw_layers = {layer for layer in model_facts(family)["channels"]
                  if (layer[0], layer[1]) in hidiffusion.msw_blocks(family)}
    sigmas = sorted({entry["sigma"] for entry in log}, reverse=True)
    first, last = sigmas[0], sigmas[-1]
    assert {e["layer"] for e in log if e["sigma"] == last} == set(model_facts(family)["channels"]) - msw_layers
    assert {e["layer"] for e in log if e["sigma"] == first} == set(model_facts(family)["channels"])
    facts = model_facts(family)
    assert all(e["k"] == expected_k(e, {"input": 8.0, "output": 8.0}, **facts) for e in log)
    assert len(windows) == len(msw_layers)                         # once per MSW layer, on the last step
    line = result.extra_generation_params[PLAN_LINE]
    assert line.startswith("precedence MSW-MSA over Slothful while both are active, on ")
    assert sorted(line.split(" on ", 1)[1].split(", ")) == sorted(f"{b}:{n}:{i}" for b, n, i in msw_layers)
    assert f'{PLAN_LINE}: "precedence MSW-MSA over Slothful while both are active, on ' in result.infotexts[0]
    assert harness.reported_errors() == []


def test_composes_with_refdrop_use_and_omost_in_one_generation(ui, tmp_path, monkeypatch):
    monkeypatch.setenv("OMOST_REFDROP_DIR", str(tmp_path))
    for family in ("sd15", "sdxl"):
        name = f"slothful-{ui.flavour}-{family}"
        saved = generate(ui, family, feature_args(ui, refdrop=dict(mode=refdrop.SAVE, reference=name)))
        assert os.path.exists(tmp_path / f"{name}.safetensors")
        sloth = dict(in_slothful=8.0, out_slothful=8.0)
        alone = generate(ui, family, feature_args(ui, slothful=sloth)).latents
        args = feature_args(ui, refdrop=dict(mode=refdrop.USE, reference=name, coefficient=0.5), omost={},
                            slothful=sloth)
        result, log = probe_run(ui, family, args)
        params = result.extra_generation_params
        assert [k for k in params if k.endswith(" note")] == []
        assert params["RefDrop"] == params["Omost"] == params["Slothful / Near-sighted attention"] == "True"
        assert not torch.equal(result.latents, alone) and not torch.equal(result.latents, saved.latents)
        facts = model_facts(family)
        assert log and all(e["k"] == expected_k(e, {"input": 8.0, "output": 8.0}, **facts) for e in log)
    assert harness.reported_errors() == []


def test_precedence_line_follows_each_xyz_cell_and_each_pass(ui):
    """X/Y/Z cells share one extra_generation_params: a cell without MSW-MSA must not keep the line of the
    cell before it. The hires pass reports its own decisions (here: MSW-MSA not applied in the hires pass)."""
    xyz = ui.runner().selectable_scripts[0]
    axis = [o.label for o in xyz.current_axis_options].index("[HiDiffusion] MSW-MSA")
    args = feature_args(ui, slothful={})
    args[0] = ui.runner().selectable_scripts.index(xyz) + 1
    args[xyz.args_from:xyz.args_to] = [axis, "", ["True", "False"], 0, "", None, 0, "", None, True, False, False,
                                       False, False, False, False, 0, False]
    harness.load_model("sd15")
    p = ui.make_p(script_args=args, prompt="a cat", cfg_scale=5)
    grid = ui.runner().run(p, *p.script_args)
    with_msw, without = (grid.cells[(i, 0, 0)].infotexts[0] for i in range(2))
    assert "HiDiffusion: True" in with_msw and "MSW-MSA: True" not in with_msw      # a default is not written
    assert f'{PLAN_LINE}: "precedence MSW-MSA over Slothful' in with_msw
    assert "HiDiffusion MSW-MSA: False" in without and PLAN_LINE not in without
    for hires_pass in (True, False):
        result = generate(ui, "sd15", feature_args(ui, slothful={}, hidiffusion=dict(hires_pass=hires_pass)),
                          enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1)
        params = result.extra_generation_params
        assert params[PLAN_LINE].startswith("precedence MSW-MSA over Slothful")
        assert (PLAN_LINE + " (hires pass)" in params) == hires_pass
    assert harness.reported_errors() == []
