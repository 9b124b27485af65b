"""The pass installer (lib_omost.forge.pass_plan): one clone per pass, our parts replaced (never stacked) by
a later install, and what another extension set before us kept and chained, on real generations."""

import os
import textwrap

import pytest
import torch

from lib_omost.features import omost
from lib_omost.features.omost_start import schedule_length, schedule_tail
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANVAS = omost.FEATURE.by_name["canvas"].default

FOREIGN = textwrap.dedent('''
    import torch
    from modules import scripts

    ON = {"foreign": False}
    LOG = []
    SEEN = []
    THEIRS = []


    def their_wrapper(apply_model, args):
        LOG.append(("wrapper", tuple(args["c"]["c_crossattn"].shape)))
        return apply_model(args["input"], args["timestep"], **args["c"])


    def their_modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        LOG.append(("modifier",))
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed


    def their_override(steps):
        LOG.append(("override", steps))
        return torch.linspace(9.0, 0.0, steps + 1)


    class Foreign(scripts.Script):
        sorting_priority = 1

        def title(self):
            return "Foreign parts"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            if not ON["foreign"]:
                return
            unet = p.sd_model.forge_objects.unet.clone()
            THEIRS.append(unet)
            unet.set_model_unet_function_wrapper(their_wrapper)
            unet.model_options["conditioning_modifiers"] = [their_modifier]
            p.sd_model.forge_objects.unet = unet
            p.sampler_noise_scheduler_override = their_override
            p.modified_noise = kwargs["noise"] * 2

''')

CAPTURE = textwrap.dedent('''
    from modules import scripts

    SEEN = []           # the foreign module's list, set by the test


    class Capture(scripts.Script):
        sorting_priority = 99

        def title(self):
            return "Capture"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet
            SEEN.append(dict(hires=p.is_hr_pass, noise=kwargs["noise"], modified=p.modified_noise,
                             override=p.sampler_noise_scheduler_override, unet=unet,
                             options=unet.model_options, object_patches=dict(unet.object_patches)))
''')


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def start(tmp_path):
    """The WebUI with an extension loaded before ours (its scripts run first) and one after (it captures)."""
    ext, capture = tmp_path / "foreign_ext", tmp_path / "zz_capture_ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "scripts" / "foreign.py").write_text(FOREIGN)
    (capture / "scripts").mkdir(parents=True)
    (capture / "scripts" / "capture.py").write_text(CAPTURE)
    ui = harness.start_webui([str(ext), ROOT, str(capture)])
    modules = {d.script_class.__name__: d.module for d in ui.scripts.scripts_data}
    modules["Capture"].SEEN = modules["Foreign"].SEEN
    return ui, modules["Foreign"]


def all_on(ui, method=omost.OMOST, strength=0.0):
    return ui.script_args({"Omost": [True, CANVAS, method, 1.0, 1.0, omost.APPEND, True, strength],
                           "Slothful / Near-sighted attention": [True], "HiDiffusion": [True]})


