"""Per-region LoRA through the stand-in WebUI (both flavours): LoRA files written here in the WebUI's kohya
format, found through its registry, read with its loader; the update acts only for its region and the model
is unchanged afterwards."""

import json
import os

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from lib_omost.canvas import canvas_from_json, ordered_regions, region_masks
from lib_omost.features import omost
from lib_omost.unet.lora import low_rank, merged_delta
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Omost"
Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
K2 = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
CONV = "input_blocks.1.0.in_layers.2"
XL_Q = "input_blocks.4.1.transformer_blocks.1.attn1.to_q"        # SDXL: depth-2 block, second transformer


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request, tmp_path):
    with harness.use_flavour(request.param):
        from modules import shared
        saved = shared.cmd_opts.lora_dir
        shared.cmd_opts.lora_dir = str(tmp_path / "Lora")
        os.makedirs(shared.cmd_opts.lora_dir)
        try:
            yield request.param
        finally:
            shared.cmd_opts.lora_dir = saved


def shared_model():
    from modules import shared
    return shared.sd_model


def write_lora(name, diffusion_model, paths, seed, rank=2, alpha=1.0):
    """A kohya-style file: lora_unet_<path>.lora_down.weight / lora_up.weight / alpha per layer."""
    from modules import shared
    g = torch.Generator().manual_seed(seed)
    state = {}
    for path in paths:
        weight = dict(diffusion_model.named_parameters())[path + ".weight"]
        key = "lora_unet_" + path.replace(".", "_")
        down_shape = (rank, *weight.shape[1:]) if weight.dim() == 4 else (rank, weight.shape[1])
        up_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
        state[key + ".lora_down.weight"] = torch.randn(down_shape, generator=g) * 0.3
        state[key + ".lora_up.weight"] = torch.randn(up_shape, generator=g) * 0.3
        state[key + ".alpha"] = torch.tensor(alpha)
    safetensors.torch.save_file(state, os.path.join(shared.cmd_opts.lora_dir, name + ".safetensors"))
    return state


def factors(state, path, weight):
    key = "lora_unet_" + path.replace(".", "_")
    return low_rank(state[key + ".lora_up.weight"].double(), state[key + ".lora_down.weight"].double(),
                    float(state[key + ".alpha"]), None, weight)


def canvas_json(left="a dog", right="a cat", right_loras=None):
    right_region = {"rect": [0, 90, 45, 90], "distance": 5, "color": "blue", "description": right}
    if right_loras:
        right_region["loras"] = right_loras
    return json.dumps({"global": {"description": "a park", "color": "white"},
                       "regions": [{"rect": [0, 90, 0, 45], "distance": 2, "color": "red", "description": left},
                                   right_region]})


def run(ui, canvas, method=omost.BLEND, **kw):
    args = ui.script_args({TITLE: [True, canvas, method, 1.0, 1.0]})
    return ui.txt2img(script_args=args, prompt="", cfg_scale=5, steps=2, **kw)


class Capture:
    """(input, output) of every call of some layers, through forward hooks (they run around any forward)."""

    def __init__(self, diffusion_model, paths):
        self.calls = {p: [] for p in paths}
        self.handles = [dict(diffusion_model.named_modules())[p].register_forward_hook(self.hook(p)) for p in paths]

    def hook(self, path):
        def record(module, inputs, output):
            self.calls[path].append((inputs[0].detach().clone(), output.detach().clone()))
        return record

    def close(self):
        for h in self.handles:
            h.remove()


def plain_and_merged(module, x, lrs):
    """The layer's own output on x (float32, its class forward) and the outputs with each LoRA merged in
    its weight (float64)."""
    plain = type(module).forward(module, x)
    merged = []
    for lr in lrs:
        w = module.weight.double() + merged_delta(lr, module.weight.shape)
        b = None if module.bias is None else module.bias.double()
        if isinstance(module, torch.nn.Conv2d):
            merged.append(F.conv2d(x.double(), w, b, module.stride, module.padding, module.dilation))
        else:
            merged.append(F.linear(x.double(), w, b))
    return plain, merged


