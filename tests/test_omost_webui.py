"""Omost in the WebUI: context swap, chunk encoding, the regional stage on real UNet calls (stand-in),
infotext round trip of the canvas, xyz over method x strength, the API with canvas JSON, chat handlers."""

import json
import math
import os
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_omost.canvas import CanvasError, canvas_to_json, example_canvas, load_canvas_text
from lib_omost.features import omost
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLE = "Omost"


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


def args_for(ui, values, tab="txt2img"):
    return ui.script_args({TITLE: values}, tab)


# --- pure pieces ------------------------------------------------------------------------------------

def test_swap_context_replaces_cond_rows_and_repeats_to_the_lcm():
    own = torch.arange(4 * 2 * 3, dtype=torch.float64).reshape(4, 2, 3)        # 2 chunks x 2 images, L=2
    ours = -torch.arange(3 * 3, dtype=torch.float64).reshape(3, 3) - 1          # L = 3
    out = omost.swap_context(own, [1, 0], ours)                                  # uncond first
    assert out.shape == (4, 6, 3)
    assert torch.equal(out[0], own[0].repeat(3, 1)) and torch.equal(out[1], own[1].repeat(3, 1))
    assert torch.equal(out[2], ours.repeat(2, 1)) and torch.equal(out[3], ours.repeat(2, 1))
    only_cond = omost.swap_context(own[:2], [0], ours)                           # CFG 1: no uncond chunk
    assert torch.equal(only_cond, ours.expand(2, -1, -1))                        # keeps its own length
    vec = torch.zeros(4, 5)
    swapped = omost.swap_rows(vec, [0, 1], torch.ones(5))
    assert swapped[:2].eq(1).all() and swapped[2:].eq(0).all()
    with pytest.raises(ValueError, match="does not split"):
        omost.swap_context(own[:3], [1, 0], ours)


def test_prompt_box_and_escaping():
    canvas = example_canvas()
    prompts = omost.region_prompts(canvas, "extra detail (red)", omost.APPEND)
    assert prompts[0].suffixes[-1] == "extra detail (red)."
    assert omost.region_prompts(canvas, "extra", omost.IGNORE)[0].suffixes == prompts[0].suffixes[:-1]
    assert omost.escape_webui_prompt("a (b) [c] BREAK d AND e: f\\") == "a \\(b\\) \\[c\\] break d and e: f\\\\"
    chunks = omost.chunk_texts(prompts, lambda t: len(t.split()))
    assert [r for r, _ in chunks][0] == 0 and sorted({r for r, _ in chunks}) == list(range(len(prompts)))
    assert omost.token_regions([(0, 3), (2, 2)]).tolist() == [0, 0, 0, 2, 2]


