"""The extension loaded into the WebUI stand-in (both flavours): loading, off-means-off, the AttentionPlan
installer, parameter plumbing (infotext, paste, xyz, API), hires idempotence, install.py."""

import os
import textwrap

import pytest
import torch

from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAVOURS = harness.FLAVOURS
TITLES = ("Omost", "RefDrop", "Slothful / Near-sighted attention", "HiDiffusion")


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def webui(family="sd15", nowebui=False):
    return harness.start_webui([ROOT], family=family, nowebui=nowebui)


def args_for(ui, title, values, tab="txt2img"):
    """Script args: UI defaults with one accordion's args replaced from position 0 (enabled first)."""
    args = ui.ui_defaults(tab)
    script = ui.script(title, tab)
    args[script.args_from:script.args_from + len(values)] = list(values)
    return args


def transformer_patch_state(unet):
    options = unet.model_options.get("transformer_options", {})
    return {k: v for k, v in options.items() if k in ("patches", "patches_replace", "block_modifiers",
                                                      "block_inner_modifiers")}


@pytest.mark.parametrize("nowebui", [False, True])
def test_extension_loads_in_both_tabs_without_errors(flavour, nowebui):
    ui = webui(nowebui=nowebui)
    for tab in ("txt2img", "img2img"):
        for title in TITLES:
            script = ui.script(title, tab)
            assert script.args_to > script.args_from
    assert harness.reported_errors() == []
    # ui() returns the same number of components every call (the API calls it again for defaults)
    assert len(ui.api_defaults("txt2img")) == len(ui.ui_defaults("txt2img"))


def test_everything_off_is_bit_identical_and_installs_nothing(flavour):
    bare = harness.start_webui([])
    plain = bare.txt2img(prompt="a cat", cfg_scale=5).latents
    ui = webui()
    with harness.record_unet_calls() as calls:
        off = ui.txt2img(prompt="a cat", cfg_scale=5)
    assert torch.equal(off.latents, plain)
    assert calls and all("patches_replace" not in c.transformer_options and "patches" not in c.transformer_options
                         for c in calls)
    assert not any(k.startswith(("RefDrop", "HiDiffusion", "Slothful")) for k in off.extra_generation_params)
    assert harness.reported_errors() == []


def test_after_a_patched_generation_plain_is_identical_again(flavour):
    ui = webui()
    plain = ui.txt2img(prompt="a cat", cfg_scale=5).latents
    patched = ui.txt2img(script_args=args_for(ui, "HiDiffusion", [True]), prompt="a cat", cfg_scale=5,
                         width=200, height=136)
    assert patched.extra_generation_params["HiDiffusion"] == "True"
    sloth = ui.txt2img(script_args=args_for(ui, "Slothful / Near-sighted attention", [True]), prompt="a cat",
                       cfg_scale=5)
    assert not torch.equal(sloth.latents, plain)
    again = ui.txt2img(prompt="a cat", cfg_scale=5).latents
    assert torch.equal(again, plain)
    assert harness.reported_errors() == []


STAGES_EXTENSION = textwrap.dedent('''
    import torch
    from modules import scripts
    from lib_omost.attention.plan import ATTN1, LayerKey
    from lib_omost.forge.pass_plan import Parts, install
    from lib_omost.forge.webui import model_info

    LAYER = LayerKey("input", 1, 0)
    LOG = []


    class Scale:
        def __init__(self, name, order, factor):
            self.name, self.order, self.factor = name, order, factor
            self.target, self.exclusive = ATTN1, None

        def applies(self, layer):
            return layer == LAYER

        def active(self, call):
            return True

        def __call__(self, q, k, v, call, inner):
            LOG.append((self.name, call.layer, tuple(call.cond_rows), tuple(call.uncond_rows), call.hw))
            return inner(q, k, v, call) * self.factor


    class Foreign(scripts.Script):
        sorting_priority = 1

        def title(self):
            return "Foreign replace"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def foreign(q, k, v, extra_options):
                LOG.append(("foreign",))
                return torch.zeros_like(q) + 1.0
            unet.set_model_attn1_replace(foreign, "input", 1)        # two-part key: the fallback lookup
            p.sd_model.forge_objects.unet = unet


    class Stages(scripts.Script):
        sorting_priority = 2

        def title(self):
            return "Test stages"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            info = model_info(p.sd_model, p.sd_model.forge_objects.unet)
            install(p, "outer", Parts(stages=(Scale("outer", 10, 2.0),)), info)
            install(p, "inner", Parts(stages=(Scale("inner", 30, 3.0),)), info)
            install(p, "outer", Parts(stages=(Scale("outer", 10, 2.0),)), info)   # again: replaces, never stacks
''')