def close(a, b):
    return torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5)


def test_blending_rows_of_each_region_get_their_own_lora_and_the_others_none(flavour):
    ui = harness.start_webui([ROOT])
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    state_a = write_lora("dog_style", dm, [Q, CONV], seed=1)
    state_b = write_lora("cat_style", dm, [Q, CONV], seed=2, alpha=2.0)
    canvas = canvas_json("a dog <lora:dog_style:0.8>", "a cat", [{"name": "cat_style", "weight": 1.0}])
    capture = Capture(dm, [Q, CONV])
    try:
        result = run(ui, canvas)
    finally:
        capture.close()
    assert harness.reported_errors() == [] and "Omost note" not in result.infotexts[0]
    modules = dict(dm.named_modules())
    for path in (Q, CONV):
        seen = {"plain": 0, "a": 0, "b": 0}
        for x, out in capture.calls[path]:
            plain, (a, b) = plain_and_merged(modules[path], x, [factors(state_a, path, 0.8),
                                                                factors(state_b, path, 1.0)])
            for row in range(x.shape[0]):
                if torch.equal(out[row], plain[row]):
                    seen["plain"] += 1          # uncond, global and whole-canvas rows: bit-identical
                elif close(out[row], a[row]):
                    seen["a"] += 1
                else:
                    assert close(out[row], b[row]), f"{path} row {row} is neither plain nor one region's LoRA"
                    seen["b"] += 1
        # 2 steps, one row per region per step (batch 1): exactly 2 rows of each region
        assert seen["a"] == 2 and seen["b"] == 2 and seen["plain"] > 0, (path, seen)


@pytest.mark.parametrize("method", [omost.COUPLE, omost.OMOST])
def test_attention_methods_mask_the_update_to_the_region_pixels_and_tokens(flavour, method):
    ui = harness.start_webui([ROOT])
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    state_a = write_lora("dog_style", dm, [Q, K2, CONV], seed=3)
    canvas = canvas_json("a dog <lora:dog_style:1>", "a cat")
    clean = canvas_from_json(json.loads(canvas_json("a dog", "a cat")))
    region = 1 + [r.description for r in ordered_regions(clean)].index("a dog")
    capture = Capture(dm, [Q, K2, CONV])
    try:
        run(ui, canvas, method=method)
    finally:
        capture.close()
    assert harness.reported_errors() == []
    modules = dict(dm.named_modules())
    for path in (Q, CONV):
        for x, out in capture.calls[path]:
            plain, (merged,) = plain_and_merged(modules[path], x, [factors(state_a, path, 1.0)])
            if path == CONV:
                inside = torch.from_numpy(region_masks(clean, *out.shape[2:])[region])
                out_in, out_out = out[:, :, inside], out[:, :, ~inside]
                want_in, want_out = merged[:, :, inside], plain[:, :, ~inside]
            else:
                inside = torch.from_numpy(region_masks(clean, 8, 8)[region]).flatten()
                out_in, out_out, want_in, want_out = out[:, inside], out[:, ~inside], merged[:, inside], plain[:, ~inside]
            assert torch.equal(out_out, want_out), f"{path}: a pixel outside the region changed"
            assert close(out_in, want_in), f"{path}: inside the region the output is not the merged LoRA's"
    touched = 0
    for x, out in capture.calls[K2]:
        plain, (merged,) = plain_and_merged(modules[K2], x, [factors(state_a, K2, 1.0)])
        same = (out == plain).all(-1)
        assert close(out[~same], merged[~same])
        touched += int((~same).sum())
        assert int((~same).sum(-1).max()) in (0, 77)         # the region's one chunk of tokens, cond rows only
    assert touched > 0


