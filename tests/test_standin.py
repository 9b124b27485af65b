"""The WebUI stand-in itself: layouts, patch call sites, batching, processing order, UI/API/xyz plumbing.

Every expectation here is a fact read from the real code (Forge main dfdcbab6, reForge 3b56b268); see the
header comment of each stand-in file for where it comes from.
"""

import math
import textwrap

import pytest
import torch

from tests.standin import harness

FLAVOURS = harness.FLAVOURS

PROBE_SCRIPT = textwrap.dedent('''
    import gradio as gr
    from modules import scripts, script_callbacks
    from modules.ui_components import InputAccordion


    def apply_strength(p, x, xs):
        p.probe_strength_override = x


    def register_axis():
        for data in scripts.scripts_data:
            if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
                data.module.axis_options.append(data.module.AxisOption("[Probe] Strength", int, apply_strength))


    script_callbacks.on_before_ui(register_axis)


    class Probe(scripts.Script):
        sorting_priority = 5

        def __init__(self):
            self.calls, self.ui_calls = [], 0

        def title(self):
            return "Standin Probe"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            self.ui_calls += 1
            with InputAccordion(False, label="Probe") as enabled:
                strength = gr.Slider(label="Strength", minimum=0, maximum=10, value=3, step=1)
                word = gr.Textbox(label="Word", value="x")
            self.infotext_fields = [(enabled, lambda d: "Probe strength" in d), (strength, "Probe strength"),
                                    (word, "Probe word")]
            self.paste_field_names = ["Probe strength"]
            return [enabled, strength, word]

        def process_before_every_sampling(self, p, enabled, strength, word, **kwargs):
            strength = getattr(p, "probe_strength_override", strength)
            unet = p.sd_model.forge_objects.unet
            self.calls.append(dict(enabled=enabled, strength=strength, word=word, hr=p.is_hr_pass,
                                   unet_is_original=unet is p.sd_model.forge_objects_original.unet,
                                   uc_is_none=kwargs["uc"] is None, x_shape=tuple(kwargs["x"].shape),
                                   args_type=type(p.script_args).__name__))
            if not enabled:
                return
            unet = unet.clone()
            unet.set_model_attn1_output_patch(lambda n, extra_options: n * (1.0 + strength / 100.0))
            p.sd_model.forge_objects.unet = unet
            p.extra_generation_params["Probe strength"] = strength
            p.extra_generation_params["Probe word"] = word
''')


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


@pytest.fixture
def probe_dir(tmp_path):
    (tmp_path / "probe_ext" / "scripts").mkdir(parents=True)
    (tmp_path / "probe_ext" / "scripts" / "probe.py").write_text(PROBE_SCRIPT)
    return str(tmp_path / "probe_ext")


def plain_attention(q, k, v, extra_options):
    from standin_core.attention import heads_attention
    return heads_attention(q, k, v, extra_options["n_heads"])


def unet_inputs(sd_model, prompts, x):
    cond = sd_model.get_learned_conditioning(prompts)
    if isinstance(cond, dict):
        return {"c_crossattn": cond["crossattn"], "y": cond["vector"]}
    return {"c_crossattn": cond}


def run_unet(unet, x, sigma, kwargs):
    to = dict(unet.model_options["transformer_options"])
    return unet.model.apply_model(x, sigma, transformer_options=to, **kwargs)


# --- UNet layout and call sites -------------------------------------------------------------------------

