"""Per-region LoRA, text-encoder part, through the stand-in WebUI (both flavours): LoRA files with kohya text-
encoder keys (SD1.5 lora_te_, SDXL lora_te1_ / lora_te2_) written here, read through the WebUI's CLIP key map
and loader; the region's chunks are encoded as with the LoRA merged into the text encoder, every other chunk
as without, and the text encoder is exactly as before afterwards."""

import json
import logging
import os
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

from lib_omost.canvas import canvas_from_json, ordered_regions
from lib_omost.features import omost
from lib_omost.features.region_lora import canvas_loras
from lib_omost.unet.lora import low_rank, merged_delta
from tests.standin import harness
from tests.test_region_lora_webui import ROOT, Capture, K2, canvas_json, flavour, run  # noqa: F401 (a fixture)

V0 = "text_model.encoder.layers.0.self_attn.v_proj"          # under <clip_l / clip_g>.transformer
V1 = "text_model.encoder.layers.1.self_attn.v_proj"          # SDXL: clip skip 2, only the pooled vector
LAYERS = {"sd15": [("lora_te_", "clip_l", V0), ("lora_te_", "clip_l", V1)],
          "sdxl": [("lora_te1_", "clip_l", V0), ("lora_te2_", "clip_g", V0), ("lora_te2_", "clip_g", V1)]}


def te_module(clip, encoder, path):
    return getattr(clip.cond_stage_model, encoder).transformer.get_submodule(path)


