"""AttentionPlan composition, precedence and reporting (pure, no WebUI)."""

import copy

import torch

from lib_omost.attention.core import attention, halve_ceil, layer_hw
from lib_omost.attention.plan import ATTN1, ATTN2, AttentionPlan, AttnCall, LayerKey, compose

L1 = LayerKey("input", 1, 0)
L2 = LayerKey("output", 9, 0)


class Recorder:
    """A test stage: scales its inner attention's output and records that it ran."""

    def __init__(self, name, order, factor, layers=(L1,), exclusive=None, window=None, target=ATTN1, precedence=0):
        self.name, self.order, self.factor, self.layers = name, order, factor, layers
        self.exclusive, self.window, self.target, self.calls = exclusive, window, target, 0
        self.precedence = precedence

    def applies(self, layer):
        return layer in self.layers

    def active(self, call):
        return self.window is None or self.window[0] <= call.sigma <= self.window[1]

    def __call__(self, q, k, v, call, inner):
        self.calls += 1
        return inner(q, k, v, call) * self.factor + self.order


def call(sigma=1.0):
    return AttnCall(layer=L1, heads=2, hw=(2, 2), latent_hw=(2, 2), cond_rows=[0], uncond_rows=[],
                    sigmas=torch.tensor([sigma]))


def plain(q, k, v, c):
    return attention(q, k, v, c.heads)


def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 4, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_compose_orders_outer_to_inner():
    outer, inner_stage = Recorder("outer", 10, 2.0), Recorder("inner", 30, 3.0)
    q, k, v = qkv()
    fn = compose([inner_stage, outer], plain)
    expected = (plain(q, k, v, call()) * 3.0 + 30) * 2.0 + 10
    assert torch.allclose(fn(q, k, v, call()), expected)


def test_inactive_stage_passes_through_exactly():
    stage = Recorder("late", 10, 2.0, window=(0.0, 0.5))
    q, k, v = qkv()
    fn = compose([stage], plain)
    assert torch.equal(fn(q, k, v, call(sigma=1.0)), plain(q, k, v, call()))
    assert stage.calls == 0


def test_exclusive_precedence_and_fallback():
    msw = Recorder("MSW-MSA", 20, 2.0, exclusive="query partition", window=(0.0, 0.5))
    near = Recorder("Near-sighted", 20, 3.0, exclusive="query partition", precedence=1)
    q, k, v = qkv()
    fn = compose([near, msw], plain)     # listed in the wrong order on purpose
    base = plain(q, k, v, call())
    assert torch.allclose(fn(q, k, v, call(sigma=0.2)), base * 2.0 + 20)   # both active: MSW-MSA wins
    assert torch.allclose(fn(q, k, v, call(sigma=0.9)), base * 3.0 + 20)   # MSW-MSA inactive: Near-sighted
    assert msw.calls == 1 and near.calls == 1


def test_plan_with_feature_replaces_and_removes():
    a, b = Recorder("a", 10, 2.0), Recorder("b", 20, 3.0, layers=(L2,))
    plan = AttentionPlan().with_feature("fa", [a]).with_feature("fb", [b])
    plan2 = plan.with_feature("fa", [a])                  # running again does not duplicate
    assert plan2.stages.count(a) == 1 and len(plan2.stages) == 2
    assert plan.with_feature("fa").stages == [b]         # a feature turned off leaves nothing
    assert not AttentionPlan().with_feature("fa")
    assert plan.build(ATTN1, L2, plain) is not None and plan.build(ATTN2, L2, plain) is None
    assert copy.deepcopy(plan) is plan                   # clone() must share the plan, not copy it


def test_report_names_layers_and_precedence():
    msw = Recorder("MSW-MSA", 20, 2.0, exclusive="query partition", layers=(L1, L2))
    near = Recorder("Near-sighted", 20, 3.0, exclusive="query partition", layers=(L1,), precedence=1)
    lines = AttentionPlan().with_feature("x", [near, msw]).report([L1, L2])
    assert "MSW-MSA (attn1) on 2 layers: input:1:0, output:9:0" in lines
    assert "precedence MSW-MSA over Near-sighted while both are active, on input:1:0" in lines


def test_layer_hw_ceil_halving_and_fallback():
    assert layer_hw((17, 25), 17 * 25) == (17, 25)
    assert layer_hw((17, 25), 9 * 13) == (9, 13)
    assert layer_hw((17, 25), 5 * 7) == (5, 7)
    assert layer_hw((17, 25), 3 * 4) == (3, 4)
    assert halve_ceil(17, 3) == 3
    # a size changed by a patch before the layer (Deep Shrink 2x on a 64x96 latent): closest aspect
    assert layer_hw((64, 96), 16 * 24 // 1) == (16, 24)
    assert layer_hw((64, 96), 21 * 32) == (21, 32)


def test_one_marker_restores_what_each_slot_held():
    from lib_omost.forge import markers
    assert markers.ALL_MARKERS == (markers.OURS,) and markers.OURS.startswith("omost_")

    def theirs():
        pass
    table = {"wrapper": markers.mark(lambda: None, theirs), "new": markers.mark(lambda: None),
             "list": [theirs, markers.mark(lambda: None), theirs]}
    assert markers.before_ours(table["wrapper"]) is theirs and markers.before_ours(theirs) is theirs
    markers.unmark_slot(table, "wrapper")
    markers.unmark_slot(table, "new")
    markers.unmark_list(table, "list")
    assert table == {"wrapper": theirs, "list": [theirs, theirs]} and not markers.is_ours(theirs)


def test_every_omost_method_has_one_path():
    from lib_omost.features import omost
    blending = [m for m in omost.METHODS if omost.is_prediction_blending(m)]
    assert blending == [omost.BLEND]
    assert set(omost.ATTENTION_METHODS) == set(omost.METHODS) - {omost.BLEND}
