"""Per-region negative prompts (issue 17): the canvas field, prediction blending's masked unconds and the
attention methods' regional uncond rows."""

import copy
import json
import os
import re

import pytest
import torch

from lib_omost.attention.plan import AttnCall, LayerKey
from lib_omost.attention.regional import attention, couple_weights
from lib_omost.canvas import (CanvasError, canvas_to_code, canvas_to_comfyui, canvas_to_json, example_canvas,
                              has_negatives, load_canvas_text, ordered_regions, parse_answer, region_masks)
from lib_omost.canvas.cli import main as layout_main
from lib_omost.canvas.model import MAX_CANVAS_TEXT_CHARS, MAX_TEXT_CHARS
from lib_omost.features import omost
from tests.standin import harness
from tests.test_omost_blending import record_blending

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Omost"
CANVAS = omost.FEATURE.by_name["canvas"].default
ATTENTION_METHODS = (omost.OMOST, omost.COUPLE, omost.OVERLAY, omost.DENSE)


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def with_negatives(global_negative="", near="blurry, extra fingers", far=""):
    """The example canvas with negatives: the global one, the nearest region's and the farthest's."""
    canvas = example_canvas()
    canvas.global_region.negative = global_negative
    ordered = ordered_regions(canvas)
    ordered[-1].negative = near
    ordered[0].negative = far
    return canvas


def as_json(canvas) -> str:
    return json.dumps(canvas_to_json(canvas))


# --- the canvas ------------------------------------------------------------------------------------

def test_negatives_round_trip_and_are_omitted_when_empty():
    canvas = with_negatives("lowres", "blurry", "cartoon")
    data = canvas_to_json(canvas)
    assert data["global"]["negative"] == "lowres"
    assert [r.get("negative") for r in data["regions"]] == [r.negative or None for r in canvas.regions]
    again = load_canvas_text(json.dumps(data)).canvas
    assert again == canvas and has_negatives(again)
    plain = example_canvas()
    text = json.dumps(canvas_to_json(plain))
    assert '"negative"' not in text and not has_negatives(plain)
    explicit = json.loads(text)
    explicit["global"]["negative"] = ""
    explicit["regions"][0]["negative"] = None
    assert json.dumps(canvas_to_json(load_canvas_text(json.dumps(explicit)).canvas)) == text   # byte-identical


@pytest.mark.parametrize("where", ["global", "regions[1]"])
def test_bad_negatives_name_their_field(where):
    data = canvas_to_json(example_canvas())
    target = data["global"] if where == "global" else data["regions"][1]
    target["negative"] = ["blurry"]
    with pytest.raises(CanvasError, match=re.escape(f"{where}.negative: must be a string")):
        load_canvas_text(json.dumps(data))
    target["negative"] = "x" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(CanvasError, match=r"\.negative: text of .* too long"):
        load_canvas_text(json.dumps(data))
    target["negative"] = "\ud800"
    with pytest.raises(CanvasError, match=r"\.negative: character 0 is a lone surrogate"):
        load_canvas_text(json.dumps(data))


def test_negatives_count_toward_the_canvas_text_limit():
    data = canvas_to_json(example_canvas())
    for region in data["regions"]:
        region["negative"] = "n" * MAX_TEXT_CHARS
    data["global"]["negative"] = "n" * MAX_TEXT_CHARS
    needed = MAX_CANVAS_TEXT_CHARS // MAX_TEXT_CHARS + 1
    data["regions"] = (data["regions"] * needed)[:needed]
    with pytest.raises(CanvasError, match="characters of text, more than"):
        load_canvas_text(json.dumps(data))


def test_comfyui_export_drops_negatives_with_a_note(tmp_path, capsys):
    canvas = with_negatives("lowres")
    assert canvas_to_comfyui(canvas) == canvas_to_comfyui(example_canvas())
    assert "negative" not in json.dumps(canvas_to_comfyui(canvas))
    source = tmp_path / "canvas.json"
    source.write_text(as_json(canvas), encoding="utf-8")
    assert layout_main([str(source), "--comfyui", str(tmp_path / "comfy.json")]) == 0
    assert "has no negative prompts" in capsys.readouterr().out
    assert layout_main([as_path(tmp_path, example_canvas()), "--comfyui", str(tmp_path / "c2.json")]) == 0
    assert "negative" not in capsys.readouterr().out
    comfy = load_canvas_text(json.dumps(canvas_to_comfyui(canvas)))        # the list form still loads
    assert not has_negatives(comfy.canvas)


