"""Per-region LoRA end to end against a running WebUI (see test_e2e_webui.py for the environment).

OMOST_E2E_LORA_DIR: the WebUI's LoRA folder (its --lora-dir, models/Lora by default); a synthetic SD1.5 LoRA
(kohya-style keys, both the LDM and the diffusers layer names) is written there. Unset: skipped.
"""

import json
import os

import numpy as np
import pytest
import torch

from tests.e2e.test_e2e_webui import (MIN_CHANGE, RECORD, TITLES, assert_no_extension_error, changed,
                                      example_canvas_json, generate, log_mark, png_info)  # noqa: F401 (fixture)

LORA_DIR = os.environ.get("OMOST_E2E_LORA_DIR")
NAME = "omost_e2e_region_style"
# SD1.5 layer shapes: (LoRA key, weight shape); kohya writes diffusers names, the WebUIs also map LDM names
LAYERS = {
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": (320, 320),
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (320, 768),
    "lora_unet_input_blocks_1_0_in_layers_2": (320, 320, 3, 3),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_v": (640, 640),
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2": (320, 1280),
}

TE_NAME = "omost_e2e_region_te"
# a text-encoder-only LoRA (kohya's SD1.5 CLIP-L names): what it changes comes from the region's encoded prompt
TE_LAYERS = {
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    "lora_te_text_model_encoder_layers_5_self_attn_v_proj": (768, 768),
    "lora_te_text_model_encoder_layers_11_mlp_fc1": (3072, 768),
}

pytestmark = pytest.mark.skipif(not LORA_DIR or RECORD, reason="OMOST_E2E_LORA_DIR is not set (or recording)")


def write_lora(name: str, layers: dict, scale: float = 0.05) -> str:
    import safetensors.torch
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in layers.items():
        rank = 4
        down = (rank, *shape[1:]) if len(shape) == 4 else (rank, shape[1])
        up = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
        state[key + ".lora_down.weight"] = (torch.randn(down, generator=g) * scale).half()
        state[key + ".lora_up.weight"] = (torch.randn(up, generator=g) * scale).half()
        state[key + ".alpha"] = torch.tensor(4.0)
    path = os.path.join(LORA_DIR, name + ".safetensors")
    safetensors.torch.save_file(state, path)
    return path


@pytest.fixture(scope="module")
def lora_file():
    path = write_lora(NAME, LAYERS)
    yield path
    os.remove(path)


@pytest.fixture(scope="module")
def te_lora_file():
    # small factors: with the random checkpoint (LayerNorms weight 1, bias 0) the encoded prompt's mean is
    # rounding noise, and the WebUI's "Original" emphasis divides by it; at factors x 0.1 it came out exactly
    # 0.0 for the region's prompt in real Forge (0 / 0: a NaN prompt, a black image); x 0.05 did not
    path = write_lora(TE_NAME, TE_LAYERS, scale=0.05)
    yield path
    os.remove(path)


def canvas_listing(name: str, weight: float) -> str:
    canvas = json.loads(example_canvas_json())
    canvas["regions"][0]["loras"] = [{"name": name, "weight": weight}]
    return json.dumps(canvas)


def change_inside_outside(a: np.ndarray, b: np.ndarray, margin: int = 8) -> tuple[float, float]:
    """Mean absolute change inside the first region's box (less the parts nearer regions cover) and outside
    the box grown by ``margin`` pixels (the VAE and the UNet's convolutions blur edges)."""
    canvas = json.loads(example_canvas_json())
    h, w = a.shape[:2]

    def box(rect, grow=0):
        top, bottom, left, right = rect
        mask = np.zeros((h, w), bool)
        mask[max(0, round(top * h / 90) - grow):round(bottom * h / 90) + grow,
             max(0, round(left * w / 90) - grow):round(right * w / 90) + grow] = True
        return mask
    first = canvas["regions"][0]
    inside = box(first["rect"])
    for other in canvas["regions"][1:]:
        if other["distance"] < first["distance"]:
            inside &= ~box(other["rect"], margin)
    outside = ~box(first["rect"], margin)
    diff = np.abs(a - b).mean(axis=2)
    return float(diff[inside].mean()), float(diff[outside].mean())


def canvas_with(tag: str) -> str:
    canvas = json.loads(example_canvas_json())
    canvas["regions"][0]["description"] += tag
    return json.dumps(canvas)


