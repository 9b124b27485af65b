"""Per-region LoRA, pure parts: the un-merged low-rank update equals the merged weight inside the gate and
leaves the layer output bit-identical outside it; tag parsing; the canvas LoRA list."""

import json

import pytest
import torch

from lib_omost.canvas import CanvasError, canvas_from_json, canvas_to_json
from lib_omost.features.region_lora import RegionLora, canvas_loras, lora_of_tag, take_tags
from lib_omost.unet.lora import (CONTEXT, CONV, TOKENS, Gate, add_gated, gated_forward, layer_kind, low_rank,
                                 merged_delta)

D = torch.float64


def _linear(inp, out, seed):
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(inp, out).to(D)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, inp, generator=g, dtype=D))
        layer.bias.copy_(torch.randn(out, generator=g, dtype=D))
    return layer


def _factors(out, inp, rank, seed, kernel=None, mid=False):
    g = torch.Generator().manual_seed(seed)
    if kernel is None:
        return torch.randn(out, rank, generator=g, dtype=D), torch.randn(rank, inp, generator=g, dtype=D), None
    up = torch.randn(out, rank, 1, 1, generator=g, dtype=D)
    if mid:
        return up, torch.randn(rank, inp, 1, 1, generator=g, dtype=D), torch.randn(rank, rank, *kernel, generator=g,
                                                                                    dtype=D)
    return up, torch.randn(rank, inp, *kernel, generator=g, dtype=D), None


def _merged_linear(layer, lr):
    merged = torch.nn.Linear(layer.in_features, layer.out_features).to(D)
    with torch.no_grad():
        merged.weight.copy_(layer.weight + merged_delta(lr, layer.weight.shape))
        merged.bias.copy_(layer.bias)
    return merged


def test_scale_is_weight_times_alpha_over_rank():
    up, down, _ = _factors(5, 4, 3, 0)
    assert low_rank(up, down, 6.0, None, 0.5).scale == 0.5 * 6.0 / 3
    assert low_rank(up, down, None, None, 0.5).scale == 0.5          # no alpha: the WebUIs use 1


def test_linear_tokens_inside_equals_merged_outside_bit_identical():
    layer = _linear(6, 5, 1)
    lr = low_rank(*_factors(5, 6, 2, 2)[:2], 3.0, None, 0.7)
    x = torch.randn(3, 12, 6, dtype=D)                 # [B, h*w, C] with h, w = 3, 4
    pixels = torch.zeros(3, 4, dtype=torch.bool)
    pixels[1:, 2:] = True
    gate = Gate(rows=torch.tensor([0, 2]), pixels=pixels)
    out = add_gated(layer(x), x, layer, TOKENS, lr, gate)
    plain, merged = layer(x), _merged_linear(layer, lr)(x)
    inside = pixels.flatten()
    assert torch.equal(out[1], plain[1])                            # row outside the gate
    assert torch.equal(out[:, ~inside], plain[:, ~inside])          # pixels outside the region
    torch.testing.assert_close(out[[0, 2]][:, inside], merged[[0, 2]][:, inside], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[[0, 2]][:, inside], plain[[0, 2]][:, inside])


