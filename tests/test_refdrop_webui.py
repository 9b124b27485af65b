"""RefDrop end to end on the WebUI stand-in (both flavours): Save -> file -> Use, keys by step, batch and
resolution changes, layer lists on SD1.5/SDXL, missing/foreign references, the memory budget, hires, and
composition with Omost and Slothful (infotext, paste, API, xyz)."""

import os

import pytest
import torch

from lib_omost.attention.plan import AttnCall, LayerKey
from lib_omost.attention.refdrop import refdrop_attention
from lib_omost.attention.refdrop_file import load_reference, save_reference
from lib_omost.attention.refdrop_store import MIB, ReferenceStore
from lib_omost.features import refdrop
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "RefDrop"
SD15_LAYERS = 16
SDXL_LAYERS = 70
FP16 = {"rtol": 2e-3, "atol": 1e-3}      # stored references are fp16: equal computations agree within an ulp


@pytest.fixture(scope="module", params=harness.FLAVOURS)
def ui(request):
    with harness.use_flavour(request.param):
        webui = harness.start_webui([ROOT], family="sd15")
        webui.flavour = request.param
        yield webui


@pytest.fixture
def refs(ui, tmp_path, monkeypatch):
    """The references folder of this test (empty); the sd15 model loaded; no reported errors at the end."""
    from modules import errors

    from lib_omost.forge import refdrop_references
    folder = tmp_path / "refs"
    monkeypatch.setenv("OMOST_REFDROP_DIR", str(folder))
    monkeypatch.setattr(refdrop_references, "_cache", {})
    errors.clear()
    harness.load_model("sd15")
    yield folder
    assert harness.reported_errors() == []


@pytest.fixture
def blends(monkeypatch):
    """(WebUI sampling step, rows, query tokens) of every RefDrop blend (the sampler's own step counter)."""
    from modules import shared
    seen = []
    original = refdrop.refdrop_attention

    def spy(q, *args, **kwargs):
        seen.append((shared.state.sampling_step, q.shape[0], q.shape[1]))
        return original(q, *args, **kwargs)
    monkeypatch.setattr(refdrop, "refdrop_attention", spy)
    return seen


def rd_args(ui, **values):
    """Script args: UI defaults with the RefDrop accordion on and the given values (declaration names)."""
    args = ui.ui_defaults()
    script = ui.script(TITLE)
    chosen = {**refdrop.FEATURE.defaults(), "enabled": True, **values}
    args[script.args_from:script.args_to] = [chosen[name] for name in refdrop.FEATURE.arg_names]
    return args


def gen(ui, script_args=None, **kwargs):
    kwargs = {"prompt": "a cat", "cfg_scale": 5, "steps": 2, **kwargs}
    return ui.txt2img(script_args=script_args, **kwargs)


def save(ui, name="ref", **kwargs):
    values = {k: kwargs.pop(k) for k in list(kwargs) if k in refdrop.FEATURE.by_name}
    return gen(ui, rd_args(ui, mode="Save", reference=name, **values), **kwargs)


def use(ui, name="ref", c=0.5, **kwargs):
    values = {k: kwargs.pop(k) for k in list(kwargs) if k in refdrop.FEATURE.by_name}
    return gen(ui, rd_args(ui, mode="Use", reference=name, coefficient=c, **values), **kwargs)


def stored(refs, name="ref"):
    return load_reference(str(refs / f"{name}.safetensors"))


def keys_of(store):
    return set(store.entries)


def labels_of(store):
    return {layer for _, layer, _ in store.entries}


def note(result):
    return result.extra_generation_params.get("RefDrop note", "")


# --- save -> file -> use ---------------------------------------------------------------------------------

def test_save_survives_a_restart_and_use_reproduces_the_saved_image(ui, refs):
    off = gen(ui)
    saved = save(ui, keep_uncond=True)
    assert torch.equal(saved.latents, off.latents)                   # Save records, it changes nothing
    assert os.listdir(refs) == ["ref.safetensors"]
    assert ui.pasted_values(refdrop.FEATURE, saved.infotexts[0])["mode"] == "Save" and note(saved) == ""
    with harness.use_flavour(ui.flavour):                             # a restart: fresh modules, empty cache
        from lib_omost.forge import refdrop_references
        assert refdrop_references._cache == {}
        fresh = harness.start_webui([ROOT], family="sd15")
        zero = use(fresh, c=0.0)
        # c = 1 with the save's own seed and prompt: Attn(q, k_ref, v_ref) with the reference = own K/V (fp16)
        one = use(fresh, c=1.0)
        assert harness.reported_errors() == []
    assert torch.equal(zero.latents, off.latents)                     # c = 0 is bit-identical to off
    assert note(zero) == note(one) == ""
    error = (one.latents - saved.latents).abs().max()
    assert 0 < error <= 2e-3 * saved.latents.abs().max()