def as_path(tmp_path, canvas):
    path = tmp_path / "plain.json"
    path.write_text(as_json(canvas), encoding="utf-8")
    return str(path)


def test_the_llm_never_sees_or_writes_negatives():
    canvas = with_negatives("lowres, watermark", "blurry hands")
    code = canvas_to_code(canvas)
    assert "negative" not in code and "watermark" not in code and "blurry hands" not in code
    assert canvas_to_code(canvas) == canvas_to_code(example_canvas())
    written = code.replace("    tags=", "    negative='bad',\n    tags=", 1)
    with pytest.raises(CanvasError, match="has no argument 'negative'"):
        parse_answer(f"```python\n{written}```").canvas
    from lib_omost.forge import omost_chat
    session = omost_chat.new_session()
    omost_chat.canvas_to_chat(session, as_json(canvas))
    assert "watermark" not in session.conversation.last_answer and "negative" not in session.conversation.last_answer


# --- pure pieces ------------------------------------------------------------------------------------

def test_negative_texts_are_in_mask_order():
    canvas = with_negatives("lowres", "near thing", "far thing")
    count = len(canvas.regions)
    assert omost.negative_texts(canvas) == [(0, "lowres"), (1, "far thing"), (count, "near thing")]
    assert omost.negative_texts(example_canvas()) == []


def test_uncond_context_is_the_webui_negative_then_the_canvas_negatives():
    own = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    repeated = own.repeat(1, 4, 1)                                  # the WebUI repeated it to 12 tokens
    negatives = -torch.ones(5, 2, dtype=torch.float64)
    out = omost.with_negatives(repeated, 3, negatives)
    assert torch.equal(out, torch.cat([own, negatives.expand(2, -1, -1)], dim=1))
    with pytest.raises(ValueError, match="no repetition"):
        omost.with_negatives(repeated, 5, negatives)
    assert omost.negative_token_regions(3, torch.tensor([0, 2, 2])).tolist() == [0, 0, 0, 0, 2, 2]
    canvas = torch.full((7, 2), 9.0, dtype=torch.float64)
    swapped = omost.swap_context(torch.cat([repeated, repeated]), [1, 0], canvas, torch.zeros(1, 2),
                                 negatives=negatives, own_tokens=3)
    assert swapped.shape == (4, 8, 2)                   # common length of 7 (canvas) and 3 + 5 (uncond)
    assert torch.equal(swapped[:2], out)
    assert torch.equal(swapped[2:, :7], canvas.expand(2, -1, -1)) and swapped[2:, 7:].eq(0).all()


def test_blending_negatives_share_the_global_one_and_merge():
    negatives = torch.arange(6.0)[:, None]
    regions = torch.tensor([0, 0, 2, 2, 2, 3])
    full, per_region = omost.negative_blend_contexts(negatives, regions, 5)
    assert full is negatives
    assert per_region[1] is per_region[0] and per_region[4] is per_region[0]        # no negatives of their own
    assert per_region[2].flatten().tolist() == [0, 1, 2, 3, 4] and per_region[3].flatten().tolist() == [0, 1, 5]
    masks = torch.zeros(5, 2, 3, dtype=torch.bool)
    masks[0] = True
    masks[1, :, 0] = masks[2, 0] = masks[3, 1, 2] = masks[4, :, 1] = True
    weights = torch.tensor([1.0, 0.5, 1.0, 2.0, 1.0], dtype=torch.float64)
    parts = omost.blend_parts(full, per_region, masks, weights, 0.8, regional=True)
    merged = omost.merged_parts(parts)
    assert len(merged) == 4                               # whole canvas, global (+ regions 1, 4), 2, 3
    total = sum(w for _, w in merged)
    assert torch.allclose(total, torch.ones(2, 3, dtype=torch.float64), atol=1e-15)
    by_context = {id(c): w for c, w in merged}
    _, region_weight = omost.blend_weights(masks, weights, 0.8)
    assert torch.equal(by_context[id(per_region[0])], region_weight[0] + region_weight[1] + region_weight[4])