def test_foreign_wrapper_modifier_noise_and_schedule_are_kept_and_chained(flavour, tmp_path):
    from lib_omost.forge.markers import before_ours, is_ours
    ui, foreign = start(tmp_path)
    steps, strength = 2, 0.5
    runs = {}
    for on in (False, True):
        foreign.ON["foreign"] = on
        foreign.SEEN.clear()
        ui.txt2img(script_args=all_on(ui, strength=strength), prompt="a cat", cfg_scale=5, steps=steps)
        runs[on] = foreign.SEEN[0]
    assert harness.reported_errors() == []
    seen = runs[True]
    # their wrapper runs inside ours, on the canvas context ours swapped in (longer than one 77-token chunk)
    wrappers = [entry for entry in foreign.LOG if entry[0] == "wrapper"]
    assert len(wrappers) == steps and all(shape[1] > 77 for _, shape in wrappers)
    ours = seen["options"]["model_function_wrapper"]
    assert is_ours(ours) and before_ours(ours) is foreign.their_wrapper
    # their conditioning modifier is kept and runs before ours
    modifiers = seen["options"]["conditioning_modifiers"]
    assert modifiers[0] is foreign.their_modifier and all(is_ours(m) for m in modifiers[1:])
    assert foreign.LOG.count(("modifier",)) == steps
    # the start takes the tail of their schedule, and starts from their noise (2 x the WebUI's)
    total = schedule_length(steps, strength)
    assert is_ours(seen["override"]) and before_ours(seen["override"]) is foreign.their_override
    assert torch.equal(seen["override"](steps), schedule_tail(torch.linspace(9.0, 0.0, total + 1), steps))
    assert ("override", total) in foreign.LOG
    plain = runs[False]
    assert torch.equal(plain["noise"], seen["noise"]) and not is_ours(plain["modified"])
    # made = noise + latent / sigma0: from their noise (2 x the WebUI's), at the first sigma of their tail
    latent = (plain["modified"] - plain["noise"]).double() * float(plain["override"](steps)[0])
    sigma = float(seen["override"](steps)[0])
    assert torch.allclose((seen["modified"] - 2 * seen["noise"]).double() * sigma, latent, rtol=1e-5, atol=1e-5)


def test_one_clone_per_pass_and_a_later_pass_replaces_our_parts(flavour, tmp_path, monkeypatch):
    from lib_omost.forge.markers import before_ours, is_ours
    from lib_omost.forge.pass_plan import installed_plan
    ui, foreign = start(tmp_path)
    foreign.ON["foreign"] = True
    patcher = type(harness.make_sd_model("sd15").forge_objects.unet)
    clones = []
    original_clone = patcher.clone

    def counting_clone(self, *args, **kwargs):
        made = original_clone(self, *args, **kwargs)
        clones.append(made)
        return made
    monkeypatch.setattr(patcher, "clone", counting_clone)
    ui.txt2img(script_args=all_on(ui), prompt="a cat", cfg_scale=5, steps=2, width=200, height=136,
               enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_cfg=5,
               hr_additional_modules=["Use same choices"])
    assert harness.reported_errors() == []
    first = foreign.SEEN[0]
    assert not first["hires"] and installed_plan(first["unet"]).installed_on(first["unet"])
    assert set(installed_plan(first["unet"]).by_feature) == {"omost", "slothful", "hidiffusion"}
    # the first pass: the foreign clone, then exactly one of ours (the UNet the sampler gets)
    assert clones.index(first["unet"]) == clones.index(foreign.THEIRS[0]) + 1
    for seen in foreign.SEEN:
        options = seen["options"]
        wrapper = options["model_function_wrapper"]
        assert is_ours(wrapper) and before_ours(wrapper) is foreign.their_wrapper      # never ours inside ours
        plan = installed_plan(seen["unet"])
        modifiers = options["conditioning_modifiers"]
        assert [m for m in modifiers if not is_ours(m)] == [foreign.their_modifier]
        assert [m for m in modifiers if is_ours(m)] == [m for parts in plan.by_feature.values() for m in parts.modifiers]
        replaces = options["transformer_options"]["patches_replace"]
        assert all(is_ours(fn) and before_ours(fn) is None for table in replaces.values() for fn in table.values())
        blocks = options["transformer_options"].get("patches", {})
        for name, fns in blocks.items():                        # each of ours once, whatever ran before
            planned = [f for patches in plan.all("block_patches") for f in getattr(patches, name, [])]
            assert [f for f in fns if is_ours(f)] == planned
    hires = [seen for seen in foreign.SEEN if seen["hires"]]
    assert len(hires) == (2 if flavour == "forge" else 1)
    for seen, theirs in zip(hires, foreign.THEIRS[1:]):       # Forge main's first hires call: on the first
        plan = installed_plan(seen["unet"])                     # pass's UNet, whose parts are replaced
        assert plan.hires and plan.installed_on(seen["unet"])
        assert clones.index(seen["unet"]) == clones.index(theirs) + 1