def test_plan_composes_two_stages_and_wraps_a_foreign_replace(flavour, tmp_path):
    ext = tmp_path / "stages_ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "stages.py").write_text(STAGES_EXTENSION)
    ui = harness.start_webui([str(ext)])
    module = [d.module for d in ui.scripts.scripts_data if d.script_class.__name__ == "Stages"][0]
    seen = {}

    def capture(unet_call_unet):
        seen["unet"] = unet_call_unet
    p = ui.make_p(prompt="a cat", cfg_scale=5, steps=1)
    from modules import processing
    processing.process_images(p)
    assert harness.reported_errors() == []
    names = [entry[0] for entry in module.LOG]
    # one UNet call (uncond + cond batched): outer wraps inner wraps the foreign replace, once each
    assert names == ["outer", "inner", "foreign"]
    _, layer, cond, uncond, hw = module.LOG[0]
    assert tuple(layer) == ("input", 1, 0) and hw == (8, 8)
    assert len(cond) == len(uncond) == 1 and cond != uncond


def test_install_plan_output_equals_the_composition(flavour):
    from lib_omost.attention.plan import ATTN1, AttentionPlan, LayerKey
    from lib_omost.forge.pass_plan import PLAN_KEY, foreign_replace, install_plan
    from lib_omost.forge.webui import model_info
    model = harness.make_sd_model("sd15")
    unet = model.forge_objects.unet.clone()
    info = model_info(model, unet)

    class Half:
        name, order, target, exclusive = "half", 10, ATTN1, None

        def applies(self, layer):
            return layer.block == "output"

        def active(self, call):
            return True

        def __call__(self, q, k, v, call, inner):
            return inner(q, k, v, call) * 0.5
    plan = AttentionPlan().with_feature("half", [Half()])
    installed = install_plan(unet, plan, info)
    assert installed == [layer for layer in info.layers if layer.block == "output"]
    assert unet.model_options[PLAN_KEY] is plan
    replace = unet.model_options["transformer_options"]["patches_replace"]["attn1"][("output", 9, 0)]
    q, k, v = (torch.randn(2, 64, 32) for _ in range(3))
    options = {"block": ("output", 9), "block_index": 0, "n_heads": 8, "original_shape": [2, 4, 8, 8],
               "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0])}
    expected = info.attention(q, k, v, 8, options) * 0.5
    assert torch.equal(replace(q, k, v, options), expected)
    assert foreign_replace(unet.model_options, ATTN1, LayerKey("output", 9, 0)) is None   # ours is seen through
    # the plan without stages takes our replaces off again
    install_plan(unet, AttentionPlan(), info)
    assert unet.model_options["transformer_options"]["patches_replace"]["attn1"] == {}


def test_cond_rows_for_both_flavours_any_order_and_split_calls():
    from lib_omost.forge.pass_plan import cond_uncond_rows
    forge = {"cond_or_uncond": [1, 0], "cond_indices": [2, 3], "uncond_indices": [0, 1]}
    assert cond_uncond_rows(forge, 4) == ([2, 3], [0, 1])
    assert cond_uncond_rows({"cond_or_uncond": [1, 0]}, 4) == ([2, 3], [0, 1])      # reForge: derived
    assert cond_uncond_rows({"cond_or_uncond": [0, 1, 0]}, 3) == ([0, 2], [1])       # AND prompt, any order
    assert cond_uncond_rows({"cond_or_uncond": [0]}, 2) == ([0, 1], [])              # CFG 1 or a split call
    assert cond_uncond_rows({"cond_or_uncond": [1]}, 1) == ([], [0])
    with pytest.raises(ValueError, match="does not split"):
        cond_uncond_rows({"cond_or_uncond": [1, 0]}, 3)


def test_real_rows_seen_by_a_stage_match_cond_or_uncond(flavour, tmp_path):
    """Row bookkeeping on real calls: CFG 1 (no uncond), batch 2, and forced split calls."""
    ext = tmp_path / "stages_ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "stages.py").write_text(STAGES_EXTENSION.replace("unet.set_model_attn1_replace(foreign", "pass  # (foreign")
                                               .replace('return torch.zeros_like(q) + 1.0', 'return q'))
    ui = harness.start_webui([str(ext)])
    module = [d.module for d in ui.scripts.scripts_data if d.script_class.__name__ == "Stages"][0]
    ui.txt2img(prompt="a cat", cfg_scale=1, steps=1, batch_size=2)
    cond, uncond = module.LOG[0][2], module.LOG[0][3]
    assert (cond, uncond) == ((0, 1), ())
    module.LOG.clear()
    with harness.force_split(2):
        ui.txt2img(prompt="a cat", cfg_scale=5, steps=1, batch_size=2)
    rows = {(entry[2], entry[3]) for entry in module.LOG if entry[0] == "outer"}
    assert rows == {((0, 1), ()), ((), (0, 1))}


def test_infotext_paste_and_api_args_round_trip(flavour):
    ui = webui()
    title = "Slothful / Near-sighted attention"
    values = [True, "Near-sighted attention", 0.5, 1.5]
    result = ui.txt2img(script_args=args_for(ui, title, values), prompt="a cat")
    text = result.infotexts[0]
    assert "Slothful / Near-sighted attention Mode: Near-sighted attention" in text
    assert "Slothful / Near-sighted attention Peak time: 0.5" in text
    # only what differs from the defaults and what the mode uses is written
    assert "Input slothful" not in text and "Tile size" not in text
    script = ui.script(title)
    components = ui.runner().inputs[script.args_from:script.args_to]
    defaults = [c.value for c in components]
    pasted = ui.paste(text)     # sets every component: what the infotext left out is reset to its default
    assert [pasted.get(c) for c in components] == values + defaults[len(values):]
    # the API: positional args in ui() order, missing trailing args take defaults
    api = ui.api_txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1,
                          "alwayson_scripts": {title.upper(): {"args": values}}})
    assert api.infotexts[0] == text
    assert torch.equal(api.latents, result.latents)