class Wrapped:
    def __init__(self, cond):
        self.cond = cond


def test_masked_uncond_items_keep_each_images_own_negative():
    own = torch.stack([torch.zeros(4, 3), torch.ones(4, 3)])              # two images, different negatives
    template = {"model_conds": {"c_crossattn": Wrapped(own), "y": Wrapped(torch.zeros(2, 6))}, "cross_attn": own}
    parts = [(torch.full((2, 3), 5.0), torch.full((2, 2), 0.5, dtype=torch.float64)), (torch.zeros(0, 3), None)]
    items = omost.masked_uncond_items(template, parts, torch.zeros(1, 4, 2, 2))
    first = items[0]["model_conds"]["c_crossattn"].cond
    assert first.shape == (2, 6, 3) and torch.equal(first[:, :4], own) and first[:, 4:].eq(5).all()
    assert torch.equal(items[1]["cross_attn"], own) and "mask" not in items[1]
    assert items[0]["model_conds"]["y"] is template["model_conds"]["y"]          # the negative's pooled vector
    assert sum(item["strength"] for item in items) == pytest.approx(1.0)


def test_tokenless_regions_hand_their_couple_weight_to_the_global_region():
    masks = torch.zeros(3, 4, dtype=torch.bool)
    masks[0] = True
    masks[1, :3] = True
    masks[2, 2:] = True
    for mode in ("average", "overlay"):
        plain = couple_weights(masks, mode, [1.0, 2.0, 1.0])
        moved = couple_weights(masks, mode, [1.0, 2.0, 1.0], to_global=[1])
        assert torch.equal(moved[1], torch.zeros(4, dtype=torch.float64)) and torch.equal(moved[2], plain[2])
        assert torch.equal(moved[0], plain[0] + plain[1])


# --- the regional stage on uncond rows (one attention layer, float64) --------------------------------

class SD15Info:
    """What the stage reads of the model: DenseDiffusion's timestep of a sigma."""

    def timestep(self, sigma):
        return 999.0            # early sampling, where DenseDiffusion acts (its factor is (t / 1000) ** 5)


def stage_inputs(seed=0, own_tokens=5, negatives_len=6):
    g = torch.Generator().manual_seed(seed)
    canvas = with_negatives("lowres", "near", "far")
    n_regions = 1 + len(canvas.regions)
    cond_regions = torch.arange(n_regions).repeat_interleave(3)
    negative_regions = torch.tensor([0, 0, 1, 1, n_regions - 1, n_regions - 1])[:negatives_len]
    length = max(len(cond_regions), own_tokens + negatives_len)
    q = torch.randn(4, 12 * 18, 16, generator=g, dtype=torch.float64)
    k = torch.randn(4, length, 16, generator=g, dtype=torch.float64)
    v = torch.randn(4, length, 16, generator=g, dtype=torch.float64)
    return canvas, cond_regions, negative_regions, q, k, v


def other_negative_tokens(negative_regions, region, k, v, own_tokens=5):
    """k, v with the uncond rows' (0, 1) tokens of one region's negative replaced by other random ones."""
    tokens = own_tokens + torch.nonzero(negative_regions == region).flatten()
    k2, v2 = k.clone(), v.clone()
    g = torch.Generator().manual_seed(7)
    k2[:2, tokens] = torch.randn(2, len(tokens), k.shape[2], generator=g, dtype=k.dtype)
    v2[:2, tokens] = torch.randn(2, len(tokens), v.shape[2], generator=g, dtype=v.dtype)
    return k2, v2


def stage_call(own_tokens=5, uncond_rows=(0, 1)):
    options = {omost.UNCOND_TOKENS: own_tokens} if own_tokens else {}
    return AttnCall(layer=LayerKey("input", 1, 0), heads=2, hw=(12, 18), latent_hw=(12, 18),
                    cond_rows=[r for r in range(4) if r not in uncond_rows], uncond_rows=list(uncond_rows),
                    sigmas=torch.tensor([5.0]), options=options)