def test_a_format_v1_file_of_k_and_v_keeps_working_and_matches_the_input_reference(ui, refs):
    """A reference file as the code before format v2 wrote it (K and V of each layer, fp16) is used as before;
    its image matches that of the same reference stored as attention inputs (fp16 tolerance)."""
    from lib_omost.attention.refdrop_file import (
        REFERENCE_FORMAT_V1,
        read_reference_info,
    )
    from lib_omost.attention.refdrop_store import KVEntry
    from lib_omost.forge.webui import attn1_projections
    save(ui, "inputs", steps=2, keep_uncond=True)
    inputs, info = stored(refs, "inputs")
    projections = attn1_projections(harness.unet_patcher())
    old = ReferenceStore()
    with torch.no_grad():
        for (step, label, branch), (n,) in inputs.entries.items():
            block, number, index = label.split(":")
            k, v = projections[LayerKey(block, int(number), int(index))](n.float())
            old.put(step, label, branch, KVEntry(k.half(), v.half()))
    save_reference(old, str(refs / "kv.safetensors"), model_family="sd15", resolution=info.resolution, steps=2)
    with open(refs / "kv.safetensors", "rb") as f:
        assert REFERENCE_FORMAT_V1.encode() in f.read(4096)
    assert read_reference_info(str(refs / "kv.safetensors")).widths == info.widths
    other = {"prompt": "a dog", "seed": 3, "steps": 2}
    from_inputs, from_kv = use(ui, "inputs", c=0.5, **other), use(ui, "kv", c=0.5, **other)
    assert note(from_inputs) == note(from_kv) == ""
    moved = (from_kv.latents - gen(ui, **other).latents).abs().max()
    assert moved > 0                                                # measured: 0.1% of the blend's effect
    assert (from_kv.latents - from_inputs.latents).abs().max() <= 0.005 * moved


def test_an_8_bit_reference_is_half_the_size_and_close_to_the_16_bit_one(ui, refs):
    from lib_omost.attention.refdrop_store import INPUT8, INPUT16, entry_bytes
    save(ui, "wide", steps=2)
    saved = save(ui, "narrow", steps=2, precision="8-bit")
    assert ui.pasted_values(refdrop.FEATURE, saved.infotexts[0])["precision"] == "8-bit"
    wide, _ = stored(refs, "wide")
    narrow, _ = stored(refs, "narrow")
    assert keys_of(wide) == keys_of(narrow)
    assert {type(e).__name__ for e in narrow.entries.values()} == {"QuantizedInput"}
    shapes = [(e.n.shape[1], e.width) for e in wide.entries.values()]
    assert wide.nbytes == sum(entry_bytes(INPUT16, *shape) for shape in shapes)
    assert narrow.nbytes == sum(entry_bytes(INPUT8, *shape) for shape in shapes)   # codes + offsets and steps
    other = {"prompt": "a dog", "seed": 3, "steps": 2}
    off = gen(ui, **other).latents
    a, b = use(ui, "wide", c=0.5, **other).latents, use(ui, "narrow", c=0.5, **other).latents
    assert (a - b).abs().max() <= 0.02 * (a - off).abs().max()      # the 8-bit error (measured 0.4% of the blend)


def test_positive_and_negative_coefficients_move_the_image_in_opposite_directions(ui, refs):
    save(ui, keep_uncond=True, steps=1)
    other = {"prompt": "a dog", "seed": 2, "steps": 1}
    off = gen(ui, **other).latents
    towards = (use(ui, c=0.02, **other).latents - off).flatten()
    away = (use(ui, c=-0.02, **other).latents - off).flatten()
    assert towards.norm() > 0 and away.norm() > 0
    # the blend is linear in c at every layer: to first order the image moves by -delta for -c
    assert torch.nn.functional.cosine_similarity(towards, away, dim=0) < -0.99


# --- keys by step ------------------------------------------------------------------------------------------