def test_bad_api_args_are_reported_not_raised(flavour):
    ui = webui()
    result = ui.api_txt2img({"prompt": "a", "steps": 1, "width": 64, "height": 64,
                             "alwayson_scripts": {"HiDiffusion": {"args": [True, "Turbo"]}}})
    note = result.extra_generation_params["HiDiffusion note"]
    assert "Mode: 'Turbo' is not one of Simple, Advanced" in note and "did not run" in note
    assert "HiDiffusion applied" not in result.extra_generation_params
    assert harness.reported_errors() == []


def test_xyz_axes_sweep_their_own_values_and_leave_no_state(flavour):
    for nowebui in (False, True):
        ui = webui(nowebui=nowebui)
        xyz = ui.runner().selectable_scripts[0]
        labels = [o.label for o in xyz.current_axis_options]
        assert "[Slothful / Near-sighted attention] Input slothful" in labels
        assert "[HiDiffusion] MSW-MSA start" in labels and "[RefDrop] Coefficient" in labels
    args = ui.ui_defaults()
    args[0] = ui.runner().selectable_scripts.index(xyz) + 1
    axis = labels.index("[Slothful / Near-sighted attention] Input slothful")
    args[xyz.args_from:xyz.args_to] = [axis, "0, 8", None, 0, "", None, 0, "", None, True, False, False, False,
                                       False, False, False, 0, False]
    p = ui.make_p(script_args=args, prompt="a cat", cfg_scale=5)
    grid = ui.runner().run(p, *p.script_args)
    cells = [grid.cells[(i, 0, 0)] for i in range(2)]
    assert "Slothful / Near-sighted attention Input slothful: 0" in cells[0].infotexts[0]
    assert "Slothful / Near-sighted attention Input slothful: 8" in cells[1].infotexts[0]
    assert not torch.equal(cells[0].latents, cells[1].latents)
    assert not hasattr(p, "omost_overrides")
    plain = ui.txt2img(prompt="a cat", cfg_scale=5)
    assert "Slothful / Near-sighted attention" not in plain.infotexts[0]


def test_hires_passes_install_the_same_patches(flavour):
    ui = webui()
    seen = []
    from lib_omost.forge import accordions
    original = accordions.install

    def spy(p, key, parts, info=None, noise=None):
        notes = original(p, key, parts, info, noise)
        if key == "slothful":
            seen.append((p.is_hr_pass, sorted(transformer_patch_state(p.sd_model.forge_objects.unet)
                                              .get("patches_replace", {}).get("attn1", {}))))
        return notes
    accordions.install = spy
    try:
        ui.txt2img(script_args=args_for(ui, "Slothful / Near-sighted attention", [True]), prompt="a cat",
                   cfg_scale=5, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1)
    finally:
        accordions.install = original
    passes = [hr for hr, _ in seen]
    assert passes[0] is False and all(passes[1:]) and len(passes) == (3 if flavour == "forge" else 2)
    keys = [k for _, k in seen]
    assert all(k == keys[0] for k in keys) and len(keys[0]) == 15       # every attn1 layer but the middle
    assert harness.reported_errors() == []


def test_unsupported_model_is_refused_with_a_message():
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT], family="flux")
        result = ui.txt2img(script_args=args_for(ui, "HiDiffusion", [True]), prompt="a cat")
        note = result.extra_generation_params["HiDiffusion note"]
        assert "not SD1.5, SD2 or SDXL" in note and "did not run" in note
        assert harness.reported_errors() == []


def test_install_py_installs_only_what_is_missing(flavour, tmp_path):
    log = str(tmp_path / "pip.log")
    code, out, err, calls = harness.run_installer(ROOT, log, installed={"torch": "2.3.1"})
    assert code == 0, err
    assert calls == [] and "nothing to install" in out                      # no CUDA on this machine
    code, out, err, calls = harness.run_installer(ROOT, log, installed={"bitsandbytes": "0.45.3"})
    assert code == 0 and calls == [] and "nothing to install" in out