def make_stage(canvas, regions, method, negative_regions=None, strength=1.0):
    return omost.RegionalStage(canvas, regions, method, strength, 0.0, SD15Info(),
                               negative_regions=negative_regions)


def outer(q, k, v, call):
    raise AssertionError("the regional stage passed the call on")


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_without_canvas_negatives_uncond_rows_are_plain_attention_bit_for_bit(method):
    canvas, regions, negative_regions, q, k, v = stage_inputs()
    call = stage_call()
    out = make_stage(canvas, regions, method)(q, k, v, call, outer)
    assert torch.equal(out[:2], attention(q[:2], k[:2], v[:2], 2))
    # a canvas with negatives whose UNet call carries no negative-prompt length (no uncond this step)
    unknown = make_stage(canvas, regions, method, negative_regions)(q, k, v, stage_call(own_tokens=None), outer)
    assert torch.equal(unknown, out)


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_uncond_rows_get_the_method_with_the_negatives_map(method):
    canvas, regions, negative_regions, q, k, v = stage_inputs()
    stage = make_stage(canvas, regions, method, negative_regions)
    out = stage(q, k, v, stage_call(), outer)
    plain_stage = make_stage(canvas, regions, method)
    assert torch.equal(out[2:], plain_stage(q, k, v, stage_call(), outer)[2:])      # cond rows as without
    uncond_only = make_stage(canvas, regions, method, negative_regions)
    layout = uncond_only.layout((12, 18), k.shape[1], q.dtype, q.device, 5)
    expected = uncond_only.attend(q[:2], k[:2], v[:2], stage_call(), layout, None)
    assert torch.equal(out[:2], expected)
    assert not torch.allclose(out[:2], attention(q[:2], k[:2], v[:2], 2))


@pytest.mark.parametrize("method", [omost.OMOST, omost.COUPLE, omost.OVERLAY])
def test_hard_mask_methods_change_uncond_rows_only_inside_the_region(method):
    """Changing the nearest region's negative tokens changes the uncond rows' output only at its pixels."""
    canvas, regions, negative_regions, q, k, v = stage_inputs()
    near = len(canvas.regions)
    k2, v2 = other_negative_tokens(negative_regions, near, k, v)
    stage = make_stage(canvas, regions, method, negative_regions)
    before, after = stage(q, k, v, stage_call(), outer), stage(q, k2, v2, stage_call(), outer)
    inside = torch.from_numpy(region_masks(canvas, 12, 18))[near].flatten()
    change = (before - after).abs().amax(dim=(0, 2))
    assert torch.equal(change[~inside], torch.zeros_like(change[~inside]))          # exactly zero outside
    assert bool((change[inside] > 1e-6).all())
    assert torch.equal(before[2:], after[2:])                                       # cond rows untouched


# --- in the stand-in ----------------------------------------------------------------------------------

def args_for(ui, canvas_json, method, strength=1.0, end_percent=1.0, tab="txt2img"):
    return ui.script_args({TITLE: [True, canvas_json, method, strength, end_percent]}, tab)


def test_infotext_and_api_carry_the_negatives(flavour):
    ui = harness.start_webui([ROOT])
    canvas = with_negatives("lowres", "blurry")
    result = ui.api_txt2img({"prompt": "a cat", "negative_prompt": "ugly", "steps": 2, "width": 64, "height": 64,
                             "seed": 3, "cfg_scale": 5,
                             "alwayson_scripts": {TITLE: {"args": [True, as_json(canvas), omost.COUPLE]}}})
    assert harness.reported_errors() == [] and "Omost note" not in result.extra_generation_params
    pasted = ui.paste(result.infotexts[0])
    script = ui.script(TITLE)
    restored = load_canvas_text(pasted[ui.runner().inputs[script.args_from + 1]]).canvas
    assert canvas_to_json(restored) == canvas_to_json(canvas)