def test_missing_name_weight_zero_and_no_lora_install_nothing_and_leave_the_image_as_without(flavour):
    from modules import shared
    from standin_core import memory
    ui = harness.start_webui([ROOT])
    plain = run(ui, canvas_json()).latents
    assert memory.current_loaded_models[0].object_patches == {}
    assert "model_function_wrapper" not in memory.current_loaded_models[0].model_options
    for tagged in (canvas_json("a dog <lora:nope:1>"), canvas_json("a dog <lora:nope:0>")):
        result = run(ui, tagged)
        assert torch.equal(result.latents, plain)
        assert memory.current_loaded_models[0].object_patches == {}
    missing = run(ui, canvas_json("a dog <lora:nope:1>"))
    note = missing.infotexts[0]
    assert "region LoRA 'nope' was not found" in note and shared.cmd_opts.lora_dir in note
    assert "<lora:nope:1>" in note                   # the canvas in the infotext keeps the tag (round trip)


def test_image_changes_and_the_model_is_unchanged_afterwards(flavour):
    ui = harness.start_webui([ROOT])
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    write_lora("dog_style", dm, [Q, K2, CONV], seed=4)
    before = {k: v.clone() for k, v in dm.state_dict().items()}
    plain_before = ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents
    without = run(ui, canvas_json()).latents
    for method in (omost.BLEND, omost.COUPLE):
        with_lora = run(ui, canvas_json("a dog <lora:dog_style:1>"), method=method).latents
        assert not torch.equal(with_lora, without)
        assert dm.state_dict().keys() == before.keys()          # patched, the state dict is the same
        plain_after = ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents
        assert torch.equal(plain_after, plain_before)
        assert all(torch.equal(v, before[k]) for k, v in dm.state_dict().items())


def test_sdxl_shaped_key(flavour):
    ui = harness.start_webui([ROOT], family="sdxl")
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    state = write_lora("xl_style", dm, [XL_Q], seed=5)
    capture = Capture(dm, [XL_Q])
    try:
        run(ui, canvas_json("a dog", "a cat <lora:xl_style:0.5>"))
    finally:
        capture.close()
    assert harness.reported_errors() == []
    module = dict(dm.named_modules())[XL_Q]
    changed = 0
    for x, out in capture.calls[XL_Q]:
        plain, (merged,) = plain_and_merged(module, x, [factors(state, XL_Q, 0.5)])
        for row in range(x.shape[0]):
            if not torch.equal(out[row], plain[row]):
                assert close(out[row], merged[row])
                changed += 1
    assert changed == 2


@pytest.mark.parametrize("method", [omost.BLEND, omost.COUPLE])
def test_hires_pass_runs_with_region_loras_and_leaves_the_model_unchanged(flavour, method):
    from standin_core import memory
    ui = harness.start_webui([ROOT])
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    write_lora("dog_style", dm, [Q, CONV], seed=6)
    before = {k: v.clone() for k, v in dm.state_dict().items()}
    plain = ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents
    result = run(ui, canvas_json("a dog <lora:dog_style:1>"), method=method, enable_hr=True, hr_scale=1.5)
    assert harness.reported_errors() == [] and "Omost note" not in result.infotexts[0]
    patches = memory.current_loaded_models[0].object_patches        # the hires pass's clone: still ours
    assert sorted(patches) == sorted(f"diffusion_model.{p}.forward" for p in (Q, CONV))
    assert torch.equal(ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents, plain)
    assert all(torch.equal(v, before[k]) for k, v in dm.state_dict().items())