def write_te_lora(name, clip, layers, seed, rank=2, alpha=1.0, extra=None):
    """A kohya-style file: <prefix><layer path with _>.lora_down.weight / lora_up.weight / alpha per layer."""
    from modules import shared
    g = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, encoder, path in layers:
        weight = te_module(clip, encoder, path).weight
        key = prefix + path.replace(".", "_")
        state[key + ".lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=g) * 0.5
        state[key + ".lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=g) * 0.5
        state[key + ".alpha"] = torch.tensor(alpha)
    state.update(extra or {})
    filename = os.path.join(shared.cmd_opts.lora_dir, name + ".safetensors")
    safetensors.torch.save_file(state, filename)
    return state


def encode(model, text):
    """(crossattn, pooled or None) of one text as the WebUI encodes it, not through the extension's cache."""
    from modules.prompt_parser import SdConditioning
    cond = model.get_learned_conditioning(SdConditioning([text], width=64, height=64))
    return (cond["crossattn"][0], cond["vector"][0]) if isinstance(cond, dict) else (cond[0], None)


def merged_encode(model, text, state, layers, weight):
    """The encode with the LoRA merged into the text encoder's weights (restored afterwards)."""
    clip = model.forge_objects.clip
    saved = []
    try:
        for prefix, encoder, path in layers:
            key = prefix + path.replace(".", "_")
            module = te_module(clip, encoder, path)
            lr = low_rank(state[key + ".lora_up.weight"].to(module.weight), state[key + ".lora_down.weight"].to(
                module.weight), float(state[key + ".alpha"]), None, weight)
            saved.append((module, module.weight.detach().clone()))
            module.weight.data += merged_delta(lr, module.weight.shape)
        return encode(model, text)
    finally:
        for module, weight in saved:
            module.weight.data.copy_(weight)


def te_snapshot(clip):
    """The text encoder's weights and every module's own attributes (a forward left on an instance shows)."""
    model = clip.cond_stage_model
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {name: sorted(vars(m)) for name, m in model.named_modules()})


def same_te(clip, snapshot):
    state, attributes = te_snapshot(clip)
    return (state.keys() == snapshot[0].keys() and all(torch.equal(v, snapshot[0][k]) for k, v in state.items())
            and attributes == snapshot[1])


def region_of(clean, description):
    return 1 + [r.description for r in ordered_regions(clean)].index(description)


def encode_with_extension(model, canvas_text, prompt="sunny day"):
    """The extension's encode of a canvas: (chunks, context, vector, notes, clean canvas, per-region LoRAs)."""
    from lib_omost.forge import omost_run
    clean, loras, problems = canvas_loras(canvas_from_json(json.loads(canvas_text)))
    assert problems == []
    p = SimpleNamespace(sd_model=model, width=64, height=64, prompt=prompt)
    chunks = omost_run.canvas_chunks(p, clean, omost.APPEND)
    notes = []
    context, regions, vector, _ = omost_run.encode_canvas(p, chunks, loras, notes.append)
    return chunks, context, regions, vector, notes, clean, loras


def chunk_slices(chunks, context, regions):
    """[(region, text, its 77 tokens of the context)] (the texts here are short: one 77-token chunk each)."""
    assert context.shape[0] == 77 * len(chunks)
    out = []
    for i, (region, text) in enumerate(chunks):
        assert bool((regions[77 * i:77 * (i + 1)] == region).all())
        out.append((region, omost.escape_webui_prompt(text), context[77 * i:77 * (i + 1)]))
    return out


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_region_chunks_equal_the_merged_encode_and_every_other_chunk_the_plain_one(flavour, family):
    model = harness.make_sd_model(family, seed=7, cached=False)
    clip = model.forge_objects.clip
    clip.cond_stage_model.double()                        # float64: merged vs un-merged differ only by rounding
    state = write_te_lora("dog_te", clip, LAYERS[family], seed=1, alpha=3.0)
    before = te_snapshot(clip)
    # the dog region is listed first but is the nearer one: mask order puts it after the cat
    chunks, context, regions, vector, notes, clean, _ = encode_with_extension(
        model, canvas_json("a dog <lora:dog_te:0.7>", "a cat"))
    assert notes == []
    dog = region_of(clean, "a dog")
    assert dog == 2 and {r for r, _ in chunks} == {0, 1, 2}
    for region, text, got in chunk_slices(chunks, context, regions):
        plain, _ = encode(model, text)
        if region == dog:
            merged, _ = merged_encode(model, text, state, LAYERS[family], 0.7)
            torch.testing.assert_close(got, merged, rtol=1e-10, atol=1e-10)
            assert (got - plain).abs().max() > 1e-3
        else:
            assert torch.equal(got, plain), f"region {region}'s chunk is not the plain encode"
    if family == "sdxl":                                   # the pooled vector is the global region's, plain
        assert torch.equal(vector, encode(model, chunk_slices(chunks, context, regions)[0][1])[1])
    assert same_te(clip, before)


def test_global_region_lora_acts_on_its_chunks_with_the_prompt_box_text(flavour):
    model = harness.make_sd_model("sd15", seed=7, cached=False)
    clip = model.forge_objects.clip
    clip.cond_stage_model.double()
    state = write_te_lora("park_te", clip, LAYERS["sd15"], seed=2)
    canvas = json.loads(canvas_json())
    canvas["global"]["loras"] = [{"name": "park_te", "weight": 0.5}]
    chunks, context, regions, _, notes, _, _ = encode_with_extension(model, json.dumps(canvas), prompt="golden hour")
    assert notes == []
    (region, text, got), *others = chunk_slices(chunks, context, regions)
    assert region == 0 and "golden hour" in text
    torch.testing.assert_close(got, merged_encode(model, text, state, LAYERS["sd15"], 0.5)[0], rtol=1e-10, atol=1e-10)
    assert all(torch.equal(got, encode(model, text)[0]) for _, text, got in others)


def test_te_weight_zero_and_a_unet_only_file_encode_exactly_as_without(flavour):
    model = harness.make_sd_model("sd15", seed=7, cached=False)
    clip = model.forge_objects.clip
    write_te_lora("dog_te", clip, LAYERS["sd15"], seed=1)
    safetensors.torch.save_file({"lora_unet_nothing_here.alpha": torch.tensor(1.0)},
                                os.path.join(harness_lora_dir(), "unet_only.safetensors"))
    _, without, *_ = encode_with_extension(model, canvas_json())
    for tag in ("<lora:dog_te:0>", "<lora:dog_te:0:1>", "<lora:dog_te:1:1:te=0>", "<lora:unet_only:1>"):
        _, context, _, _, notes, _, loras = encode_with_extension(model, canvas_json("a dog " + tag))
        assert torch.equal(context, without), tag
        assert notes == [], (tag, notes)


def harness_lora_dir():
    from modules import shared
    return shared.cmd_opts.lora_dir


def test_cache_keeps_plain_and_lora_encodes_apart_and_follows_weight_and_file(flavour):
    from lib_omost.forge import omost_run
    model = harness.make_sd_model("sd15", seed=7, cached=False)
    clip = model.forge_objects.clip
    write_te_lora("dog_te", clip, LAYERS["sd15"], seed=1)
    p = SimpleNamespace(sd_model=model, width=64, height=64, prompt="")
    clean = canvas_loras(canvas_from_json(json.loads(canvas_json("a dog"))))[0]
    dog_text = next(omost.escape_webui_prompt(t) for r, t in omost_run.canvas_chunks(p, clean, omost.APPEND)
                    if r == region_of(clean, "a dog"))
    plain_first = omost_run.encode_chunk(p, dog_text)[0].clone()

    def dog_chunk(tag):
        chunks, context, regions, *_ = encode_with_extension(model, canvas_json("a dog " + tag), prompt="")
        return next(got for region, text, got in chunk_slices(chunks, context, regions) if text == dog_text)

    with_lora = dog_chunk("<lora:dog_te:1>").clone()
    assert not torch.equal(with_lora, plain_first)                     # the cached plain encode was not reused
    assert torch.equal(omost_run.encode_chunk(p, dog_text)[0], plain_first)   # nor the LoRA one for plain
    assert torch.equal(dog_chunk("<lora:dog_te:1>"), with_lora)
    assert not torch.equal(dog_chunk("<lora:dog_te:0.5>"), with_lora)    # the weight is in the key
    filename = os.path.join(harness_lora_dir(), "dog_te.safetensors")
    write_te_lora("dog_te", clip, LAYERS["sd15"], seed=9)              # another file under the same name
    os.utime(filename, (os.path.getmtime(filename) + 5,) * 2)
    changed = dog_chunk("<lora:dog_te:1>")
    assert not torch.equal(changed, with_lora)
    assert torch.equal(omost_run.encode_chunk(p, dog_text)[0], plain_first)


def test_layers_that_are_not_plain_low_rank_are_a_note_naming_the_text_encoder(flavour):
    model = harness.make_sd_model("sd15", seed=7, cached=False)
    clip = model.forge_objects.clip
    key = "lora_te_" + V1.replace(".", "_")
    rows = te_module(clip, "clip_l", V1).weight.shape[0]
    write_te_lora("dora_te", clip, LAYERS["sd15"], seed=1, extra={key + ".dora_scale": torch.ones(rows, 1)})
    *_, notes, _, _ = encode_with_extension(model, canvas_json("a dog <lora:dora_te:1>"))
    assert notes == ["region LoRA 'dora_te': 1 of its text-encoder layers are not plain low-rank Linear layers "
                     "and were left out"]


def test_missing_name_is_one_note_naming_the_folders_searched(flavour, caplog):
    ui = harness.start_webui([ROOT])
    caplog.set_level(logging.WARNING)
    for tag in ("<lora:nope:1>", "<lora:nope:1:0>", "<lora:nope:0:1>"):     # both parts, te only, UNet only
        caplog.clear()
        result = run(ui, canvas_json("a dog " + tag))
        message = f"region LoRA 'nope' was not found (searched {harness_lora_dir()})"
        assert result.infotexts[0].count(message) == 1, tag
        assert sum(message in r.getMessage() for r in caplog.records) == 1, tag


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_generation_with_a_te_lora_changes_the_image_and_leaves_the_text_encoder_as_it_was(flavour, family):
    from modules import shared
    ui = harness.start_webui([ROOT], family=family)
    clip = shared.sd_model.forge_objects_original.clip
    write_te_lora("dog_te", clip, LAYERS[family], seed=3)
    before = te_snapshot(clip)
    plain_before = ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents
    for method in (omost.BLEND, omost.COUPLE):
        without = run(ui, canvas_json(), method=method).latents
        result = run(ui, canvas_json("a dog <lora:dog_te:1:0>"), method=method)     # te part only
        assert harness.reported_errors() == [] and "Omost note" not in result.infotexts[0]
        assert not torch.equal(result.latents, without)
        assert same_te(clip, before)
        assert torch.equal(ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents, plain_before)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_unet_reads_the_region_chunk_encoded_with_its_te_lora(flavour, family):
    """Attention couple: every cond row's cross-attention context is the canvas context, whose dog chunk is
    the merged-LoRA encode and whose other chunks are the plain encodes."""
    from lib_omost.forge import omost_run
    from modules import shared
    ui = harness.start_webui([ROOT], family=family)
    model = shared.sd_model
    clip = model.forge_objects_original.clip
    state = write_te_lora("dog_te", clip, LAYERS[family], seed=4)
    clean = canvas_loras(canvas_from_json(json.loads(canvas_json())))[0]
    chunks = omost_run.canvas_chunks(SimpleNamespace(sd_model=model, prompt=""), clean, omost.APPEND)
    dog = region_of(clean, "a dog")
    expected = [(merged_encode(model, text, state, LAYERS[family], 0.8) if region == dog else encode(model, text))[0]
                for region, text in ((r, omost.escape_webui_prompt(t)) for r, t in chunks)]
    dm = model.forge_objects_original.unet.model.diffusion_model
    path = "input_blocks.4.1.transformer_blocks.0.attn2.to_k" if family == "sdxl" else K2
    capture = Capture(dm, [path])
    try:
        run(ui, canvas_json("a dog <lora:dog_te:0.8:0>"), method=omost.COUPLE)
    finally:
        capture.close()
    rows = 0
    for x, _ in capture.calls[path]:
        for row in x:
            if row.shape[0] != 77 * len(chunks) or torch.equal(row[:77], row[77:154]):
                continue                                   # an uncond row (the negative prompt, repeated)
            for i, want in enumerate(expected):
                got = row[77 * i:77 * (i + 1)]
                if chunks[i][0] == dog:
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                    assert not torch.allclose(got, encode(model, omost.escape_webui_prompt(chunks[i][1]))[0])
                else:
                    assert torch.equal(got, want)
            rows += 1
    assert rows == 2                                       # 2 steps, one cond row each


def test_diffusers_style_te_keys(flavour):
    """The diffusers names the key map has ("text_encoder.text_model....", lora_A / lora_B) work too."""
    model = harness.make_sd_model("sd15", seed=7, cached=False)
    clip = model.forge_objects.clip
    clip.cond_stage_model.double()
    kohya = write_te_lora("kohya_te", clip, LAYERS["sd15"], seed=5)
    diffusers = {}
    for _, _, path in LAYERS["sd15"]:
        key = "lora_te_" + path.replace(".", "_")
        diffusers[f"text_encoder.{path}.lora_A.weight"] = kohya[key + ".lora_down.weight"]
        diffusers[f"text_encoder.{path}.lora_B.weight"] = kohya[key + ".lora_up.weight"]
        diffusers[f"text_encoder.{path}.alpha"] = kohya[key + ".alpha"]
    safetensors.torch.save_file(diffusers, os.path.join(harness_lora_dir(), "diffusers_te.safetensors"))
    _, by_kohya, *_ = encode_with_extension(model, canvas_json("a dog <lora:kohya_te:0.6>"))
    _, by_diffusers, _, _, notes, _, _ = encode_with_extension(model, canvas_json("a dog <lora:diffusers_te:0.6>"))
    _, plain, *_ = encode_with_extension(model, canvas_json("a dog"))
    assert notes == [] and torch.equal(by_diffusers, by_kohya) and not torch.equal(by_kohya, plain)


def test_hires_pass_with_a_te_lora_leaves_the_text_encoder_as_it_was(flavour):
    from modules import shared
    ui = harness.start_webui([ROOT])
    clip = shared.sd_model.forge_objects_original.clip
    write_te_lora("dog_te", clip, LAYERS["sd15"], seed=6)
    before = te_snapshot(clip)
    plain = ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents
    result = run(ui, canvas_json("a dog <lora:dog_te:1>"), enable_hr=True, hr_scale=1.5)
    assert harness.reported_errors() == [] and "Omost note" not in result.infotexts[0]
    assert "<lora:dog_te:1>" in result.infotexts[0]          # the canvas in the infotext keeps the tag
    assert same_te(clip, before)
    assert torch.equal(ui.txt2img(prompt="a cat", cfg_scale=5, steps=2).latents, plain)