def test_without_negatives_the_uncond_rows_keep_the_webui_context(flavour):
    """Calls and their context lengths are those of a canvas without negatives, and an empty negative is
    no negative: the same image bit for bit."""
    ui = harness.start_webui([ROOT])
    data = canvas_to_json(example_canvas())
    data["global"]["negative"] = ""
    for region in data["regions"]:
        region["negative"] = ""
    for method in (omost.OMOST, omost.BLEND):
        runs = []
        for text in (CANVAS, json.dumps(data)):
            with harness.record_unet_calls() as calls:
                result = ui.txt2img(script_args=args_for(ui, text, method), prompt="a cat",
                                    negative_prompt="ugly", cfg_scale=5)
            runs.append((result.latents, [(c.context_shape, c.cond_or_uncond) for c in calls]))
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert harness.reported_errors() == []


def uncond_lengths(calls):
    return {c.context_shape[1] for c in calls}


def test_attention_methods_extend_the_uncond_context(flavour):
    ui = harness.start_webui([ROOT])
    canvas = with_negatives("lowres", "blurry " * 80)                  # 2 chunks for the nearest region
    with harness.record_unet_calls() as calls:
        ui.txt2img(script_args=args_for(ui, as_json(canvas), omost.OMOST), prompt="a cat",
                   negative_prompt="ugly", cfg_scale=5)
    assert harness.reported_errors() == []
    # canvas: 8 chunks; uncond: 1 (WebUI) + 1 (global) + 2 (region) = 4 chunks: common length 8 chunks
    assert uncond_lengths(calls) == {77 * 8}


def one_step(ui, canvas, method, **extra):
    return ui.txt2img(script_args=args_for(ui, as_json(canvas), method, **extra), prompt="a cat",
                      negative_prompt="ugly", cfg_scale=5, steps=1, width=96, height=64).latents


def changed_near_negative(canvas):
    changed = copy.deepcopy(canvas)
    near = ordered_regions(changed)[-1]
    near.negative = near.negative.replace("blurry", "zebra")              # the same token count
    return changed


def test_blending_a_changed_region_negative_changes_only_inside_it(flavour):
    ui = harness.start_webui([ROOT])
    canvas = with_negatives("lowres", "blurry, extra fingers", "cartoon")
    before, after = one_step(ui, canvas, omost.BLEND), one_step(ui, changed_near_negative(canvas), omost.BLEND)
    plain = one_step(ui, example_canvas(), omost.BLEND)
    assert harness.reported_errors() == []
    inside = torch.from_numpy(region_masks(canvas, 8, 12))[-1]
    difference = (before - after).abs().amax(dim=(0, 1))
    assert torch.equal(difference[~inside], torch.zeros_like(difference[~inside]))   # exactly zero outside
    assert difference[inside].max() > 1e-3
    assert not torch.equal(before, plain)


def test_blending_uncond_prediction_is_the_weighted_masked_negatives(flavour, monkeypatch):
    """The WebUI's batching of our masked unconds gives sum_k w_k pred_k (pred_k: that uncond alone), and
    changing one region's negative moves the uncond prediction only inside that region, exactly."""
    ui = harness.start_webui([ROOT])
    seen = record_blending(monkeypatch, items_at=3)          # the unconds the modifier returns
    canvas = with_negatives("lowres", "blurry, extra fingers", "cartoon")
    for c in (canvas, changed_near_negative(canvas)):
        ui.txt2img(script_args=args_for(ui, as_json(c), omost.BLEND), prompt="a cat",
                   negative_prompt="ugly", cfg_scale=5, steps=1, width=72, height=56)
    assert harness.reported_errors() == []
    if flavour == "forge":
        from backend.sampling.sampling_function import calc_cond_uncond_batch
    else:
        from ldm_patched.modules.samplers import calc_cond_uncond_batch
    predictions = []
    for model, x, sigma, items, options in seen:
        _, blended = calc_cond_uncond_batch(model, None, items, x, sigma, options)
        expected = torch.zeros_like(x, dtype=torch.float64)
        for item in items:
            _, alone = calc_cond_uncond_batch(model, None, [{k: v for k, v in item.items() if k != "mask"}], x,
                                              sigma, options)
            weight = item["mask"].to(torch.float64) if "mask" in item else torch.ones(1, 7, 9, dtype=torch.float64)
            expected += alone.to(torch.float64) * weight[:, None]
        # the global negative (with the regions without one), the two regions' own (strength 1: no whole-canvas
        # part, which holds every negative)
        assert len(items) == 3
        assert torch.allclose(blended.to(torch.float64), expected, atol=1e-4)         # float32 UNet, |pred| ~ 40
        predictions.append(blended)
    inside = torch.from_numpy(region_masks(canvas, 7, 9))[-1]
    difference = (predictions[0] - predictions[1]).abs().amax(dim=(0, 1))
    assert torch.equal(difference[~inside], torch.zeros_like(difference[~inside]))
    assert difference[inside].min() > 0


