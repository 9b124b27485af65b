"""Omost prediction blending: one masked cond per region through the WebUI's masked-condition support."""

import copy
import json
import os

import pytest
import torch

from lib_omost.canvas import canvas_to_json, example_canvas, ordered_regions, region_masks
from lib_omost.features import omost
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Omost"
CANVAS = omost.FEATURE.by_name["canvas"].default


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def args_for(ui, values, tab="txt2img"):
    return ui.script_args({TITLE: values}, tab)


def blend_args(ui, canvas_json=CANVAS, strength=1.0, end_percent=1.0):
    return args_for(ui, [True, canvas_json, omost.BLEND, strength, end_percent])


# --- pure pieces ------------------------------------------------------------------------------------

MASKS = torch.zeros(4, 5, 7, dtype=torch.bool)
MASKS[0] = True
MASKS[1, 0:3, 0:4] = True
MASKS[2, 2:5, 3:7] = True
MASKS[3, 1:4, 2:5] = True


@pytest.mark.parametrize("strength", [0.0, 0.35, 1.0])
def test_blend_weights_are_the_normalised_weighted_masks_and_sum_to_one(strength):
    weights = torch.tensor([1.0, 2.0, 0.0, 0.5], dtype=torch.float64)
    full, regional = omost.blend_weights(MASKS, weights, strength)
    assert full == pytest.approx(1.0 - strength)
    for i in range(5):
        for j in range(7):
            inside = [r for r in range(4) if MASKS[r, i, j]]
            total = sum(float(weights[r]) for r in inside)
            for r in range(4):
                expected = strength * float(weights[r]) / total if r in inside else 0.0
                assert float(regional[r, i, j]) == pytest.approx(expected, abs=1e-15)
    assert torch.allclose(full + regional.sum(0), torch.ones(5, 7, dtype=torch.float64), atol=1e-15)


def test_blend_parts_skip_what_costs_a_row_for_nothing():
    context = torch.randn(10, 3)
    contexts = [context[:4], context[4:6], context[6:9], context[9:]]
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    parts = omost.blend_parts(context, contexts, MASKS, weights, 1.0, regional=True)
    assert [p[0].shape[0] for p in parts] == [4, 2, 1]          # no whole-canvas part, region 2 has weight 0
    half = omost.blend_parts(context, contexts, MASKS, weights, 0.5, regional=True)
    assert half[0][0] is context and torch.equal(half[0][1], torch.full((5, 7), 0.5, dtype=torch.float64))
    for off in (omost.blend_parts(context, contexts, MASKS, weights, 1.0, regional=False),
                omost.blend_parts(context, contexts, MASKS, weights, 0.0, regional=True)):
        assert len(off) == 1 and off[0][0] is context and off[0][1] is None


class Wrapped:
    def __init__(self, cond):
        self.cond = cond


def test_masked_cond_items_keep_the_webui_classes_and_keys_and_sum_strength_to_one():
    template = {"model_conds": {"c_crossattn": Wrapped(torch.zeros(1, 77, 3)), "y": Wrapped(torch.zeros(1, 6))},
                "cross_attn": torch.zeros(1, 77, 3), "strength": 1.5, "control": "cn", "mask": torch.ones(1, 5, 7)}
    parts = [(torch.ones(154, 3), torch.full((5, 7), 0.25, dtype=torch.float64)), (torch.ones(77, 3), None)]
    like = torch.zeros(1, 4, 5, 7, dtype=torch.float16)
    items = omost.masked_cond_items(template, parts, torch.arange(6.0), like)
    assert sum(item["strength"] for item in items) == pytest.approx(1.0)
    assert all(item["control"] == "cn" and isinstance(item["model_conds"]["c_crossattn"], Wrapped) for item in items)
    assert items[0]["model_conds"]["c_crossattn"].cond.shape == (1, 154, 3)
    assert torch.equal(items[0]["model_conds"]["y"].cond, torch.arange(6.0)[None])
    assert items[0]["mask"].dtype == torch.float16 and items[0]["mask"].shape == (1, 5, 7)
    assert "mask" not in items[1]                                  # 'everywhere' is the WebUI's unmasked cond
    assert template["strength"] == 1.5 and "mask" in template      # the WebUI's own item is left alone


# --- in the stand-in ----------------------------------------------------------------------------------

def test_one_unet_row_per_region_until_end_percent(flavour):
    ui = harness.start_webui([ROOT])
    canvas = example_canvas()
    with harness.record_unet_calls() as calls:
        ui.txt2img(script_args=blend_args(ui, end_percent=0.5), prompt="a cat", cfg_scale=5, steps=4)
    assert harness.reported_errors() == []
    by_step = {}
    for call in calls:
        sigma = float(call.transformer_options["sigmas"][0])
        by_step.setdefault(sigma, []).extend(call.cond_or_uncond)
    steps = [by_step[s] for s in sorted(by_step, reverse=True)]
    assert len(steps) == 4
    regions = 1 + len(canvas.regions)            # every example region covers pixels of a 64 x 64 image
    assert [chunks.count(0) for chunks in steps] == [regions, regions, 1, 1]
    assert all(chunks.count(1) == 1 for chunks in steps)