def test_keys_by_step_in_one_call_and_in_split_calls(ui, refs):
    with harness.record_unet_calls() as calls:
        save(ui, "one", steps=4)
    assert [c.x_shape[0] for c in calls] == [2] * 4                       # cond + uncond in one call per step
    with harness.force_split(1), harness.record_unet_calls() as calls:
        save(ui, "split", steps=4)
    assert [c.x_shape[0] for c in calls] == [1] * 8                       # cond and uncond in separate calls
    one, info = stored(refs, "one")
    split, _ = stored(refs, "split")
    layers = {layer.label() for layer in _layers("sd15")}
    expected = {(step, label, "cond") for step in range(4) for label in layers}
    assert keys_of(one) == keys_of(split) == expected and len(layers) == SD15_LAYERS
    assert info.steps == 4 and info.resolution == (64, 64) and info.model_family == "sd15"
    for key in expected:
        assert one.entries[key][0].shape[0] == 1
        torch.testing.assert_close(one.entries[key][0], split.entries[key][0], **FP16)


def _layers(family):
    from lib_omost.attention.refdrop_store import attn1_layers
    return [layer for layer, _, _ in attn1_layers(family, (8, 8))]


def test_batch_two_stores_the_first_images_cond_row_and_keep_uncond_the_negative_one(ui, refs):
    save(ui, "single", steps=1)
    save(ui, "batch", steps=1, batch_size=2)
    save(ui, "both", steps=1, keep_uncond=True)
    single, _ = stored(refs, "single")
    batch, _ = stored(refs, "batch")
    both, _ = stored(refs, "both")
    assert keys_of(batch) == keys_of(single)
    for key, (n,) in batch.entries.items():               # image 0 of the batch has the single run's seed
        assert n.shape[0] == 1
        torch.testing.assert_close(n, single.entries[key].n, **FP16)
    assert {branch for _, _, branch in both.entries} == {"cond", "uncond"}
    assert len(both.entries) == 2 * len(single.entries)
    # the "uncond" row is the negative prompt's: at step 0 (same noise) it equals the cond row of a run
    # whose prompt is that negative prompt; the "cond" row is the prompt's
    save(ui, "negative", steps=1, prompt="", negative_prompt="a cat")
    negative, _ = stored(refs, "negative")
    late = "output:11:0"                                     # after cross-attention: the prompts differ there
    torch.testing.assert_close(both.get(0, late, "uncond")[0], negative.get(0, late, "cond")[0], **FP16)
    assert not torch.allclose(both.get(0, late, "cond")[0], both.get(0, late, "uncond")[0], atol=1e-2)


def test_save_percentage_records_and_blends_only_the_first_steps(ui, refs, blends):
    save(ui, "half", steps=4, save_percent=50)
    half, info = stored(refs, "half")
    assert half.steps() == [0, 1] and info.steps == 4
    result = use(ui, "half", steps=4, save_percent=50)
    assert note(result) == ""
    assert {step for step, _, _ in blends} == {0, 1}
    # used with 100 %: blends where the reference has entries and says which steps ran without
    blends.clear()
    save(ui, "full", steps=4)
    full_result = use(ui, "half", steps=4, save_percent=100)
    assert {step for step, _, _ in blends} == {0, 1}
    assert "the reference 'half' holds steps 0-1; steps 2-3 ran without RefDrop" in full_result.infotexts[0]
    assert not torch.equal(full_result.latents, use(ui, "full", steps=4).latents)


def test_img2img_counts_steps_in_the_full_schedule_and_notes_only_steps_that_ran(ui, refs):
    values = {"enabled": True, **{k: v for k, v in refdrop.FEATURE.defaults().items() if k != "enabled"}}
    script = ui.script(TITLE, "img2img")

    def img2img(**chosen):
        args = ui.ui_defaults("img2img")
        args[script.args_from:script.args_to] = [{**values, **chosen}[n] for n in refdrop.FEATURE.arg_names]
        return ui.img2img(args, prompt="a cat", cfg_scale=5, steps=4, denoising_strength=0.5)
    img2img(mode="Save", reference="i2i")
    assert stored(refs, "i2i")[0].steps() == [1, 2, 3]           # strength 0.5 of 4 steps: the last 3 run
    assert note(img2img(mode="Use", reference="i2i")) == ""
    assert note(use(ui, "i2i", steps=4)) == "the reference 'i2i' holds steps 1-3; step 0 ran without RefDrop"


# --- batch size and resolution ------------------------------------------------------------------------------