@pytest.mark.parametrize("method", ["Prediction blending", "Attention couple"])
def test_region_lora_changes_the_image_round_trips_and_leaves_the_model_unchanged(lora_file, method, log_mark):
    plain_before, _ = generate()
    args = lambda canvas: {TITLES["omost"]: {"args": [True, canvas, method]}}     # noqa: E731
    without, _ = generate(alwayson_scripts=args(canvas_with("")))
    tag = f" <lora:{NAME}:1>"
    with_lora, infotext = generate(alwayson_scripts=args(canvas_with(tag)))
    assert changed(with_lora, without) > MIN_CHANGE
    pasted = png_info(infotext)["Omost Canvas"]
    assert tag.strip() in pasted                                           # png-info keeps it: paste restores it
    again, _ = generate(alwayson_scripts=args(pasted))                     # the pasted canvas makes the same image
    assert np.array_equal(again, with_lora)
    listed, _ = generate(alwayson_scripts=args(canvas_listing(NAME, 1.0)))  # the JSON list form: the same LoRA
    assert np.array_equal(listed, with_lora)
    inside, outside = change_inside_outside(with_lora, without)
    print(f"{method}: mean change inside the region {inside:.3f}, outside {outside:.3f}, "
          f"ratio {inside / max(outside, 1e-9):.2f}")
    if method == "Prediction blending":       # only the region's own row: the change stays mostly inside
        assert inside > 2 * outside, (inside, outside)
    # attention methods: exact per layer (the stand-in tests), but self-attention and the convolutions of the
    # following layers carry the change across the whole of a small image; the ratio is printed, not asserted
    missing, infotext = generate(alwayson_scripts=args(canvas_with(" <lora:omost_no_such_lora:1>")))
    assert np.array_equal(missing, without) and "omost_no_such_lora" in infotext and "not found" in infotext
    plain_after, _ = generate()
    assert np.array_equal(plain_after, plain_before)                      # nothing stayed in the model
    new_log = log_mark()
    assert "region LoRAs on 5 layers" in new_log, new_log[-3000:]
    assert_no_extension_error(new_log)


def test_prompt_box_lora_still_acts_on_the_whole_image(lora_file, log_mark):
    canvas = {TITLES["omost"]: {"args": [True, example_canvas_json(), "Prediction blending"]}}
    without, _ = generate(alwayson_scripts=canvas)
    with_global, infotext = generate(prompt=f"a cat on a sofa <lora:{NAME}:1>", alwayson_scripts=canvas)
    assert changed(with_global, without) > MIN_CHANGE
    assert NAME in infotext                       # the WebUI's own "Lora hashes" / prompt keeps the tag
    new_log = log_mark()
    assert "region LoRAs" not in new_log          # the prompt box's LoRA is the WebUI's, not ours
    assert_no_extension_error(new_log)


@pytest.mark.parametrize("method", ["Prediction blending", "Attention couple"])
def test_region_text_encoder_lora_changes_only_through_the_regions_prompt(te_lora_file, method, log_mark):
    plain_before, _ = generate()
    args = lambda canvas: {TITLES["omost"]: {"args": [True, canvas, method]}}     # noqa: E731
    without, _ = generate(alwayson_scripts=args(canvas_with("")))
    te_only, infotext = generate(alwayson_scripts=args(canvas_with(f" <lora:{TE_NAME}:1:0>")))
    assert changed(te_only, without) > MIN_CHANGE, "the region's text-encoder LoRA changed nothing"
    assert "Omost note" not in infotext, infotext
    unet_only, _ = generate(alwayson_scripts=args(canvas_with(f" <lora:{TE_NAME}:0:1>")))
    assert np.array_equal(unet_only, without)     # the file has no UNet layer: its UNet weight does nothing
    inside, outside = change_inside_outside(te_only, without)
    print(f"{method}, text-encoder LoRA: mean change inside the region {inside:.3f}, outside {outside:.3f}, "
          f"ratio {inside / max(outside, 1e-9):.2f}")
    pasted = png_info(infotext)["Omost Canvas"]
    again, _ = generate(alwayson_scripts=args(pasted))
    assert np.array_equal(again, te_only)
    zero, _ = generate(alwayson_scripts=args(canvas_with(f" <lora:{TE_NAME}:0:0>")))
    assert np.array_equal(zero, without)                                   # weight 0: no LoRA
    plain_after, _ = generate()
    assert np.array_equal(plain_after, plain_before)      # the text encoder is unchanged afterwards
    new_log = log_mark()
    assert "text-encoder parts on 3 layers" in new_log, new_log[-3000:]
    assert "region LoRAs on" not in new_log                              # te only: no UNet part installed
    assert_no_extension_error(new_log)