def test_densediffusion_pushes_a_region_negative_into_its_region():
    """DenseDiffusion is soft: a pixel that only the global region covers gets plain attention (its size
    factor S_i is 0), so it sees every region's negative, as it sees every region's positive. On the
    pixels of other regions the changed region's tokens are pushed to the row minimum: the change there is
    a fraction of the change inside (measured: inside / other regions = 6.8)."""
    canvas, regions, negative_regions, q, k, v = stage_inputs()
    near = len(canvas.regions)
    k2, v2 = other_negative_tokens(negative_regions, near, k, v)
    stage = make_stage(canvas, regions, omost.DENSE, negative_regions)
    change = (stage(q, k, v, stage_call(), outer) - stage(q, k2, v2, stage_call(), outer)).abs().mean(dim=(0, 2))
    masks = torch.from_numpy(region_masks(canvas, 12, 18)).flatten(1)
    inside = masks[near]
    other_regions = masks[1:near].any(0) & ~inside
    ratio = float(change[inside].mean() / change[other_regions].mean())
    print(f"DenseDiffusion at one layer: mean |change| inside / in other regions = {ratio:.1f}")
    assert ratio > 5


# mean |change| of the latent inside the changed region / outside it, after one sampling step in the stand-in
# (measured: Omost 2.73, couple 2.49, overlay 2.57, DenseDiffusion 0.80: soft, see the test above)
CONCENTRATION = {omost.OMOST: 2.0, omost.COUPLE: 2.0, omost.OVERLAY: 2.0, omost.DENSE: None}


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_attention_methods_a_changed_region_negative_acts_mostly_inside_it(method):
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT])
        canvas = with_negatives("lowres", "blurry, extra fingers", "cartoon")
        before, after = one_step(ui, canvas, method), one_step(ui, changed_near_negative(canvas), method)
        plain = one_step(ui, example_canvas(), method)
        assert harness.reported_errors() == []
    inside = torch.from_numpy(region_masks(canvas, 8, 12))[-1]
    change = (before - after).abs().mean(dim=(0, 1))
    ratio = float(change[inside].mean() / change[~inside].mean())
    print(f"{method}: mean |change| inside / outside = {ratio:.2f}")
    if CONCENTRATION[method] is not None:
        assert ratio > CONCENTRATION[method]
    assert float(change.max()) > 1e-3 and not torch.equal(before, plain)


def test_cfg_1_says_the_negatives_had_no_effect(flavour):
    ui = harness.start_webui([ROOT])
    canvas = as_json(with_negatives("lowres"))
    for method in (omost.OMOST, omost.BLEND):
        at_one = ui.txt2img(script_args=args_for(ui, canvas, method), prompt="a cat", cfg_scale=1)
        assert "negative prompts had no effect" in at_one.extra_generation_params["Omost note"]
        at_five = ui.txt2img(script_args=args_for(ui, canvas, method), prompt="a cat", cfg_scale=5)
        assert "Omost note" not in at_five.extra_generation_params
        plain = ui.txt2img(script_args=args_for(ui, CANVAS, method), prompt="a cat", cfg_scale=1)
        assert "Omost note" not in plain.extra_generation_params
    hires = ui.txt2img(script_args=args_for(ui, canvas, omost.COUPLE), prompt="a cat", cfg_scale=5,
                       enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_cfg=1,
                       hr_additional_modules=["Use same choices"])
    assert "(the hires pass)" in hires.extra_generation_params["Omost note"]
    assert harness.reported_errors() == []