def test_batch_one_reference_is_broadcast_to_batch_three(ui, refs, blends):
    saved = save(ui, keep_uncond=True)
    off = gen(ui, batch_size=3)
    result = use(ui, c=1.0, batch_size=3)
    assert note(result) == "" and {rows for _, rows, _ in blends} == {6}       # 3 cond + 3 uncond rows
    assert all(not torch.equal(result.latents[i], off.latents[i]) for i in range(3))
    # image 0 has the save's seed: with c = 1 it reproduces the saved image as in batch 1
    assert (result.latents[0] - saved.latents[0]).abs().max() <= 2e-3 * saved.latents.abs().max()


def test_reference_saved_at_64x64_used_at_96x64(ui, refs, blends):
    save(ui, steps=1)
    off = gen(ui, width=96, height=64, steps=1)
    result = use(ui, width=96, height=64, steps=1)
    assert note(result) == "" and blends
    assert max(tokens for _, _, tokens in blends) == 12 * 8                   # the query grid of 96x64
    assert not torch.equal(result.latents, off.latents)


# --- layers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, disabled, physical", [
    ("sd15", "input:0-1, middle:0, output:3", {"input:1:0", "input:2:0", "middle:0:0", "output:6:0"}),
    ("sdxl", "input:2, input:4, middle:9, output:30-31, output:35",
     {"input:5:0", "input:7:0", "middle:0:9", "output:3:0", "output:3:1", "output:5:1"}),
])
def test_disabled_layers_map_to_physical_blocks(ui, refs, family, disabled, physical):
    harness.load_model(family)
    everything = {layer.label() for layer in _layers(family)}
    assert len(everything) == {"sd15": SD15_LAYERS, "sdxl": SDXL_LAYERS}[family]
    result = save(ui, "some", steps=1, disabled_layers=disabled)
    assert note(result) == ""
    assert labels_of(stored(refs, "some")[0]) == everything - physical
    save(ui, "groups", steps=1, input=False, output=False)
    assert {label.split(":")[0] for label in labels_of(stored(refs, "groups")[0])} == {"middle"}


BAD_LISTS = {
    "output:9": "Disabled layers: 'output:9': output has indices 0-8 on this model",
    "middle:0-1": "middle has indices 0-0",
    "outputs:1": "Disabled layers: 'outputs:1' is not group:index or group:first-last (groups: input, middle, "
                 "output; e.g. output:0-3)",
    "output:5-2": "Disabled layers: 'output:5-2' runs backwards (5 > 2); write output:2-5",
    "input:" + "9" * 5000: "is not group:index or group:first-last",
    "output:\u0661": "is not group:index or group:first-last",      # a digit, but not 0-9
}


def test_a_bad_layer_list_is_reported_and_refdrop_does_not_run(ui, refs):
    off = gen(ui, steps=1)
    result = save(ui, disabled_layers="output:9", steps=1)
    assert BAD_LISTS["output:9"] in note(result) and "RefDrop did not run" in note(result)
    assert "RefDrop note:" in result.infotexts[0] and not refs.exists()
    save(ui, steps=1)
    for bad, message in BAD_LISTS.items():
        used = use(ui, disabled_layers=bad, steps=1)
        assert message in note(used) and "RefDrop did not run" in note(used)
        assert torch.equal(used.latents, off.latents)


# --- missing and foreign references -------------------------------------------------------------------------

def test_missing_reference_lists_the_saved_ones_and_generation_continues(ui, refs):
    off = gen(ui, steps=1)
    save(ui, "alpha", steps=1)
    save(ui, "beta", steps=1)
    result = use(ui, "gamma", steps=1)
    assert torch.equal(result.latents, off.latents)
    assert "no RefDrop reference named 'gamma' (saved references: alpha, beta)" in note(result)
    assert "RefDrop did not run" in result.infotexts[0]


def test_sdxl_reference_used_with_sd15_is_refused_with_a_family_message(ui, refs):
    harness.load_model("sdxl")
    save(ui, "xl", steps=1)
    harness.load_model("sd15")
    off = gen(ui, steps=1)
    result = use(ui, "xl", steps=1)
    assert torch.equal(result.latents, off.latents)
    assert "saved with a sdxl model, but the model in use is sd15" in note(result)
    assert "RefDrop did not run" in result.infotexts[0]