def test_context_layer_acts_on_the_region_tokens_of_the_gate_rows():
    layer = _linear(4, 6, 3)
    lr = low_rank(*_factors(6, 4, 2, 4)[:2], None, None, 1.0)
    ctx = torch.randn(2, 7, 4, dtype=D)
    gate = Gate(rows=torch.tensor([1]), tokens=torch.tensor([2, 3, 5]))
    out = add_gated(layer(ctx), ctx, layer, CONTEXT, lr, gate)
    plain, merged = layer(ctx), _merged_linear(layer, lr)(ctx)
    assert torch.equal(out[0], plain[0])
    assert torch.equal(out[1, [0, 1, 4, 6]], plain[1, [0, 1, 4, 6]])
    torch.testing.assert_close(out[1, [2, 3, 5]], merged[1, [2, 3, 5]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mid", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_equals_merged_kernel_and_keeps_outside_pixels(mid, stride):
    conv = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1).to(D)
    up, down, middle = _factors(6, 4, 2, 5, kernel=(3, 3), mid=mid)
    lr = low_rank(up, down, 2.0, middle, 1.3)
    x = torch.randn(2, 4, 7, 9, dtype=D)
    merged = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1).to(D)
    with torch.no_grad():
        merged.weight.copy_(conv.weight + merged_delta(lr, conv.weight.shape))
        merged.bias.copy_(conv.bias)
    plain, want = conv(x), merged(x)
    pixels = torch.zeros(plain.shape[2:], dtype=torch.bool)
    pixels[: plain.shape[2] // 2] = True
    out = add_gated(conv(x), x, conv, CONV, lr, Gate(rows=torch.tensor([1]), pixels=pixels))
    assert torch.equal(out[0], plain[0])
    assert torch.equal(out[1][:, ~pixels], plain[1][:, ~pixels])
    torch.testing.assert_close(out[1][:, pixels], want[1][:, pixels], rtol=1e-12, atol=1e-12)


def test_two_regions_two_loras_and_weight_zero():
    layer = _linear(5, 5, 6)
    lr_a = low_rank(*_factors(5, 5, 2, 7)[:2], 1.0, None, 1.0)
    lr_b = low_rank(*_factors(5, 5, 3, 8)[:2], 1.0, None, 0.5)
    zero = low_rank(*_factors(5, 5, 3, 9)[:2], 1.0, None, 0.0)
    x = torch.randn(3, 4, 5, dtype=D)
    gates = {1: [Gate(rows=torch.tensor([0]))], 2: [Gate(rows=torch.tensor([1]))], 3: [Gate(rows=torch.tensor([2]))]}
    forward = gated_forward(layer, layer.forward, TOKENS, [(1, lr_a), (2, lr_b), (3, zero)],
                            lambda region, kind, x, out: [(region, g) for g in gates[region]])
    out = forward(x)
    torch.testing.assert_close(out[0], _merged_linear(layer, lr_a)(x)[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], _merged_linear(layer, lr_b)(x)[1], rtol=1e-12, atol=1e-12)
    assert torch.equal(out[2], layer(x)[2])                         # weight 0 = no LoRA, exactly


def test_no_gate_returns_the_original_output_unchanged():
    layer = _linear(3, 3, 10)
    lr = low_rank(*_factors(3, 3, 1, 11)[:2], None, None, 1.0)
    x = torch.randn(2, 4, 3, dtype=D)
    assert torch.equal(gated_forward(layer, layer.forward, TOKENS, [(1, lr)], lambda *a: [])(x), layer(x))


def test_layer_kind():
    assert layer_kind("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k", torch.nn.Linear(2, 2)) == CONTEXT
    assert layer_kind("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k", torch.nn.Linear(2, 2)) == TOKENS
    assert layer_kind("diffusion_model.input_blocks.1.0.in_layers.2", torch.nn.Conv2d(2, 2, 3)) == CONV


# ---- tags and the canvas list -------------------------------------------------------------------------

def test_tag_rules_follow_the_webui():
    assert lora_of_tag("x", "<lora:x>") == RegionLora("x", 1.0, 1.0)
    assert lora_of_tag("x:0.5", "t") == RegionLora("x", 0.5, 0.5)
    assert lora_of_tag("x:0.5:0.25", "t") == RegionLora("x", 0.5, 0.25)
    assert lora_of_tag("x:1:te=0.2:unet=0.3", "t") == RegionLora("x", 0.2, 0.3)
    text, loras, problems = take_tags("a cat <lora:cat_style:0.8>, sitting")
    assert text == "a cat , sitting" and loras == [RegionLora("cat_style", 0.8, 0.8)] and not problems
    assert take_tags("plain text") == ("plain text", [], [])


@pytest.mark.parametrize("text, fragment", [("<lora:x:abc>", "is not a number"),
                                             ("<lora:x:1:foo=2>", "unknown argument"),
                                             ("<hypernet:h:1>", "only <lora:...> acts per region"),
                                             ("a <lora:x:1", "without its closing")])
def test_bad_tags_are_reported(text, fragment):
    _, loras, problems = take_tags(text)
    assert not loras and any(fragment in p for p in problems), problems


def _canvas_json():
    return {"global": {"description": "a park <lora:light:0.5>", "color": "white"},
            "regions": [{"rect": [0, 90, 0, 45], "distance": 2, "color": "red", "description": "a dog <lora:dog:0.9>"},
                        {"rect": [0, 90, 45, 90], "distance": 5, "color": "blue", "description": "a cat",
                         "loras": [{"name": "cat", "weight": 0.7}, {"name": "off", "weight": 0}]}]}


def test_canvas_loras_in_mask_order_tags_removed():
    canvas = canvas_from_json(_canvas_json())
    clean, per_region, problems = canvas_loras(canvas)
    assert not problems
    # mask order: global, then far (distance 5, the cat) to near (the dog); weight 0 left out
    assert per_region == [[RegionLora("light", 0.5, 0.5)], [RegionLora("cat", 0.7, 0.7)],
                          [RegionLora("dog", 0.9, 0.9)]]
    assert clean.global_region.description == "a park" and clean.regions[0].description == "a dog"
    assert all(not r.loras for r in clean.regions)


def test_canvas_json_round_trip_keeps_the_lora_list_and_rejects_bad_entries():
    canvas = canvas_from_json(_canvas_json())
    again = canvas_from_json(json.loads(json.dumps(canvas_to_json(canvas))))
    assert again.regions[1].loras == [{"name": "cat", "weight": 0.7}, {"name": "off", "weight": 0}]
    assert "loras" not in canvas_to_json(canvas)["regions"][0]              # only where a region has one
    bad = _canvas_json()
    bad["regions"][1]["loras"] = [{"name": "cat", "weight": "high"}]
    with pytest.raises(CanvasError, match=r"regions\[1\]\.loras\[0\]\.weight: must be a number"):
        canvas_from_json(bad)