def test_hires_pass_and_split_calls_with_negatives(flavour):
    ui = harness.start_webui([ROOT])
    canvas = as_json(with_negatives("lowres", "blurry"))
    for method in (omost.COUPLE, omost.BLEND):
        kwargs = dict(script_args=args_for(ui, canvas, method, strength=0.8), prompt="a cat",
                      negative_prompt="ugly", cfg_scale=5, steps=2, batch_size=2)
        batched = ui.txt2img(**kwargs).latents
        with harness.force_split(2):
            split = ui.txt2img(**kwargs).latents
        assert torch.allclose(batched, split, rtol=1e-4, atol=1e-4), method
        ui.txt2img(**kwargs, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_cfg=5,
                   hr_additional_modules=["Use same choices"])
    assert harness.reported_errors() == []


def test_too_many_negative_chunks_are_refused_before_encoding():
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT])
        canvas = example_canvas()
        canvas.regions = [copy.deepcopy(canvas.regions[0]) for _ in range(9)]
        for region in canvas.regions:
            region.negative = " ".join(["ox"] * 3000)           # 40 chunks each
        plain = ui.txt2img(prompt="a cat", cfg_scale=5)
        refused = ui.txt2img(script_args=args_for(ui, as_json(canvas), omost.OMOST), prompt="a cat", cfg_scale=5)
        note = refused.extra_generation_params["Omost note"]
        assert "negative prompts make" in note and "did not run" in note
        assert torch.equal(refused.latents, plain.latents)


def test_the_readme_example_with_negatives_loads():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("### Negative prompt per region"):]
    example = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    canvas = load_canvas_text(example).canvas
    assert canvas.global_region.negative == "lowres, watermark"
    assert [r.negative for r in canvas.regions] == ["extra fingers, (deformed hands:1.2)", "blue, rust"]


def test_context_wrapper_extends_uncond_rows_and_keeps_swapping_the_pooled_vector():
    from lib_omost.forge.omost_run import context_wrapper
    seen = {}

    def apply_model(x, t, **c):
        seen.update(c)
        return x
    canvas_context, vector = torch.full((6, 2), 3.0), torch.full((4,), 7.0)
    negatives = torch.full((4, 2), -1.0)
    wrapper = context_wrapper(canvas_context, vector, None, torch.zeros(2, 2), negatives)
    own = torch.cat([torch.zeros(2, 4, 2), torch.ones(2, 4, 2)])             # uncond rows first, 2 images
    c = {"c_crossattn": own.repeat(1, 2, 1), "y": torch.zeros(4, 4),           # repeated by the WebUI to 8
         "transformer_options": {omost.UNCOND_TOKENS: 4}}
    wrapper(apply_model, {"input": torch.zeros(4), "timestep": torch.zeros(4), "c": c, "cond_or_uncond": [1, 0]})
    context = seen["c_crossattn"]
    assert context.shape == (4, 24, 2)                   # LCM of 6 (canvas) and 4 + 4 (uncond)
    assert torch.equal(context[:2], torch.cat([own[:2], negatives.expand(2, -1, -1)], 1).repeat(1, 3, 1))
    assert context[2:].eq(3).all()
    assert seen["y"][:2].eq(0).all() and seen["y"][2:].eq(7).all()
    seen.clear()
    wrapper(apply_model, {"input": torch.zeros(2), "timestep": torch.zeros(2), "cond_or_uncond": [0],
                          "c": {"c_crossattn": own[2:], "y": torch.zeros(2, 4)}})   # CFG 1: no uncond rows
    assert seen["c_crossattn"].eq(3).all() and seen["y"].eq(7).all()


def test_sdxl_every_method_with_negatives_and_a_long_negative_prompt():
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT], family="sdxl")
        canvas = as_json(with_negatives("lowres", "blurry"))
        for method in omost.METHODS:
            kwargs = dict(prompt="a cat", negative_prompt=" ".join(["ugly"] * 90), cfg_scale=5, width=72,
                          height=56, batch_size=2)
            plain = ui.txt2img(script_args=args_for(ui, CANVAS, method), **kwargs).latents
            ours = ui.txt2img(script_args=args_for(ui, canvas, method), **kwargs).latents
            assert torch.isfinite(ours).all() and not torch.equal(plain, ours), method
        assert harness.reported_errors() == []