def test_a_reference_without_some_layers_runs_on_the_others_and_says_so(ui, refs, blends):
    save(ui, "outputs", input=False, middle=False)
    result = use(ui, "outputs")
    assert "holds no entries for the selected layers input:0-5, middle:0; they run without RefDrop" in note(result)
    assert len(blends) == 2 * 9                          # 2 steps x the 9 output layers
    assert "RefDrop note:" in result.infotexts[0]


def test_a_key_missing_mid_run_stops_refdrop_and_the_infotext_says_so(ui, refs):
    save(ui, steps=2)
    full, info = stored(refs)
    del full.entries[(1, "output:9:0", "cond")]
    save_reference(full, str(refs / "holed.safetensors"), model_family="sd15", resolution=(64, 64), steps=2)
    result = use(ui, "holed")
    assert "no entry for step 1, layer output:9:0" in result.infotexts[0]
    assert "RefDrop stopped there and the rest of this pass ran without it" in result.infotexts[0]


# --- hostile files, names, folders and budgets (issue 15) -------------------------------------------------------

def damaged_files(good: bytes, folder):
    """{case: path} of references that must all be refused at load: bytes and crafted tensors."""
    import json
    import struct

    from safetensors.torch import load_file, save_file

    cases = {"empty": b"", "cut": good[:-100], "random": os.urandom(3000),
             "huge header": struct.pack("<Q", 2 ** 62) + b"{}"}
    paths = {}
    for case, content in cases.items():
        paths[case] = folder / f"{case}.safetensors"
        paths[case].write_bytes(content)
    (folder / "good.safetensors").write_bytes(good)
    tensors = load_file(str(folder / "good.safetensors"))
    from safetensors import safe_open
    with safe_open(str(folder / "good.safetensors"), framework="pt") as f:
        meta = f.metadata()
    name = sorted(tensors)[0]
    crafted = {"lacks steps": (tensors, {k: v for k, v in meta.items() if k != "steps"}),
               "steps not a number": (tensors, {**meta, "steps": "two"}),
               "two rows": ({**tensors, name: tensors[name].repeat(2, 1, 1)}, meta),
               "kv_width not json": (tensors, {**meta, "kv_width": "{"}),
               "nan": ({**tensors, name: torch.full_like(tensors[name], float("nan"))}, meta)}
    for case, (t, m) in crafted.items():
        paths[case] = folder / f"{case}.safetensors"
        save_file(t, str(paths[case]), metadata=m)
    assert json.loads(meta["kv_width"])
    return paths


def test_damaged_reference_files_are_reported_and_the_image_is_made_without_refdrop(ui, refs):
    off = gen(ui, steps=1)
    save(ui, "good", steps=1)
    for case, path in damaged_files((refs / "good.safetensors").read_bytes(), refs).items():
        result = use(ui, path.stem, steps=1)
        message = note(result)
        assert f"{path.name}" in message and message.endswith("RefDrop did not run"), (case, message)
        assert "invalid literal" not in message and len(message) < 400, case
        assert "RefDrop note: " in result.infotexts[0], case
        assert torch.equal(result.latents, off.latents), case            # made without RefDrop, not aborted


def test_a_save_into_a_folder_that_cannot_be_written_is_reported_not_claimed(ui, refs, monkeypatch, caplog):
    blocker = refs.parent / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OMOST_REFDROP_DIR", str(blocker / "refs"))
    off = gen(ui, steps=1)
    with caplog.at_level("INFO", logger="sd-forge-omost"):
        result = save(ui, "lost", steps=1, n_iter=2)
    message = note(result)
    assert "the reference 'lost' could not be written (Not a directory); nothing was saved" in message
    assert all(message in text for text in result.infotexts)          # the images say so
    assert str(blocker / "refs") in caplog.text and "saved reference" not in caplog.text
    assert torch.equal(result.latents[:1], off.latents) and not (blocker / "refs").exists()
    monkeypatch.setenv("OMOST_REFDROP_DIR", str(refs))
    (refs / "taken.safetensors").mkdir(parents=True)                    # a folder where the file should go
    assert "could not be written" in note(save(ui, "taken", steps=1))


def test_a_save_of_several_batches_is_written_once_after_the_first(ui, refs, caplog):
    with caplog.at_level("INFO", logger="sd-forge-omost"):
        result = save(ui, "twice", steps=1, n_iter=2)
    assert note(result) == "" and os.listdir(refs) == ["twice.safetensors"]
    assert caplog.text.count("saved reference 'twice'") == 1


