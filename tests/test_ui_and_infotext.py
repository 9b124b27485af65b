"""The accordions' UI and infotext as a user meets them: the UI builds where the WebUI cannot write temp files
(Forge Neo), a failing part of an accordion is contained, controls follow their modes, and the infotext holds
only what ran and differs from the defaults, pastes back completely and never writes a value the WebUI's parser
cannot read back."""

import json
import os

import gradio
import pytest

from lib_omost.features import hidiffusion, omost, refdrop, slothful
from lib_omost.params import JSON
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = [omost.FEATURE, refdrop.FEATURE, slothful.FEATURE, hidiffusion.FEATURE]


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def components_of(ui, feature, tab="txt2img"):
    """{param name: component} of one accordion (the enable flag is first, then the declaration's order)."""
    script = ui.script(feature.title, tab)
    inputs = ui.runner(tab).inputs[script.args_from:script.args_to]
    return dict(zip(feature.arg_names, inputs))


# --- building the UI ---------------------------------------------------------------------------------------

def test_the_ui_builds_when_the_webui_cannot_write_temp_files(flavour, monkeypatch):
    """Forge Neo saves every image a component holds into its temp folder, which nothing creates: a component
    holding a file-backed value at build time kills the API thread there."""
    def no_temp_folder(*args, **kwargs):
        raise FileNotFoundError("[Errno 2] No such file or directory: '/webui/tmp/tmpabc.png'")
    for name in ("save_pil_to_cache", "save_img_array_to_cache", "save_file_to_cache", "save_bytes_to_cache"):
        if hasattr(gradio.processing_utils, name):
            monkeypatch.setattr(gradio.processing_utils, name, no_temp_folder)
    for nowebui in (False, True):
        ui = harness.start_webui([ROOT], nowebui=nowebui)
        assert harness.reported_errors() == []
        for feature in FEATURES:
            assert len(components_of(ui, feature)) == len(feature.arg_names)
        shown = [str(b.value) for b in ui.demo.blocks.values() if isinstance(b, gradio.Markdown)]
        assert not any("could not be built" in text for text in shown)       # built whole, not contained
        previews = [str(b.value) for b in ui.demo.blocks.values() if isinstance(b, gradio.HTML)]
        assert any('src="data:image/png;base64,' in text for text in previews)   # the layout preview is there


def test_a_failing_part_of_an_accordion_is_shown_and_the_rest_still_builds(flavour, monkeypatch):
    from lib_omost.forge import omost_chat
    monkeypatch.setattr(omost_chat, "example_json_text", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    ui = harness.start_webui([ROOT])
    made = components_of(ui, omost.FEATURE)
    assert len(made) == len(omost.FEATURE.arg_names)                 # every argument position is still there
    # every other accordion after it keeps its positions: its defaults are its declaration's
    for feature in (refdrop.FEATURE, slothful.FEATURE, hidiffusion.FEATURE):
        values = [c.value for c in components_of(ui, feature).values()]
        assert values[1:] == [p.default for p in feature.params]
    shown = [b.value for b in ui.demo.blocks.values() if isinstance(b, gradio.Markdown)]
    assert any("Omost: part of this accordion could not be built" in str(v) and "boom" in str(v) for v in shown)
    # the API still reads defaults and generates
    result = ui.api_txt2img({"prompt": "a", "steps": 1, "width": 64, "height": 64})
    assert result.latents is not None and bool(result.latents.isfinite().all())


# --- controls follow their modes ---------------------------------------------------------------------------

def dependency_of(ui, control, outputs):
    """The function the UI runs when ``control`` changes and updates ``outputs`` (gradio 4's config)."""
    ids = [o._id for o in outputs]
    for fn in ui.demo.fns.values() if isinstance(ui.demo.fns, dict) else ui.demo.fns:
        if [o._id for o in fn.outputs] == ids and any(t[0] == control._id for t in fn.targets):
            return fn
    raise AssertionError("no change event updates these controls")


@pytest.mark.parametrize("feature", [refdrop.FEATURE, slothful.FEATURE, hidiffusion.FEATURE], ids=lambda f: f.key)
def test_controls_show_only_what_the_chosen_modes_use(feature):
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT])
        made = components_of(ui, feature)
        defaults = feature.defaults()
        for param in feature.params:
            assert made[param.name].visible == feature.in_use(param, defaults), param.name
        dependents = [p for p in feature.params if p.when]
        controls = sorted({name for p in dependents for name, _ in p.when})
        outputs = [made[p.name] for p in dependents]
        for control in controls:
            fn = dependency_of(ui, made[control], outputs)
            for choice in feature.by_name[control].choices or (True, False):
                values = {**defaults, control: choice}
                updates = fn.fn(*[values[name] for name in controls])
                shown = {p.name for p, u in zip(dependents, updates) if u["visible"]}
                assert shown == {p.name for p in dependents if feature.in_use(p, values)}, (control, choice)


