"""Omost in the WebUI: context swap, chunk encoding, the regional stage on real UNet calls (stand-in),
infotext round trip of the canvas, xyz over method x strength, the API with canvas JSON, chat handlers."""

import json
import os
import threading

import pytest
import torch

from lib_omost.canvas import canvas_to_json, example_canvas, load_canvas_text
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
    assert torch.equal(only_cond, ours.repeat(2, 1).expand(2, -1, -1))
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