BAD_NAMES = ["hero\n", "hero\r", "he\x1bro", "tab\there", "con", "CON", "Nul", "aux.v2", "com1", "LPT9.ref",
             "com0", "prn ", "nul .x", "hero.", "hero ", "", " hero", ".hidden", "a/b", "..", "x" * 65, "hér",
             "x" * 200_000]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_reference_names_that_are_not_safe_file_names_everywhere(ui, name):
    from lib_omost.forge.refdrop_references import check_reference_name
    with pytest.raises(ValueError) as e:
        check_reference_name(name)
    assert str(e.value).startswith("reference name ") and len(str(e.value)) < 300


@pytest.mark.parametrize("name", ["hero", "Hero 2", "my-ref_v1.2", "console", "com10", "lpt", "nullable", "auxiliary",
                                  "con1x", "x" * 64])
def test_reference_names_that_are_fine(ui, name):
    from lib_omost.forge.refdrop_references import check_reference_name
    assert check_reference_name(name) == name


def test_a_bad_name_is_a_note_before_sampling(ui, refs):
    for name, message in (("nul", "is a device name on Windows"), ("hero\n", "use 1-64 letters"),
                          ("x" * 200_000, "(200000 characters)")):
        result = save(ui, name, steps=1)
        assert message in note(result) and "RefDrop did not run" in note(result)
        assert len(note(result)) < 400 and not refs.exists()


@pytest.mark.parametrize("budget", ["inf", "1e400", "nan", "-5", "0", "abc", "", 10 ** 400, float("inf"), -1.0],
                         ids=range(10))
def test_a_budget_setting_that_is_not_a_positive_number_is_reported(ui, refs, monkeypatch, budget):
    from modules import shared
    monkeypatch.setitem(shared.opts.data, "omost_refdrop_budget_mib", budget)
    message = note(save(ui, steps=1))
    assert "it must be a number of MiB above 0 and at most 1048576" in message and "RefDrop did not run" in message
    assert len(message) < 400 and not refs.exists()


# --- memory budget -------------------------------------------------------------------------------------------

def test_a_save_over_the_budget_is_refused_before_sampling_with_a_clear_message(ui, refs, monkeypatch):
    from modules import shared
    off = gen(ui, steps=1)
    monkeypatch.setitem(shared.opts.data, "omost_refdrop_budget_mib", 0.01)
    result = save(ui, steps=1)
    assert torch.equal(result.latents, off.latents) and not refs.exists()
    message = note(result)
    assert "above the RefDrop memory budget of 0.01 MiB" in message
    assert "RefDrop: memory budget of a saved reference (MiB)" in message and "lower the save percentage" in message
    assert "RefDrop did not run" in result.infotexts[0]


def test_the_budget_estimate_is_exactly_what_is_stored(ui, refs, monkeypatch):
    from lib_omost.forge import refdrop_references
    save(ui, "probe", steps=2, keep_uncond=True)
    probe, _ = stored(refs, "probe")
    needed = sum(n.numel() * n.element_size() for (n,) in probe.entries.values())
    assert needed == probe.nbytes
    monkeypatch.setattr(refdrop_references, "budget_bytes", lambda: needed)
    assert note(save(ui, "fits", steps=2, keep_uncond=True)) == "" and (refs / "fits.safetensors").exists()
    monkeypatch.setattr(refdrop_references, "budget_bytes", lambda: needed - 1)
    assert "needs" in note(save(ui, "over", steps=2, keep_uncond=True))
    assert not (refs / "over.safetensors").exists()


def test_a_budget_hit_while_recording_writes_no_partial_file(ui, refs, monkeypatch):
    """The safety net behind the estimate: the store's own budget check during sampling."""
    from lib_omost.forge import refdrop_references
    monkeypatch.setattr(refdrop, "save_bytes", lambda *args: 0)          # an estimate that is too low
    monkeypatch.setattr(refdrop_references, "budget_bytes", lambda: MIB // 100)
    result = save(ui, steps=1)
    text = result.infotexts[0]
    assert "above the memory budget" in text and "recording stopped and the reference 'ref' is not saved" in text
    assert not refs.exists() or os.listdir(refs) == []


def test_a_reference_larger_than_the_budget_is_not_loaded(ui, refs, monkeypatch):
    from lib_omost.forge import refdrop_references
    save(ui, steps=1)
    off = gen(ui, steps=1)
    monkeypatch.setattr(refdrop_references, "budget_bytes", lambda: 1000)
    result = use(ui, steps=1)
    assert torch.equal(result.latents, off.latents)
    assert "the reference 'ref'" in note(result) and "does not fit the RefDrop memory budget" in note(result)
    assert "RefDrop did not run" in note(result)


# --- hires ---------------------------------------------------------------------------------------------------

HIRES = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2}