def test_modes_hide_what_they_do_not_use():
    hd, sl, rd = hidiffusion.FEATURE, slothful.FEATURE, refdrop.FEATURE
    simple, advanced = hd.defaults(), {**hd.defaults(), "mode": hidiffusion.ADVANCED}
    assert not hd.in_use(hd.by_name["raunet_end"], simple) and hd.in_use(hd.by_name["raunet_end"], advanced)
    assert not hd.in_use(hd.by_name["raunet_end"], {**advanced, "raunet": False})
    assert hd.in_use(hd.by_name["resolution"], simple) and not hd.in_use(hd.by_name["resolution"], advanced)
    tile = {**sl.defaults(), "mode": slothful.TILE}
    assert sl.in_use(sl.by_name["tile_size"], tile) and not sl.in_use(sl.by_name["in_slothful"], tile)
    assert not sl.in_use(sl.by_name["base_tile"], tile)
    assert not rd.in_use(rd.by_name["coefficient"], rd.defaults())          # Save: no coefficient
    assert rd.in_use(rd.by_name["coefficient"], {**rd.defaults(), "mode": refdrop.USE})


# --- infotext ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.key)
def test_defaults_write_only_the_enable_flag(feature):
    assert feature.to_infotext({**feature.defaults(), "enabled": True}) == {feature.enabled_key: "True"}


def test_no_value_is_ever_written_empty():
    values = {**refdrop.FEATURE.defaults(), "enabled": True, "mode": refdrop.USE, "reference": " "}
    written = refdrop.FEATURE.to_infotext(values)
    assert all(str(v).strip() for v in written.values()) and "RefDrop Reference" not in written


def test_simple_mode_leaves_out_the_advanced_values_it_did_not_use():
    values = {**hidiffusion.FEATURE.defaults(), "enabled": True, "upscale_mode": "nearest", "raunet_end": 0.6,
              "resolution": "high"}
    assert hidiffusion.FEATURE.to_infotext(values) == {"HiDiffusion": "True", "HiDiffusion Resolution mode": "high"}
    advanced = hidiffusion.FEATURE.to_infotext({**values, "mode": hidiffusion.ADVANCED})
    assert advanced["HiDiffusion Upscale mode"] == "nearest" and advanced["HiDiffusion RAU-Net end"] == "0.6"
    assert "HiDiffusion Resolution mode" not in advanced


def test_a_paste_resets_what_the_infotext_left_out_and_indents_the_canvas():
    params = {"Omost": "True", "Omost Strength": "0.5",
              "Omost Canvas": json.dumps(json.loads(omost.FEATURE.by_name["canvas"].default), separators=(",", ":"))}
    omost.FEATURE.complete_pasted(params)
    assert params["Omost Strength"] == "0.5" and params["Omost Method"] == omost.OMOST
    assert params["Omost Canvas"] == json.dumps(json.loads(params["Omost Canvas"]), ensure_ascii=False, indent=2)
    untouched = {"Steps": "2"}
    omost.FEATURE.complete_pasted(untouched)                       # the accordion was off: nothing added
    assert untouched == {"Steps": "2"}


def test_the_canvas_is_written_compact():
    canvas = omost.FEATURE.by_name["canvas"]
    changed = json.loads(canvas.default)
    changed["global"]["description"] = "a different scene"
    text = canvas.format(json.dumps(changed, indent=4))
    assert text == json.dumps(changed, ensure_ascii=False, separators=(",", ":"))
    assert canvas.kind == JSON and canvas.is_default(json.dumps(json.loads(canvas.default)))


def test_every_written_infotext_reads_back_without_parse_errors_and_restores_the_values(flavour):
    ui = harness.start_webui([ROOT])
    values = {
        "Omost": [True, omost.FEATURE.by_name["canvas"].default, omost.COUPLE, 0.7],
        "RefDrop": [True, refdrop.USE, 0.4, "absent-reference", 100.0, True, True, True, ""],
        "Slothful / Near-sighted attention": [True, slothful.NEAR_SIGHTED, 0.3],
        "HiDiffusion": [True, hidiffusion.SIMPLE, "low", False],
    }
    args = ui.ui_defaults()
    for title, given in values.items():
        script = ui.script(title)
        args[script.args_from:script.args_from + len(given)] = given
    result = ui.txt2img(script_args=args, prompt="a cat", cfg_scale=5)
    text = result.infotexts[0]
    assert ": ," not in text and not text.rstrip().endswith(":")
    for feature in (omost.FEATURE, slothful.FEATURE, hidiffusion.FEATURE):
        pasted = ui.pasted_values(feature, text)
        expected = feature.values(values[feature.title])
        used = {p.name for p in feature.params if feature.in_use(p, expected)}
        assert {k: v for k, v in pasted.items() if k in used} == {k: v for k, v in expected.items() if k in used}
    # a Use whose reference is missing did not run: only its note is written
    params = result.extra_generation_params
    assert "RefDrop" not in params and [k for k in params if k.startswith("RefDrop ")] == ["RefDrop note"]
    assert "RefDrop did not run" in params["RefDrop note"]
    assert not ui.pasted_values(refdrop.FEATURE, text)["enabled"]


def test_every_infotext_key_starts_with_an_accordion_title(flavour):
    ui = harness.start_webui([ROOT])
    args = ui.ui_defaults()
    for title, given in (("Slothful / Near-sighted attention", [True]), ("HiDiffusion", [True])):
        script = ui.script(title)
        args[script.args_from:script.args_from + len(given)] = given
    result = ui.txt2img(script_args=args, prompt="a cat", cfg_scale=5, enable_hr=True, hr_scale=1.5,
                        hr_second_pass_steps=1)
    ours = [k for k in result.extra_generation_params if any(t in k for t in ("Slothful", "HiDiffusion", "Attention"))]
    assert ours and all(k.startswith(("Slothful / Near-sighted attention", "HiDiffusion")) for k in ours), ours
    assert any(k.endswith("precedence") for k in ours)