EXPECTED_LAYERS = {
    "sd15": {("input", n) for n in (1, 2, 4, 5, 7, 8)} | {("middle", 0)} | {("output", n) for n in range(3, 12)},
    "sdxl": {("input", n) for n in (4, 5, 7, 8)} | {("middle", 0)} | {("output", n) for n in range(6)},
}
SDXL_DEPTH = {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10,
              ("output", 0): 10, ("output", 1): 10, ("output", 2): 10, ("output", 3): 2, ("output", 4): 2,
              ("output", 5): 2}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_unet_layout_heads_tokens_and_identity_replace(flavour, family):
    model = harness.make_sd_model(family)
    unet = model.forge_objects.unet
    x = torch.randn(2, 4, 17, 25, generator=torch.Generator().manual_seed(0))   # 200x136 px: odd latent sizes
    kwargs = unet_inputs(model, ["a red cat", "a dog"], x)
    sigma = torch.tensor([2.0, 2.0])
    plain = run_unet(unet, x, sigma, kwargs)
    assert plain.shape == x.shape and torch.isfinite(plain).all()

    seen = []

    def replace(q, k, v, extra_options):
        seen.append((extra_options["block"], extra_options["block_index"], extra_options["transformer_index"],
                     extra_options["n_heads"], extra_options["dim_head"], q.shape[1],
                     tuple(extra_options["original_shape"])))
        return plain_attention(q, k, v, extra_options)

    patched = unet.clone()
    patched.set_model_replace_all(replace, "attn1")
    patched.set_model_replace_all(replace, "attn2")
    out = run_unet(patched, x, sigma, kwargs)
    # the replace gets projected q/k/v and to_out is applied after it: same numbers as no patch at all
    assert torch.equal(out, plain)

    blocks = {s[0] for s in seen}
    assert blocks == EXPECTED_LAYERS[family]
    per_block = {b: {s[1] for s in seen if s[0] == b} for b in blocks}
    depth = SDXL_DEPTH if family == "sdxl" else {b: 1 for b in blocks}
    assert per_block == {b: set(range(depth[b])) for b in blocks}
    assert len({(s[0], s[1]) for s in seen}) == (70 if family == "sdxl" else 16)
    # transformer_index counts spatial transformers across the UNet (not the depth index)
    assert sorted({s[2] for s in seen}) == list(range(11 if family == "sdxl" else 16))
    assert {s[6] for s in seen} == {(2, 4, 17, 25)}
    mc = harness.model_channels(unet)
    tokens_by_level = {1: 17 * 25, 2: 9 * 13, 4: 5 * 7}
    for block, _, _, heads, dim_head, tokens, _ in seen:
        channels = heads * dim_head
        if block == ("middle", 0):
            assert tokens == (3 * 4 if family == "sd15" else 5 * 7)   # ceil-halving, never sqrt(N)
        else:
            assert tokens == tokens_by_level[channels // mc]
        if family == "sd15":
            assert heads == 8
        else:
            assert heads == {2: 10, 4: 20}[channels // mc]


def test_replace_key_fallback_and_precedence(flavour):
    model = harness.make_sd_model("sd15")
    unet = model.forge_objects.unet.clone()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kwargs = unet_inputs(model, ["a cat"], x)
    hits = []

    def two_key(q, k, v, extra_options):
        hits.append(("two", extra_options["block"]))
        return plain_attention(q, k, v, extra_options)

    def three_key(q, k, v, extra_options):
        hits.append(("three", extra_options["block"]))
        return plain_attention(q, k, v, extra_options)

    unet.set_model_attn2_replace(two_key, "output", 9)                 # (block, number): fallback key
    unet.set_model_attn2_replace(two_key, "input", 4)
    unet.set_model_attn2_replace(three_key, "input", 4, 0)             # (block, number, index) wins
    assert set(unet.model_options["transformer_options"]["patches_replace"]["attn2"]) == {
        ("output", 9), ("input", 4), ("input", 4, 0)}
    run_unet(unet, x, torch.tensor([1.0]), kwargs)
    assert hits == [("three", ("input", 4)), ("two", ("output", 9))]


def test_transformer_and_extra_options_keys_per_flavour(flavour):
    unet = harness.make_sd_model("sd15").forge_objects.unet.clone()
    seen = []
    unet.set_model_attn1_patch(lambda n, c, v, extra_options: (seen.append(dict(extra_options)) or (n, c, v)))
    harness.load_model("sd15").forge_objects_after_applying_lora.unet = unet      # as a LoRA would leave it
    harness.plain_txt2img(prompt="a cat", negative_prompt="", batch_size=2, cfg_scale=5, steps=1)
    keys = set(seen[0])
    common = {"cond_or_uncond", "sigmas", "original_shape", "transformer_index", "block", "block_index", "n_heads",
              "dim_head"}
    assert common <= keys
    if flavour == "forge":
        assert keys - common == {"cond_mark", "cond_indices", "uncond_indices"}
        assert seen[0]["cond_indices"] == [2, 3] and seen[0]["uncond_indices"] == [0, 1]
        assert seen[0]["cond_mark"].tolist() == [1.0, 1.0, 0.0, 0.0]
    else:
        assert keys - common == {"activations_shape", "attn_precision", "uuids"}
        assert seen[0]["activations_shape"] == [4, 32, 8, 8]
    assert seen[0]["cond_or_uncond"] == [1, 0]
    assert seen[0]["sigmas"].shape == (2,)      # one sigma per image, not per row of the call


def test_block_modifiers_run_only_in_forge(flavour):
    model = harness.make_sd_model("sd15")
    unet = model.forge_objects.unet.clone()
    outer, inner = [], []
    unet.add_block_modifier(lambda h, when, to: (outer.append((to["block"], when)) or h))
    unet.add_block_inner_modifier(lambda x, when, layer, index, seq, to: (inner.append((to["block"], index, when)) or x))
    x = torch.randn(1, 4, 8, 8)
    out = run_unet(unet, x, torch.tensor([1.0]), unet_inputs(model, ["a"], x))
    assert torch.equal(out, run_unet(model.forge_objects.unet, x, torch.tensor([1.0]), unet_inputs(model, ["a"], x)))
    if flavour == "forge":
        blocks = [("input", i) for i in range(12)] + [("middle", 0)] + [("output", i) for i in range(12)] + [("last", 0)]
        assert outer == [(b, w) for b in blocks for w in ("before", "after")]
        assert (("input", 3), 0, "before") in inner and (("middle", 0), 2, "after") in inner
    else:
        assert outer == [] and inner == []
        # reForge's own hook for non-timestep layers: (layer class, handler) under forward_timestep_embed_patch
        from standin_core.unet import Downsample
        handled = []

        def handler(layer, x, emb, context, to, output_shape, *rest):
            handled.append(to["block"])
            return layer(x)

        unet.set_model_forward_timestep_embed_patch((Downsample, handler))
        run_unet(unet, x, torch.tensor([1.0]), unet_inputs(model, ["a"], x))
        assert handled == [("input", 3), ("input", 6), ("input", 9)]


def test_clone_deep_copies_model_options_but_not_closures(flavour):
    unet = harness.make_sd_model("sd15").forge_objects.unet

    class Stateful:
        def __init__(self):
            self.tensor = torch.zeros(1)

        def __call__(self, q, k, v, extra_options):
            return plain_attention(q, k, v, extra_options)

    def closure(n, extra_options):
        return n

    state = Stateful()
    a = unet.clone()
    a.set_model_attn1_output_patch(closure)
    a.set_model_attn1_replace(state, "input", 1, 0)
    b = a.clone()
    assert b.model_options is not a.model_options
    assert b.model_options["transformer_options"]["patches"]["attn1_output_patch"][0] is closure
    copied = b.model_options["transformer_options"]["patches_replace"]["attn1"][("input", 1, 0)]
    assert copied is not state and isinstance(copied, Stateful) and copied.tensor is not state.tensor
    b.set_model_attn1_output_patch(closure)
    assert len(a.model_options["transformer_options"]["patches"]["attn1_output_patch"]) == 1
    assert unet.model_options == {"transformer_options": {}}


# --- batching ----------------------------------------------------------------------------------------------

def generation_calls(prompt, negative, **kwargs):
    harness.load_model("sd15")
    with harness.record_unet_calls() as calls:
        result = harness.plain_txt2img(prompt=prompt, negative_prompt=negative, steps=1, **kwargs)
    return calls, result


def test_lcm_repetition_and_lcm_limit(flavour):
    long_prompt = "a BREAK b BREAK c"                      # 3 chunks: 231 tokens
    calls, _ = generation_calls(long_prompt, "n BREAK m", cfg_scale=5)   # 154 tokens: lcm 462 = 3 x 154
    assert [c.cond_or_uncond for c in calls] == [[1, 0]] and calls[0].context_shape == (2, 462, 16)
    calls, _ = generation_calls("a BREAK b BREAK c BREAK d BREAK e", "n", cfg_scale=5)   # 385 vs 77: ratio 5
    assert [c.cond_or_uncond for c in calls] == [[0], [1]]
    assert [c.context_shape for c in calls] == [(1, 385, 16), (1, 77, 16)]


def test_lcm_concat_repeats_each_cond(flavour):
    from standin_core.batching import ConditionCrossAttn
    a, b = torch.randn(2, 154, 3), torch.randn(2, 77, 3)
    assert ConditionCrossAttn(a).can_concat(ConditionCrossAttn(b))
    out = ConditionCrossAttn(b).concat([ConditionCrossAttn(a)])
    assert torch.equal(out, torch.cat([b.repeat(1, 2, 1), a]))
    assert not ConditionCrossAttn(torch.randn(2, 385, 3)).can_concat(ConditionCrossAttn(b))


def test_uncond_first_and_and_prompts(flavour):
    calls, _ = generation_calls("a cat AND a dog:0.5", "ugly", cfg_scale=5, batch_size=2)
    assert [c.cond_or_uncond for c in calls] == [[1, 0, 0]] and calls[0].x_shape[0] == 6
    if flavour == "forge":
        assert calls[0].transformer_options["uncond_indices"] == [0, 1]
        assert calls[0].transformer_options["cond_indices"] == [2, 3, 4, 5]


def test_cfg_one_has_no_uncond_chunk(flavour, probe_dir):
    webui = harness.start_webui([probe_dir])
    with harness.record_unet_calls() as calls:
        webui.txt2img(prompt="a cat", negative_prompt="ugly", cfg_scale=1.0, batch_size=2)
    assert [c.cond_or_uncond for c in calls] == [[0], [0]] and all(c.x_shape[0] == 2 for c in calls)
    probe = webui.script("Standin Probe")
    # Forge main sets p.uc = None at CFG 1; reForge computes it and the backend drops it
    assert probe.calls[-1]["uc_is_none"] is (flavour == "forge")


def test_forced_split_calls_match_batched(flavour):
    batched_calls, batched = generation_calls("a cat", "ugly", cfg_scale=5, batch_size=2)
    with harness.force_split(2):
        split_calls, split = generation_calls("a cat", "ugly", cfg_scale=5, batch_size=2)
    assert [c.cond_or_uncond for c in batched_calls] == [[1, 0]]
    assert [c.cond_or_uncond for c in split_calls] == [[1], [0]]
    # same math in other batch shapes: float32 rounding differs, CFG 5 amplifies it
    assert torch.allclose(split.latents, batched.latents, rtol=0, atol=1e-4 * float(batched.latents.abs().max()))
    assert not torch.equal(split.latents, torch.zeros_like(split.latents))


# --- processing, hires, scripts ------------------------------------------------------------------------

def test_hires_calls_per_flavour_and_forge_objects_restore(flavour, probe_dir):
    webui = harness.start_webui([probe_dir])
    probe = webui.script("Standin Probe")
    args = webui.script_args({"Standin Probe": [True, 4]})
    with harness.record_unet_calls() as calls:
        result = webui.txt2img(args, prompt="a cat", cfg_scale=5, enable_hr=True, hr_scale=1.5, hr_cfg=1.0,
                               denoising_strength=0.5)
    hr = [c["hr"] for c in probe.calls]
    fresh = [c["unet_is_original"] for c in probe.calls]
    if flavour == "forge":
        assert hr == [False, True, True] and fresh == [True, False, True]
    else:
        assert hr == [False, True] and fresh == [True, True]
    assert [c["x_shape"] for c in probe.calls][-1] == (1, 4, 12, 12)
    assert [c.cond_or_uncond for c in calls] == [[1, 0], [1, 0], [0], [0]]   # hires CFG 1: no uncond
    assert "Probe strength: 4" in result.infotexts[0] and "Probe word: x" in result.infotexts[0]


def test_off_means_identical_and_patch_changes_result(flavour, probe_dir):
    bare = harness.start_webui([])
    reference = bare.txt2img(prompt="a cat", cfg_scale=5).latents
    webui = harness.start_webui([probe_dir])
    off = webui.txt2img(prompt="a cat", cfg_scale=5).latents
    on = webui.txt2img(webui.script_args({"standin probe": [True, 9]}), prompt="a cat", cfg_scale=5).latents
    again = webui.txt2img(prompt="a cat", cfg_scale=5).latents
    assert torch.isfinite(reference).all()
    assert torch.equal(off, reference) and torch.equal(again, reference)
    assert not torch.allclose(on, reference)
    assert webui.script("Standin Probe").calls[0]["args_type"] == "tuple"


def test_exceptions_in_script_hooks_are_only_logged(flavour, tmp_path):
    (tmp_path / "bad" / "scripts").mkdir(parents=True)
    (tmp_path / "bad" / "scripts" / "bad.py").write_text(textwrap.dedent('''
        from modules import scripts
        class Bad(scripts.Script):
            def title(self):
                return "Bad"
            def show(self, is_img2img):
                return scripts.AlwaysVisible
            def ui(self, is_img2img):
                return []
            def process_before_every_sampling(self, p, *args, **kwargs):
                raise ValueError("boom")
    '''))
    webui = harness.start_webui([str(tmp_path / "bad")])
    result = webui.txt2img(prompt="a cat")
    assert result.latents.shape == (1, 4, 8, 8)
    assert any(isinstance(e, ValueError) for _, e in harness.reported_errors())


def test_extension_root_on_sys_path_and_script_module_name(flavour, probe_dir):
    import sys
    webui = harness.start_webui([probe_dir])
    assert probe_dir in sys.path
    probe = webui.script("Standin Probe")
    assert type(probe).__module__ == "probe.py" and "probe.py" not in sys.modules
    assert probe.alwayson and probe.args_to - probe.args_from == 3
    assert probe.api_info.args[1].value == 3 and probe.api_info.args[1].maximum == 10


# --- infotext, xyz, API ------------------------------------------------------------------------------

def test_infotext_formatting_round_trip(flavour, probe_dir):
    from modules import infotext_utils
    webui = harness.start_webui([probe_dir])
    args = webui.script_args({"Standin Probe": [True, 7, 'say, "hi": there']})
    result = webui.txt2img(args, prompt="a cat", negative_prompt="ugly", cfg_scale=5)
    text = result.infotexts[0]
    assert 'Probe word: "say, \\"hi\\": there"' in text
    params = infotext_utils.parse_generation_parameters(text)
    assert params["Probe word"] == 'say, "hi": there' and params["Probe strength"] == "7"
    assert params["Prompt"] == "a cat" and params["Negative prompt"] == "ugly"
    assert params["Size-1"] == "64" and params["Size-2"] == "64"
    pasted = webui.paste(text)
    probe = webui.script("Standin Probe")
    enabled, strength, word = webui.txt2img_runner.inputs[probe.args_from:probe.args_to]
    assert pasted[enabled] is True
    assert pasted[strength] == 7.0 and isinstance(pasted[strength], float)    # int component -> float
    assert pasted[word] == 'say, "hi": there'
    assert webui.paste("a dog\nSteps: 3, Sampler: Euler, CFG scale: 2")[enabled] is False


def test_send_to_carries_only_string_keyed_fields(flavour):
    from modules import infotext_utils
    a, b, c = object(), object(), object()
    source = [(a, "Probe strength"), (b, lambda params: 1)]
    target = [(c, "Probe strength"), (object(), lambda params: 2)]
    assert infotext_utils.send_to_values(source, target, ["Probe strength"], {a: 5, b: 6}) == {c: 5}


def test_xyz_cells_apply_on_shallow_copies(flavour, probe_dir):
    webui = harness.start_webui([probe_dir])
    xyz = webui.runner().selectable_scripts[0]
    axis = [o.label for o in xyz.current_axis_options].index("[Probe] Strength")
    xyz_args = [axis, "2, 5", None, 0, "", None, 0, "", None, True, False, False, False, False, False, False, 0, False]
    p, grid = webui.run_selectable("X/Y/Z plot", xyz_args, overrides={"Standin Probe": [True]}, prompt="a cat")
    probe = webui.script("Standin Probe")
    assert grid.xs == [2, 5]
    assert [c["strength"] for c in probe.calls] == [2, 5]
    assert not hasattr(p, "probe_strength_override")               # apply() got copies
    cells = [grid.cells[(i, 0, 0)] for i in range(2)]
    # copy(p) is shallow: every cell writes into p's own extra_generation_params dict
    assert all(cell.extra_generation_params is p.extra_generation_params for cell in cells)
    assert "Probe strength: 2" in cells[0].infotexts[0] and "Probe strength: 5" in cells[1].infotexts[0]


def test_xyz_axes_from_before_ui_missing_in_api_only_mode(flavour, probe_dir):
    ui_mode = harness.start_webui([probe_dir])
    assert "[Probe] Strength" in [o.label for o in ui_mode.runner().selectable_scripts[0].current_axis_options]
    api_only = harness.start_webui([probe_dir], nowebui=True)
    assert "[Probe] Strength" not in [o.label for o in api_only.runner().selectable_scripts[0].current_axis_options]


def test_api_args_map_in_order_with_ui_defaults_for_missing_trailing(flavour, probe_dir):
    from modules.api import api
    webui = harness.start_webui([probe_dir])
    probe = webui.script("Standin Probe")
    ui_calls = probe.ui_calls
    result = webui.api_txt2img({"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 3,
                                "alwayson_scripts": {"STANDIN probe": {"args": [True]}}})
    assert probe.ui_calls == ui_calls + 2                       # init_default_script_args calls ui() twice
    assert (probe.calls[-1]["enabled"], probe.calls[-1]["strength"], probe.calls[-1]["word"]) == (True, 3, "x")
    assert "Probe strength: 3" in result.infotexts[0]
    with pytest.raises(api.HTTPException) as error:
        webui.api_txt2img({"prompt": "a", "alwayson_scripts": {"nope": {"args": []}}})
    assert error.value.status_code == 422
    # an infotext in the request fills script args through the paste fields
    webui.api_txt2img({"prompt": "a", "steps": 1, "width": 64, "height": 64,
                       "infotext": "a\nSteps: 1, Sampler: Euler, Probe strength: 6, Probe word: w"})
    assert (probe.calls[-1]["enabled"], probe.calls[-1]["strength"], probe.calls[-1]["word"]) == (True, 6.0, "w")
    hires = {"prompt": "a", "steps": 1, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.5,
             "denoising_strength": 0.5}
    if flavour == "forge":                       # Forge main needs hr_additional_modules over the API
        with pytest.raises(TypeError):
            webui.api_txt2img(hires)
    else:
        webui.api_txt2img(hires)
    webui.api_txt2img({**hires, "hr_additional_modules": ["Use same choices"]})
    assert probe.calls[-1]["hr"] is True


# --- conditioning, schedule, callbacks, installer -----------------------------------------------------

def test_toy_clip_chunks_break_and_sdxl_sizes(flavour):
    from modules import prompt_parser
    sd15 = harness.make_sd_model("sd15")
    assert sd15.get_learned_conditioning(["a cat"]).shape == (1, 77, 16)
    assert sd15.get_learned_conditioning(["a BREAK b", "c"]).shape == (2, 154, 16)
    # "p q a b c, a b c, ...": commas at 5, 9, ..., 73; the word at 75 finds a full chunk whose last comma is
    # 2 tokens back, so the word after that comma moves to the next chunk and the first is padded with EOS
    words = "p q " + ", ".join(["a b c"] * 20)
    engine = next(iter(sd15.engines.values()))
    chunks, _ = engine.tokenize_line(words)
    comma = engine.comma_token
    assert len(chunks) == 2 and all(len(c.tokens) == 77 for c in chunks)
    assert chunks[0].tokens[-3:] == [comma, engine.id_end, engine.id_end]
    assert chunks[1].tokens[1:3] == engine.tokenize(["a b"])[0]
    escaped = sd15.get_learned_conditioning([r"a \(cat\)"])
    assert not torch.equal(escaped, sd15.get_learned_conditioning(["a (cat)"]))
    sdxl = harness.make_sd_model("sdxl")
    wide = sdxl.get_learned_conditioning(prompt_parser.SdConditioning(["a"], width=96, height=64))
    tall = sdxl.get_learned_conditioning(prompt_parser.SdConditioning(["a"], width=64, height=96))
    assert wide["crossattn"].shape == (1, 77, 32) and wide["vector"].shape == (1, 68)
    assert torch.equal(wide["crossattn"], tall["crossattn"]) and not torch.equal(wide["vector"], tall["vector"])
    neg = sdxl.get_learned_conditioning(prompt_parser.SdConditioning([""], is_negative_prompt=True))
    assert not neg["vector"][:, :20].any() and not neg["crossattn"].any()
    if flavour == "reforge":
        with pytest.raises(TypeError):
            prompt_parser.SdConditioning(["a"], distilled_cfg_scale=3.5)


def test_schedule_read_the_real_way(flavour):
    unet = harness.make_sd_model("sd15").forge_objects.unet
    if flavour == "forge":
        sampling = unet.model.predictor
    else:
        sampling = unet.get_model_object("model_sampling")
    assert sampling is harness.schedule(unet)
    assert sampling.percent_to_sigma(0.0) == 999999999.9 and sampling.percent_to_sigma(1.0) == 0.0
    sigmas = sampling.sigmas.double()
    assert math.isclose(sampling.percent_to_sigma(0.5), float(sampling.sigma(torch.tensor(499.5))), rel_tol=1e-6)
    assert sampling.timestep(sigmas[[0, 500, 999]].float()).tolist() == [0, 500, 999]
    assert math.isclose(float(sigmas[-1]), 14.6146, rel_tol=1e-3) and math.isclose(float(sigmas[0]), 0.0292, rel_tol=1e-2)
    assert harness.model_channels(unet) == 32


def test_flux_like_model_is_not_a_unet(probe_dir):
    with harness.use_flavour("forge"):
        webui = harness.start_webui([probe_dir])
        from modules import shared
        shared.sd_model = harness.make_sd_model("flux")
        assert not (shared.sd_model.is_sd1 or shared.sd_model.is_sd2 or shared.sd_model.is_sdxl)
        assert not hasattr(shared.sd_model.forge_objects.unet.model.diffusion_model, "input_blocks")
        result = webui.txt2img(prompt="a cat")
        assert "Distilled CFG Scale: 3.5" in result.infotexts[0]
    with harness.use_flavour("reforge"):
        with pytest.raises(ValueError):
            harness.make_sd_model("flux")


def test_callbacks_order_and_removal(flavour, tmp_path):
    (tmp_path / "cb" / "scripts").mkdir(parents=True)
    (tmp_path / "cb" / "scripts" / "cb.py").write_text(textwrap.dedent('''
        from modules import script_callbacks
        order = []
        script_callbacks.on_before_ui(lambda: order.append("first"))
        script_callbacks.on_before_ui(lambda: order.append("second"))
        script_callbacks.on_ui_settings(lambda: order.append("settings"))
        script_callbacks.on_app_started(lambda demo, app: order.append(("app", demo is None)))
        ORDER = order
    '''))
    from modules import script_callbacks
    harness.start_webui([str(tmp_path / "cb")])
    order = script_callbacks.callback_map["callbacks_before_ui"][0].callback.__globals__["ORDER"]
    assert order == ["second", "first", "settings", ("app", False)]
    harness.start_webui([str(tmp_path / "cb")], nowebui=True)
    order = script_callbacks.callback_map["callbacks_before_ui"][0].callback.__globals__["ORDER"]
    assert order == ["settings", "second", "first", ("app", True)]


def test_installer_runs_in_its_own_process_with_launch(flavour, tmp_path):
    ext = tmp_path / "inst"
    ext.mkdir()
    (ext / "install.py").write_text(textwrap.dedent('''
        import launch
        for name in ("numpy", "bitsandbytes"):
            if not launch.is_installed(name):
                launch.run_pip(f"install {name}==1.0", f"{name} for test")
        print("done")
    '''))
    code, out, err, calls = harness.run_installer(str(ext), str(tmp_path / "pip.log"), installed={"numpy": "1.26.2"})
    assert code == 0 and "done" in out
    assert calls == [["install bitsandbytes==1.0", "bitsandbytes for test"]]


def test_flavours_restore_modules():
    import sys
    with harness.use_flavour("forge"):
        import backend.patcher.unet as forge_unet
        assert "ldm_patched" not in sys.modules
    with harness.use_flavour("reforge"):
        assert "backend" not in sys.modules
        import ldm_patched.modules.model_patcher  # noqa: F401
    assert "backend" not in sys.modules and "ldm_patched" not in sys.modules and "modules" not in sys.modules
    assert forge_unet.UnetPatcher.__module__ == "backend.patcher.unet"