def test_hires_save_records_the_first_pass_and_use_follows_the_hires_switch(ui, refs, blends):
    save(ui, **HIRES)
    store, info = stored(refs)
    assert info.resolution == (64, 64) and store.steps() == [0, 1]
    assert store.get(0, "input:1:0", "cond")[0].shape[1] == 8 * 8                # the first pass's tokens only
    off = use(ui, **HIRES)
    assert note(off) == "" and {tokens for _, _, tokens in blends if tokens > 64} == set()
    blends.clear()
    on = use(ui, hires_pass=True, **HIRES)
    assert note(on) == "" and max(tokens for _, _, tokens in blends) == 12 * 12     # the 96x96 hires pass too
    assert not torch.equal(on.latents, off.latents)


# --- composition, infotext, paste, API, xyz -----------------------------------------------------------------

def test_use_with_omost_and_slothful_in_one_generation(ui, refs, blends):
    save(ui, steps=2)
    args = rd_args(ui, mode="Use", reference="ref", coefficient=0.4, save_percent=50, middle=False,
                   disabled_layers="output:0-1", hires_pass=True)
    for title in ("Omost", "Slothful / Near-sighted attention"):
        script = ui.script(title)
        args[script.args_from] = True
    without = list(args)
    without[ui.script(TITLE).args_from] = False
    plain = gen(ui, without)
    result = gen(ui, args)
    assert "Omost: True" in result.infotexts[0] and "Slothful / Near-sighted attention: True" in result.infotexts[0]
    assert blends and {step for step, _, _ in blends} == {0} and not torch.equal(result.latents, plain.latents)
    assert note(result) == ""
    values = {**refdrop.FEATURE.defaults(), "enabled": True, "mode": "Use", "reference": "ref",
              "coefficient": 0.4, "save_percent": 50.0, "middle": False, "disabled_layers": "output:0-1",
              "hires_pass": True}
    from modules.infotext_utils import quote
    text = result.infotexts[0]
    for key, value in refdrop.FEATURE.to_infotext(values).items():
        assert f"{key}: {quote(value)}," in text
    script = ui.script(TITLE)
    pasted = ui.paste(text)
    components = ui.runner().inputs[script.args_from:script.args_to]
    assert [pasted.get(c) for c in components] == [values[name] for name in refdrop.FEATURE.arg_names]
    api = ui.api_txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1, "cfg_scale": 5,
                          "alwayson_scripts": {TITLE: {"args": [values[n] for n in refdrop.FEATURE.arg_names]},
                                               "Omost": {"args": [True]},
                                               "Slothful / Near-sighted attention": {"args": [True]}}})
    assert torch.equal(api.latents, result.latents)


def test_xyz_axes_for_coefficient_save_percentage_and_reference(ui, refs):
    save(ui, "first", steps=2)
    save(ui, "second", steps=2, seed=7, prompt="a dog")
    xyz = ui.runner().selectable_scripts[0]
    labels = [o.label for o in xyz.current_axis_options]
    for label in ("[RefDrop] Coefficient", "[RefDrop] Save percentage", "[RefDrop] Reference"):
        assert label in labels
    args = ui.ui_defaults()
    args[0] = ui.runner().selectable_scripts.index(xyz) + 1
    axis = labels.index("[RefDrop] Reference")
    args[xyz.args_from:xyz.args_to] = [axis, "first, second", None, 0, "", None, 0, "", None, True, False, False,
                                       False, False, False, False, 0, False]
    script = ui.script(TITLE)
    args[script.args_from:script.args_from + 3] = [True, "Use", 0.5]
    p = ui.make_p(script_args=args, prompt="a cat", cfg_scale=5)
    grid = ui.runner().run(p, *p.script_args)
    cells = [grid.cells[(i, 0, 0)] for i in range(2)]
    assert "RefDrop Reference: first" in cells[0].infotexts[0] and "RefDrop Reference: second" in cells[1].infotexts[0]
    assert torch.equal(cells[0].latents, use(ui, "first").latents)
    assert torch.equal(cells[1].latents, use(ui, "second").latents)
    assert not torch.equal(cells[0].latents, cells[1].latents)