def test_changing_one_region_changes_the_image_only_inside_it(flavour):
    ui = harness.start_webui([ROOT])
    canvas = example_canvas()
    changed = copy.deepcopy(canvas)
    near = ordered_regions(changed)[-1]
    words = near.detailed_descriptions[0].split()
    near.detailed_descriptions[0] = " ".join(["zebra"] + words[1:])    # same word count: same token count
    runs = []
    for c in (canvas, changed):
        with harness.record_unet_calls() as calls:
            result = ui.txt2img(script_args=blend_args(ui, json.dumps(canvas_to_json(c))), prompt="a cat",
                                cfg_scale=5, steps=1, width=96, height=64)
        runs.append((result.latents, [call.context_shape for call in calls]))
    assert harness.reported_errors() == []
    assert runs[0][1] == runs[1][1]                        # the same batching, so rows are computed alike
    inside = torch.from_numpy(region_masks(canvas, 8, 12))[-1]         # the nearest region, at latent size
    difference = (runs[0][0] - runs[1][0]).abs().amax(dim=(0, 1))
    assert difference[~inside].max() < 1e-6
    assert difference[inside].max() > 1e-3


def record_blending(monkeypatch, items_at=4):
    """Every call of prediction blending's modifier, recorded as (model, x, sigma, the items it returns at
    ``items_at`` (4: the conds, 3: the unconds), model_options)."""
    from lib_omost.forge import omost_run
    seen = []
    made = omost_run.blending_modifier

    def recording(*args, **kwargs):
        modifier = made(*args, **kwargs)

        def record(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
            out = modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed)
            seen.append((model, x.clone(), timestep.clone(), out[items_at], model_options))
            return out
        return record
    monkeypatch.setattr(omost_run, "blending_modifier", recording)
    return seen


def test_the_webui_averages_the_region_predictions_by_weight(flavour, monkeypatch):
    """Our masked conds through the WebUI's own batching give sum_k w_k pred_k, pred_k run alone."""
    ui = harness.start_webui([ROOT])
    seen = record_blending(monkeypatch)
    ui.txt2img(script_args=blend_args(ui, strength=0.6), prompt="a cat", cfg_scale=5, steps=1, batch_size=2,
               width=72, height=56)
    assert harness.reported_errors() == []
    model, x, sigma, items, options = seen[0]
    if flavour == "forge":
        from backend.sampling.sampling_function import calc_cond_uncond_batch
    else:
        from ldm_patched.modules.samplers import calc_cond_uncond_batch
    blended, _ = calc_cond_uncond_batch(model, items, None, x, sigma, options)
    expected = torch.zeros_like(x, dtype=torch.float64)
    for item in items:
        alone = {k: v for k, v in item.items() if k != "mask"}
        pred, _ = calc_cond_uncond_batch(model, [alone], None, x, sigma, options)
        weight = item["mask"].to(torch.float64) if "mask" in item else torch.ones(1, 7, 9, dtype=torch.float64)
        expected += pred.to(torch.float64) * weight[:, None]
    assert len(items) == 2 + len(example_canvas().regions)        # whole canvas (0.4) + every region
    assert sum(item["strength"] for item in items) == pytest.approx(1.0)
    assert torch.allclose(blended.to(torch.float64), expected, atol=1e-5)


def test_hires_pass_blends_at_the_new_size_or_drops_the_regions(flavour):
    ui = harness.start_webui([ROOT])
    for keep in (True, False):
        args = args_for(ui, [True, CANVAS, omost.BLEND, 1.0, 1.0, omost.APPEND, keep])
        with harness.record_unet_calls() as calls:
            ui.txt2img(script_args=args, prompt="a cat", cfg_scale=5, enable_hr=True, hr_scale=1.5,
                       hr_second_pass_steps=1, hr_cfg=5, hr_additional_modules=["Use same choices"])
        assert harness.reported_errors() == []
        hires = [c for c in calls if c.x_shape[-1] == 12]
        assert hires and {c.x_shape[-2:] for c in hires} == {(12, 12)}
        conds = sum(c.cond_or_uncond.count(0) for c in hires)
        assert conds == (1 + len(example_canvas().regions) if keep else 1)


def test_split_calls_give_the_same_image_as_one_batched_call(flavour):
    ui = harness.start_webui([ROOT])
    kwargs = dict(script_args=blend_args(ui, strength=0.7), prompt="a cat", cfg_scale=5, steps=2, batch_size=2)
    batched = ui.txt2img(**kwargs).latents
    with harness.force_split(2), harness.record_unet_calls() as calls:
        split = ui.txt2img(**kwargs).latents
    assert harness.reported_errors() == []
    assert max(c.x_shape[0] for c in calls) <= 2          # one chunk of 2 images per call
    assert torch.allclose(batched, split, rtol=1e-4, atol=1e-4)        # float32 rounding of other batch shapes