def test_install_plan_for_cuda_machines():
    import importlib.util
    import sys
    import types
    sys.modules["launch"] = types.SimpleNamespace(is_installed=lambda name: False, run_pip=lambda *a: None)
    try:
        spec = importlib.util.spec_from_file_location("omost_install", os.path.join(ROOT, "install.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        del sys.modules["launch"]
    plan = module.planned_installs
    assert plan(lambda n: False, True, "linux", {}) == [("bitsandbytes==0.45.3", "for the 4-bit / 8-bit Omost LLMs")]
    assert plan(lambda n: False, True, "win32", {}) != []
    assert plan(lambda n: False, True, "darwin", {}) == []
    assert plan(lambda n: False, False, "linux", {}) == []
    assert plan(lambda n: n == "bitsandbytes", True, "linux", {}) == []
    assert plan(lambda n: False, True, "linux", {"OMOST_SKIP_BITSANDBYTES": "1"}) == []


def test_stale_infotext_of_a_previous_xyz_cell_is_dropped():
    import types
    from lib_omost.features.hidiffusion import FEATURE
    from lib_omost.forge.generation import read_values
    shared = {"HiDiffusion": "True", "HiDiffusion Mode": "Simple", "HiDiffusion note": "x", "Steps": 2}
    cell = types.SimpleNamespace(extra_generation_params=shared, is_hr_pass=False)
    assert read_values(cell, FEATURE, [False]) is None
    assert shared == {"Steps": 2}
    shared.update({"HiDiffusion Mode": "Simple"})
    hires = types.SimpleNamespace(extra_generation_params=shared, is_hr_pass=True)
    read_values(hires, FEATURE, [False])
    assert shared == {"Steps": 2, "HiDiffusion Mode": "Simple"}


SCHEDULE_EXTENSION = textwrap.dedent('''
    from modules import scripts
    from lib_omost.forge.webui import schedule_sigmas
    SEEN = []


    class Schedule(scripts.Script):
        def title(self):
            return "Schedule probe"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            SEEN.append((p.is_hr_pass, schedule_sigmas(p)))
''')


@pytest.mark.parametrize("denoise", [0.5, 1.0])
def test_schedule_of_the_hires_pass_is_the_one_its_sampler_runs(flavour, tmp_path, denoise):
    from lib_omost.attention.refdrop import step_index
    ext = tmp_path / "schedule_ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "schedule.py").write_text(SCHEDULE_EXTENSION)
    ui = harness.start_webui([str(ext)])
    module = [d.module for d in ui.scripts.scripts_data if d.script_class.__name__ == "Schedule"][0]
    with harness.record_unet_calls() as calls:
        ui.txt2img(prompt="a cat", cfg_scale=5, steps=3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
                   denoising_strength=denoise)
    hires_schedule = [s for hr, s in module.SEEN if hr][-1]
    hires_sigmas = [float(c.transformer_options["sigmas"][0]) for c in calls if c.x_shape[-1] == 12]
    steps = [step_index(hires_schedule, s) for s in hires_sigmas]
    assert len(steps) == 4 and steps == list(range(steps[0], steps[0] + 4))      # four distinct, in order
    assert all(min(abs(s - t) for t in hires_schedule) < 1e-4 * max(s, 1e-3) for s in hires_sigmas)


def test_enable_flags_sent_as_false_words_over_the_api_leave_every_accordion_off(flavour):
    ui = webui()
    request = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "cfg_scale": 5}
    plain = ui.api_txt2img(request)
    for word in ("false", "False", "no", "0", "off"):        # bool(word) is True for each of them
        off = ui.api_txt2img({**request, "alwayson_scripts": {title: {"args": [word]} for title in TITLES}})
        assert torch.equal(off.latents, plain.latents), word
        assert not any(k.startswith(TITLES) for k in off.extra_generation_params), word
    assert harness.reported_errors() == []


def test_enable_flags_sent_as_words_turn_accordions_on_or_are_reported(flavour):
    ui = webui()
    request = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "cfg_scale": 5}
    on = ui.api_txt2img({**request, "alwayson_scripts": {"HiDiffusion": {"args": ["True"]}}})
    assert "HiDiffusion applied" in on.extra_generation_params
    bad = ui.api_txt2img({**request, "alwayson_scripts": {"HiDiffusion": {"args": ["maybe"]}}})
    note = bad.extra_generation_params["HiDiffusion note"]
    assert note.startswith("Enabled: 'maybe' is not a boolean; allowed: true or false") and "did not run" in note
    assert "HiDiffusion applied" not in bad.extra_generation_params
    assert harness.reported_errors() == []