# --- reference management --------------------------------------------------------------------------------------

def test_list_delete_and_the_one_reference_cache(ui, refs):
    from lib_omost.forge import refdrop_references, refdrop_ui
    save(ui, "alpha", steps=1)
    save(ui, "beta", steps=1, seed=3)
    assert refdrop_ui._listing() == "Saved references: `alpha`, `beta`"
    first = use(ui, "alpha", steps=1)
    assert list(refdrop_references._cache) == [str(refs / "alpha.safetensors")]
    use(ui, "beta", steps=1)
    assert list(refdrop_references._cache) == [str(refs / "beta.safetensors")]          # one reference in memory
    save(ui, "alpha", steps=1, seed=5)                                            # overwritten: used afresh
    assert not torch.equal(use(ui, "alpha", steps=1).latents, first.latents)
    assert refdrop_ui._delete("alpha") == "deleted reference 'alpha'" and os.listdir(refs) == ["beta.safetensors"]
    assert refdrop_ui._delete("alpha") == "no reference named 'alpha'"
    assert "reference name '../beta'" in refdrop_ui._delete("../beta") and os.listdir(refs) == ["beta.safetensors"]
    assert "no RefDrop reference named 'alpha' (saved references: beta)" in note(use(ui, "alpha", steps=1))


def test_the_ui_help_shows_the_index_tables_of_both_families():
    from lib_omost.forge.refdrop_ui import layer_index_help
    text = layer_index_help()
    for line in ("input:0 = input block 1, transformer 0", "output:3 = output block 6, transformer 0",
                 "input:4 = input block 7, transformer 0", "middle:9 = middle block 0, transformer 9",
                 "output:30 = output block 3, transformer 0", "output:35 = output block 5, transformer 1"):
        assert line in text
    assert text.count("middle:0 =") == 2


# --- the stage's per-step device cache ------------------------------------------------------------------------

def test_stage_projects_references_once_per_step_and_gives_the_same_result():
    torch.manual_seed(0)
    layer = LayerKey("input", 1, 0)
    store = ReferenceStore(keep_uncond=True)
    for step in range(2):
        store.record(step, layer, torch.randn(2, 6, 8), [1], [0])
    w_k, w_v = (torch.randn(8, 8, dtype=torch.float64) for _ in range(2))
    projected = []

    def project(n):                                   # the layer's own to_k / to_v
        projected.append(n.dtype)
        return n @ w_k, n @ w_v
    stage = refdrop.RefDropStage(refdrop.USE, {layer}, store, lambda sigma: int(sigma), 2, 0.3,
                                 projections={layer: project})

    def inner(q, k, v, call):
        return refdrop_attention(q, k, v, None, None, call.heads, 0.0)
    q, k, v = (torch.randn(2, 4, 8, dtype=torch.float64) for _ in range(3))
    for step, rows in ((0, ([1], [0])), (0, ([0], [])), (0, ([], [0])), (1, ([1], [0]))):   # one call, split
        batch = len(rows[0]) + len(rows[1])
        call = AttnCall(layer, 2, (2, 2), (2, 2), rows[0], rows[1], torch.tensor([float(step)]))
        out = stage(q[:batch], k[:batch], v[:batch], call, inner)
        k_ref, v_ref = store.for_rows(step, layer, rows[0], rows[1], batch,
                                      lambda entry: (entry.n.double() @ w_k, entry.n.double() @ w_v))
        assert torch.equal(out, refdrop_attention(q[:batch], k[:batch], v[:batch], k_ref, v_ref, 2, 0.3))
        assert stage._step_kv[0] == step                                     # the previous step is dropped
    # cond and uncond of step 0 once each (the split calls reuse them), then those of step 1; in the call dtype
    assert projected == [torch.float64] * 4


def test_stage_outside_the_schedule_stops_with_a_problem_instead_of_raising():
    layer = LayerKey("input", 1, 0)
    store = ReferenceStore()
    store.record(0, layer, torch.randn(1, 4, 8), [0])

    def step_of(sigma):
        raise ValueError("sigma above the schedule")
    stage = refdrop.RefDropStage(refdrop.USE, {layer}, store, step_of, 1, 0.5)
    call = AttnCall(layer, 2, (2, 2), (2, 2), [0], [], torch.tensor([20.0]))
    assert stage.active(call) is False
    assert stage.problems == ["cannot tell the sampling step of sigma 20 (sigma above the schedule)"]