def lcm_swap(context, cond_or_uncond, regional, filler=None):
    """The context swap before issue 15: every row repeated to the LCM of both lengths (the reference for
    the cases whose result must not change)."""
    per = context.shape[0] // len(cond_or_uncond)
    length = math.lcm(context.shape[1], regional.shape[0])
    own = context.repeat(1, length // context.shape[1], 1)
    ours = regional.to(context.device, context.dtype).repeat(length // regional.shape[0], 1)
    return torch.cat([ours.expand(per, -1, -1) if c == 0 else own[j * per:(j + 1) * per]
                      for j, c in enumerate(cond_or_uncond)])


@settings(max_examples=120, deadline=None)
@given(own_chunks=st.integers(1, 30), canvas_chunks=st.integers(1, 30), chunk=st.sampled_from([1, 3, 77]),
       uncond_first=st.booleans())
def test_swap_context_length_is_bounded_and_exact_where_the_lcm_was_small(own_chunks, canvas_chunks, chunk,
                                                                          uncond_first):
    own = torch.randn(4, own_chunks * chunk, 2, dtype=torch.float64)       # 2 chunks x 2 images
    ours = torch.randn(canvas_chunks * chunk, 2, dtype=torch.float64)
    filler = torch.randn(chunk, 2, dtype=torch.float64)
    chunks = [1, 0] if uncond_first else [0, 1]
    out = omost.swap_context(own, chunks, ours, filler)
    longest = max(own.shape[1], ours.shape[0])
    lcm = math.lcm(own.shape[1], ours.shape[0])
    assert out.shape[1] <= omost.MAX_CONTEXT_REPEAT * longest
    if lcm <= omost.MAX_CONTEXT_REPEAT * longest:          # equal lengths, one dividing the other, small LCMs
        assert torch.equal(out, lcm_swap(own, chunks, ours))
        return
    assert out.shape[1] == longest
    cond, uncond = (out[2:], out[:2]) if uncond_first else (out[:2], out[2:])
    own_uncond = own[:2] if uncond_first else own[2:]
    for rows, x in ((cond, ours.expand(2, -1, -1)), (uncond, own_uncond)):
        copies, rest = divmod(longest, x.shape[1])
        assert torch.equal(rows[:, :copies * x.shape[1]], x.repeat(1, copies, 1))      # whole repetitions
        assert torch.equal(rows[:, copies * x.shape[1]:], filler.repeat(rest // chunk, 1).expand(2, -1, -1))


def test_swap_context_of_the_reported_lengths_stays_at_the_longer():
    own = torch.zeros(2, 1771, 3)                          # 23 chunks of negative prompt, uncond first
    out = omost.swap_context(own, [1, 0], torch.ones(1463, 3), torch.full((77, 3), 2.0))
    assert out.shape == (2, 1771, 3)                        # was 33,649 tokens (their LCM)
    assert out[0].eq(0).all() and out[1, :1463].eq(1).all() and out[1, 1463:].eq(2).all()
    with pytest.raises(ValueError, match="no filler"):
        omost.swap_context(own, [1, 0], torch.ones(1463, 3))


def test_filled_token_map_gives_filler_tokens_to_the_global_region():
    regions = torch.tensor([0, 0, 1, 2, 2])
    assert torch.equal(omost.fit_token_regions(regions, 15), regions.repeat(3))
    assert omost.fit_token_regions(regions, 12).tolist() == [0, 0, 1, 2, 2, 0, 0, 1, 2, 2, 0, 0]
    assert omost.fit_token_regions(regions, 5) is not regions and torch.equal(omost.fit_token_regions(regions, 5),
                                                                               regions)


def test_chunk_limit():
    omost.check_chunk_count(omost.MAX_CONTEXT_CHUNKS)
    with pytest.raises(CanvasError, match=f"more than the {omost.MAX_CONTEXT_CHUNKS}"):
        omost.check_chunk_count(omost.MAX_CONTEXT_CHUNKS + 1)


# --- in the stand-in ----------------------------------------------------------------------------------

def test_omost_generation_changes_the_image_and_round_trips_the_canvas(flavour):
    ui = harness.start_webui([ROOT])
    plain = ui.txt2img(prompt="a cat", cfg_scale=5)
    with harness.record_unet_calls() as calls:
        result = ui.txt2img(script_args=args_for(ui, [True]), prompt="a cat", cfg_scale=5)
    assert harness.reported_errors() == []
    assert not torch.equal(result.latents, plain.latents)
    canvas = example_canvas()
    # every UNet call got the canvas context: 77-token chunks, longer than the prompt's 77
    assert all(c.context_shape[1] % 77 == 0 and c.context_shape[1] > 77 for c in calls)
    text = result.infotexts[0]
    assert "Omost: True" in text and "Omost Method" not in text       # the default method is not written
    pasted = ui.paste(text)
    script = ui.script(TITLE)
    canvas_box = ui.runner().inputs[script.args_from + 1]
    assert canvas_to_json(load_canvas_text(pasted[canvas_box]).canvas) == canvas_to_json(canvas)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_method_runs_with_lcm_batch_cfg1_and_odd_sizes(family):
    with harness.use_flavour("forge"):
        ui = harness.start_webui([ROOT], family=family)
        long_negative = " ".join(["blurry"] * 90)                 # 2 chunks: the WebUI repeats to the LCM
        results = {}
        for method in omost.METHODS:
            results[method] = ui.txt2img(script_args=args_for(ui, [True, omost.FEATURE.by_name["canvas"].default,
                                                                   method, 1.0]),
                                         prompt="a cat", negative_prompt=long_negative, cfg_scale=5,
                                         width=72, height=56, batch_size=2).latents
        assert harness.reported_errors() == []
        values = list(results.values())
        assert all(not torch.equal(values[0], other) for other in values[1:])
        cfg1 = ui.txt2img(script_args=args_for(ui, [True]), prompt="a cat", cfg_scale=1)
        assert "Omost" in cfg1.extra_generation_params and harness.reported_errors() == []


def test_strength_zero_equals_plain_attention_over_the_canvas_text(flavour):
    ui = harness.start_webui([ROOT])
    zero = ui.txt2img(script_args=args_for(ui, [True, omost.FEATURE.by_name["canvas"].default,
                                                omost.OMOST, 0.0]), prompt="a cat", cfg_scale=5)
    ended = ui.txt2img(script_args=args_for(ui, [True, omost.FEATURE.by_name["canvas"].default,
                                                 omost.OMOST, 1.0, 0.0]), prompt="a cat", cfg_scale=5)
    full = ui.txt2img(script_args=args_for(ui, [True]), prompt="a cat", cfg_scale=5)
    # end percent 0: masks never act, so the result is the canvas text with plain attention, like strength 0
    assert torch.allclose(zero.latents, ended.latents, atol=1e-5)
    assert not torch.allclose(zero.latents, full.latents, atol=1e-4)


def test_encodings_are_cached_across_generations(flavour):
    ui = harness.start_webui([ROOT])
    from modules import shared
    model = shared.sd_model
    calls = []
    original = model.get_learned_conditioning

    def counting(prompts):
        calls.append(list(prompts))
        return original(prompts)
    model.get_learned_conditioning = counting
    try:
        ui.txt2img(script_args=args_for(ui, [True]), prompt="a cat", cfg_scale=5)
        first = [c for c in calls if c != ["a cat"] and c != [""]]
        calls.clear()
        ui.txt2img(script_args=args_for(ui, [True]), prompt="a cat", cfg_scale=5)
        second = [c for c in calls if c != ["a cat"] and c != [""]]
    finally:
        del model.get_learned_conditioning
    assert len(first) >= len(example_canvas().regions) + 1 and second == []


def test_bad_canvas_is_reported_and_nothing_runs(flavour):
    ui = harness.start_webui([ROOT])
    plain = ui.txt2img(prompt="a cat", cfg_scale=5)
    bad = ui.txt2img(script_args=args_for(ui, [True, '{"format": "omost-canvas", "version": 1, "regions": [}']),
                     prompt="a cat", cfg_scale=5)
    assert "Omost did not run" in bad.extra_generation_params["Omost note"]
    assert torch.equal(bad.latents, plain.latents)


def ignore_prompt_box(ui, **extra):
    return args_for(ui, [True, omost.FEATURE.by_name["canvas"].default, extra.get("method", omost.OMOST),
                         extra.get("strength", 1.0), 1.0, omost.IGNORE])


# The example canvas's prompt chunks with the stand-in's token counter (at most 75 tokens each, as Omost packs)
CANVAS_CHUNKS = 8


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_usual_prompt_lengths_give_the_image_of_lcm_repetition(flavour, chunks, monkeypatch):
    """The example canvas makes 8 chunks: with 1, 2 or 3 prompt/negative chunks the LCM is at most 4 x the
    longer, so the image is bit-identical to the swap before issue 15."""
    ui = harness.start_webui([ROOT])
    run = dict(script_args=ignore_prompt_box(ui), prompt=" BREAK ".join(["cat"] * chunks),
               negative_prompt=" BREAK ".join(["blurry"] * chunks), cfg_scale=5, batch_size=2)
    now = ui.txt2img(**run)
    monkeypatch.setattr(omost, "swap_context", lcm_swap)
    before = ui.txt2img(**run)
    assert harness.reported_errors() == []
    assert torch.equal(now.latents, before.latents)


@pytest.mark.parametrize("chunks", [7, 13])
def test_incompatible_lengths_stay_at_the_longer_context(flavour, chunks, monkeypatch):
    """7 prompt/negative chunks (539 tokens) against the canvas's 8 (616): the LCM would be 4,312 tokens;
    13 chunks (1,001) against 616: 8,008. Each UNet call now takes the longer length, and the regional
    stage still acts (the canvas filled up with global-region tokens when it is the shorter)."""
    ui = harness.start_webui([ROOT])
    run = dict(prompt=" BREAK ".join(["cat"] * chunks), negative_prompt=" BREAK ".join(["blurry"] * chunks),
               cfg_scale=5)
    with harness.record_unet_calls() as calls:
        full = ui.txt2img(script_args=ignore_prompt_box(ui), **run)
    plain_attention = ui.txt2img(script_args=ignore_prompt_box(ui, strength=0.0), **run)
    assert harness.reported_errors() == []
    assert {c.context_shape[1] for c in calls} == {77 * max(chunks, CANVAS_CHUNKS)}
    assert not torch.allclose(full.latents, plain_attention.latents, atol=1e-4)
    monkeypatch.setattr(omost, "swap_context", lcm_swap)
    with harness.record_unet_calls() as calls:
        ui.txt2img(script_args=ignore_prompt_box(ui), **run)
    assert {c.context_shape[1] for c in calls} == {77 * math.lcm(chunks, CANVAS_CHUNKS)}  # what it was


def test_a_canvas_of_too_many_chunks_is_refused_before_encoding():
    with harness.use_flavour("forge"):          # pure checks before any WebUI call: one flavour is enough
        too_many_chunks_refused(harness.start_webui([ROOT]))


def too_many_chunks_refused(ui):
    words = " ".join(["ox"] * 60)                            # one chunk per detailed description
    canvas = example_canvas()
    for region in canvas.regions:
        region.detailed_descriptions = [f"{words} {i}" for i in range(80)]
    assert len(canvas.regions) * 80 > omost.MAX_CONTEXT_CHUNKS
    plain = ui.txt2img(prompt="a cat", cfg_scale=5)
    refused = ui.txt2img(script_args=args_for(ui, [True, json.dumps(canvas_to_json(canvas))]), prompt="a cat",
                         cfg_scale=5)
    note = refused.extra_generation_params["Omost note"]
    assert f"more than the {omost.MAX_CONTEXT_CHUNKS}" in note and "Omost did not run" in note
    assert torch.equal(refused.latents, plain.latents)


def test_hostile_canvases_and_values_over_the_api_are_short_notes():
    with harness.use_flavour("forge"):          # parsing and validation only: one flavour is enough
        hostile_api_values_are_short_notes(harness.start_webui([ROOT]))


def hostile_api_values_are_short_notes(ui):
    request = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 5}
    plain = ui.api_txt2img(request)
    ours = json.dumps(canvas_to_json(example_canvas()))
    cases = {
        "lone surrogate": ([True, ours.replace("A golden retriever", "\\ud800")], "lone surrogate"),
        "5000-digit distance": ([True, ours.replace('"distance": 8.0', '"distance": ' + "7" * 5000, 1)],
                                "<an integer of 5000 digits>"),
        "50 MB canvas": ([True, ours + " " * 50_000_000], "the canvas text is too long"),
        "long method name": ([True, ours, "m" * 200_000], "Method: 'mmmm"),
        "enabled 'no'": (["no", ours], None),
    }
    for case, (args, message) in cases.items():
        result = ui.api_txt2img({**request, "alwayson_scripts": {TITLE: {"args": args}}})
        note = result.extra_generation_params.get("Omost note", "")
        assert torch.equal(result.latents, plain.latents), case
        if message is None:
            assert note == "" and "Omost" not in result.extra_generation_params, case
        else:
            assert message in note and "did not run" in note and len(note) < 500, (case, note[:300])
    assert harness.reported_errors() == []


def test_xyz_method_by_strength_cells_use_their_own_settings(flavour):
    ui = harness.start_webui([ROOT])
    xyz = ui.runner().selectable_scripts[0]
    labels = [o.label for o in xyz.current_axis_options]
    args = args_for(ui, [True])
    args[0] = ui.runner().selectable_scripts.index(xyz) + 1
    args[xyz.args_from:xyz.args_to] = [labels.index("[Omost] Method"), "", [omost.OMOST, omost.OVERLAY],
                                       labels.index("[Omost] Strength"), "0, 1", None, 0, "", None, True, False,
                                       False, False, False, False, False, 0, False]
    p = ui.make_p(script_args=args, prompt="a cat", cfg_scale=5)
    grid = ui.runner().run(p, *p.script_args)
    assert harness.reported_errors() == []
    cells = {(i, j): grid.cells[(i, j, 0)] for i in range(2) for j in range(2)}
    assert f"Omost Method: {omost.OVERLAY}" in cells[(1, 1)].infotexts[0]
    assert "Omost Strength: 0" in cells[(0, 0)].infotexts[0]
    assert torch.allclose(cells[(0, 0)].latents, cells[(1, 0)].latents, atol=1e-5)   # strength 0: same
    assert not torch.allclose(cells[(0, 1)].latents, cells[(1, 1)].latents, atol=1e-4)


def test_api_with_canvas_json_and_hires_pass(flavour):
    ui = harness.start_webui([ROOT])
    canvas_json = json.dumps(canvas_to_json(example_canvas()))
    result = ui.api_txt2img({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 5,
                             "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1, "hr_cfg": 5,
                             "hr_additional_modules": ["Use same choices"],
                             "alwayson_scripts": {"omost": {"args": [True, canvas_json, omost.COUPLE]}}})
    assert harness.reported_errors() == []
    assert "Omost Method: Attention couple" in result.infotexts[0]


# --- chat handlers ------------------------------------------------------------------------------------

class ScriptedBackend:
    """A backend that streams a fixed answer (or fails), as the real ones do."""

    def __init__(self, answer, fail=None):
        self.answer, self.fail = answer, fail

    def stream(self, messages, settings, stop):
        from lib_omost.llm import Finished, LLMError, TextDelta
        if self.fail:
            raise LLMError(self.fail)
        for i in range(0, len(self.answer), 200):
            yield TextDelta(self.answer[i:i + 200], i // 200 + 1)
        yield Finished("stop", self.answer, len(self.answer) // 200 + 1, 0.1)

    def count_tokens(self, messages):
        return sum(len(m["content"]) // 4 for m in messages), False

    def context_length(self):
        return None

    def describe(self):
        return "scripted"


def test_chat_stream_updates_canvas_and_keeps_conversation_on_failure(monkeypatch):
    from lib_omost.forge import omost_chat
    answer = open(os.path.join(ROOT, "tests", "data", "dragon_battle.response.md"), encoding="utf8").read()
    session = omost_chat.new_session()
    llm = omost_chat.LLMChoice()
    monkeypatch.setattr(omost_chat.LLMChoice, "make_backend", lambda self: ScriptedBackend(answer))
    steps = list(omost_chat.stream_answer(session, llm, "a dragon battle", "{}"))
    canvases = [json.loads(text) for _, text, _ in steps if text != "{}"]
    counts = [len(c["regions"]) for c in canvases]
    assert counts == sorted(counts) and counts[-1] == 4                   # the canvas grows while streaming
    pairs, final, status = steps[-1]
    assert pairs == [["a dragon battle", answer]] and status.startswith("done")
    monkeypatch.setattr(omost_chat.LLMChoice, "make_backend", lambda self: ScriptedBackend("", fail="refused"))
    pairs, text, status = list(omost_chat.stream_answer(session, llm, "more dragons", final))[-1]
    assert "refused" in status and "unchanged" in status and len(session.conversation.turns) == 1
    edited = json.loads(final)
    edited["regions"][0]["description"] = "A silver dragon."
    pairs, status = omost_chat.canvas_to_chat(session, json.dumps(edited))
    assert "A silver dragon." in session.conversation.last_answer
    pairs, text, status = omost_chat.undo(session, final)
    assert session.conversation.turns == [] and status == "the last turn was removed"
    monkeypatch.undo()
    assert "set the server URL" in list(omost_chat.stream_answer(session, omost_chat.LLMChoice(), "x", "{}"))[-1][2]


def test_stop_flag_is_cleared_for_each_answer(monkeypatch):
    from lib_omost.forge import omost_chat
    session = omost_chat.new_session()
    session.stop.set()
    monkeypatch.setattr(omost_chat.LLMChoice, "make_backend", lambda self: ScriptedBackend("no code here"))
    *_, last = omost_chat.stream_answer(session, omost_chat.LLMChoice(), "hello", "{}")
    assert isinstance(session.stop, threading.Event) and not session.stop.is_set()
    assert "no canvas could be read" in last[2]