def test_blending_with_batch_2_cfg_1_and_split_calls(flavour):
    """Rows are found per region also with 2 images per batch, no uncond (CFG 1) and one chunk per call."""
    ui = harness.start_webui([ROOT])
    dm = shared_model().forge_objects_original.unet.model.diffusion_model
    state = write_lora("dog_style", dm, [Q], seed=1)
    canvas = canvas_json("a dog <lora:dog_style:1>", "a cat")
    for kw in (dict(batch_size=2), dict(cfg_scale=1)):
        cap = Capture(dm, [Q])
        try:
            args = ui.script_args({TITLE: [True, canvas, omost.BLEND, 1.0, 1.0]})
            with harness.force_split(1):
                r = ui.txt2img(script_args=args, prompt="", steps=2, **{"cfg_scale": 5, **kw})
        finally:
            cap.close()
        assert harness.reported_errors() == [] and "Omost note" not in r.infotexts[0]
        n = 0
        for x, out in cap.calls[Q]:
            plain, (m,) = plain_and_merged(dict(dm.named_modules())[Q], x, [factors(state, Q, 1.0)])
            for row in range(x.shape[0]):
                if not torch.equal(out[row], plain[row]):
                    assert close(out[row], m[row])
                    n += 1
        assert n == 2 * kw.get("batch_size", 1), (kw, n)


@pytest.mark.parametrize("has_update", [True, False])
def test_a_file_added_after_the_registry_was_listed_is_found_with_or_without_update_by_names(
        flavour, monkeypatch, has_update):
    """Forge Classic's `networks` has no update_available_networks_by_names: the full listing finds it."""
    import networks
    from lib_omost.forge.region_lora import find_lora_file
    from modules import shared
    networks.list_available_networks()
    if not has_update:
        monkeypatch.delattr(networks, "update_available_networks_by_names")
    path = os.path.join(shared.cmd_opts.lora_dir, "late_style.safetensors")
    safetensors.torch.save_file({"x": torch.zeros(1)}, path)
    assert "late_style" not in networks.available_network_aliases
    assert find_lora_file("late_style") == path
    assert find_lora_file("no_such_style") is None


def test_lora_factors_of_every_fork_form():
    from lib_omost.forge.region_lora import lora_factors
    up, down = torch.ones(4, 2), torch.ones(2, 4)

    class Adapter:                      # reForge: a LoRAAdapter with .weights
        name, weights = "lora", (up, down, 1.0, None, None, None)
    assert lora_factors(("lora", (up, down, 1.0, None, None))) == (up, down, 1.0, None)     # Forge main
    assert lora_factors(Adapter()) == (up, down, 1.0, None)
    assert lora_factors(("lora", (up, down, 1.0, None))) == (up, down, 1.0, None)           # Forge Classic
    assert lora_factors(("lora", (up, down, 1.0, None, torch.ones(4)))) is None             # DoRA
    assert lora_factors(("diff", (torch.ones(4, 4),))) is None


def test_reforge_loader_without_lora_convert_reads_kohya_keys_as_they_are(flavour, monkeypatch):
    """Forge Classic's ldm_patched has no lora_convert; its load_lora has no log_missing and returns (patches,
    unused keys)."""
    if flavour != "reforge":
        pytest.skip("the ldm_patched loader is reForge's (and Classic's)")
    import sys
    from ldm_patched.modules import lora
    from lib_omost.forge import region_lora
    harness.start_webui([ROOT])
    model = shared_model().forge_objects_original.unet
    state = write_lora("classic_style", model.model.diffusion_model, [Q], seed=3)
    from modules import shared
    filename = os.path.join(shared.cmd_opts.lora_dir, "classic_style.safetensors")
    expected = region_lora.unet_patches(model, filename)
    import ldm_patched.modules
    monkeypatch.setitem(sys.modules, "ldm_patched.modules.lora_convert", None)      # import fails
    monkeypatch.delattr(ldm_patched.modules, "lora_convert", raising=False)
    original = lora.load_lora
    monkeypatch.setattr(lora, "load_lora", lambda sd, to_load: (original(sd, to_load), {}))     # Classic's form
    got = region_lora.unet_patches(model, filename)
    assert got.keys() == expected.keys() and len(got) == 1
    assert all(torch.equal(a, b) for a, b in zip(region_lora.lora_factors(next(iter(got.values())))[:2],
                                                 region_lora.lora_factors(next(iter(expected.values())))[:2]))
    assert state
