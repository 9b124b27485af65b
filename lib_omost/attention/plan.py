"""The AttentionPlan: every attention-changing technique of one generation, installed once per layer.

The WebUI keeps exactly one attention replacement per transformer-block key, so techniques that each
install their own replacement overwrite each other. Here every technique contributes a *stage*; the
plan composes the stages that apply to a layer into one function per key (and, for stages that need the
hidden state before projection, one attn1/attn2 patch). A replacement that was installed before us
(another extension) becomes the innermost attention function.

Composition order on one layer (outermost first), by ``Stage.order``:

    attn1:  reference blend (RefDrop, 10) -> query partition (MSW-MSA / Near-sighted, 20)
            -> K/V reduction (Slothful, 30) -> inner attention
    attn2:  regional conditioning (Omost, 10) -> inner attention

Two stages of one ``exclusive`` group on one layer (two query partitions) cannot both act on the same
call: the one with the lower ``precedence`` (a number each such stage carries) runs while it is active, the
other runs when the first is inactive (outside its time window). ``AttentionPlan.report()`` states this
for the infotext.

Everything here is pure: layers are ``LayerKey`` tuples and each call carries an ``AttnCall``; the WebUI
adapter (``lib_omost.forge.pass_plan``) translates the WebUI's keys and options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import torch

ATTN1 = "attn1"
ATTN2 = "attn2"

class LayerKey(NamedTuple):
    """A transformer block: ("input" | "middle" | "output", block number, depth index inside the block)."""
    block: str
    number: int
    index: int

    def label(self) -> str:
        return f"{self.block}:{self.number}:{self.index}"


@dataclass
class AttnCall:
    """What a stage may know about one attention call, independent of the WebUI flavour."""
    layer: LayerKey
    heads: int
    hw: tuple[int, int]                 # query grid of this layer (h * w == number of query tokens)
    latent_hw: tuple[int, int]          # the UNet input's latent size
    cond_rows: list[int]                # rows of the batch that belong to a positive prompt
    uncond_rows: list[int]              # rows that belong to the negative prompt
    sigmas: torch.Tensor | None         # per-image sigma of this call ([images])
    options: dict[str, Any] = field(default_factory=dict)   # the WebUI's raw extra_options (read only)
    host_sigma: float | None = None     # the largest sigma as a Python float (read from the device once)

    @property
    def sigma(self) -> float | None:
        if self.host_sigma is None:
            self.host_sigma = HostSigma.read(self.sigmas)
        return self.host_sigma


class HostSigma:
    """The largest sigma of a call as a Python float, read from the device once per UNet forward.

    Every attention call and block patch of one UNet forward carries the same ``sigmas`` tensor (on the
    GPU, reading it synchronises with the device): the value is read when a new tensor (or an in-place
    change of it) is seen, and reused for every later call. ``reads`` counts the reads.
    """

    def __init__(self) -> None:
        self._seen: tuple | None = None      # (tensor, its version, value)
        self.reads = 0

    @staticmethod
    def read(sigmas: torch.Tensor | None) -> float | None:
        return None if sigmas is None or sigmas.numel() == 0 else float(sigmas.max())

    def __call__(self, sigmas: torch.Tensor | None) -> float | None:
        if sigmas is None:
            return None
        version = None if sigmas.is_inference() else sigmas._version     # inference tensors have no counter
        if self._seen is None or self._seen[0] is not sigmas or self._seen[1] != version:
            self._seen = (sigmas, version, self.read(sigmas))
            self.reads += 1
        return self._seen[2]


AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnCall], torch.Tensor]
PatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnCall], tuple]


class Stage(Protocol):
    """One technique's contribution to a layer's attention."""
    name: str            # shown in logs and the infotext
    target: str          # ATTN1 or ATTN2
    order: int           # composition position, lower = outer
    exclusive: str | None   # group of stages that cannot both act on one call, or None
    # precedence: int       # (stages of an exclusive group) lower runs first while active; default 0

    def applies(self, layer: LayerKey) -> bool: ...          # static: decided once per generation
    def active(self, call: AttnCall) -> bool: ...            # dynamic: e.g. a sigma window

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: AttnCall,
                 inner: AttnFn) -> torch.Tensor: ...


class PreProjectionStage(Protocol):
    """A stage that changes the hidden states before the q/k/v projections (an attn patch)."""
    name: str
    target: str
    exclusive: str | None

    def applies(self, layer: LayerKey) -> bool: ...
    def active(self, call: AttnCall) -> bool: ...

    def patch(self, n: torch.Tensor, context: torch.Tensor, value: torch.Tensor,
              call: AttnCall) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def _guarded(stage, inner: AttnFn) -> AttnFn:
    def run(q, k, v, call):
        if not stage.active(call):
            return inner(q, k, v, call)
        return stage(q, k, v, call, inner)
    return run


def _first_active(stages: Sequence, inner: AttnFn) -> AttnFn:
    """Exclusive stages: the first one that is active on this call runs, the others pass through."""
    def run(q, k, v, call):
        for stage in stages:
            if stage.active(call):
                return stage(q, k, v, call, inner)
        return inner(q, k, v, call)
    return run


def _precedence(stage) -> int:
    return getattr(stage, "precedence", 0)


def compose(stages: Sequence, inner: AttnFn) -> AttnFn:
    """One attention function running ``stages`` (outermost = lowest order) around ``inner``."""
    groups: dict[tuple[int, str], list] = {}
    for stage in stages:
        group = (stage.order, stage.exclusive or f"#{id(stage)}")
        groups.setdefault(group, []).append(stage)
    fn = inner
    for group in sorted(groups, reverse=True):
        members = sorted(groups[group], key=_precedence)
        fn = _guarded(members[0], fn) if len(members) == 1 else _first_active(members, fn)
    return fn


class AttentionPlan:
    """The stages of one sampling pass, grouped by the feature that contributed them.

    Immutable: ``with_feature`` returns a new plan, so a feature that runs again (hires pass, a second
    ``process_before_every_sampling`` call) replaces its own stages instead of adding duplicates.
    Deep copies return the plan itself: the WebUI deep-copies ``model_options`` on every ``clone()``,
    and the plan (with the tensors its stages hold) must be shared, not duplicated.
    """

    def __init__(self, by_feature: dict[str, tuple[tuple, tuple]] | None = None) -> None:
        self.by_feature = dict(by_feature or {})
        self.stages = [s for stages, _ in self.by_feature.values() for s in stages]
        self.pre_stages = [s for _, pre in self.by_feature.values() for s in pre]

    def with_feature(self, key: str, stages: Sequence = (), pre_stages: Sequence = ()) -> "AttentionPlan":
        by_feature = dict(self.by_feature)
        by_feature.pop(key, None)
        if stages or pre_stages:
            by_feature[key] = (tuple(stages), tuple(pre_stages))
        return AttentionPlan(by_feature)

    def __deepcopy__(self, memo) -> "AttentionPlan":
        return self

    def __bool__(self) -> bool:
        return bool(self.stages or self.pre_stages)

    def stages_for(self, target: str, layer: LayerKey) -> list:
        return [s for s in self.stages if s.target == target and s.applies(layer)]

    def pre_stages_for(self, target: str, layer: LayerKey) -> list:
        return [s for s in self.pre_stages if s.target == target and s.applies(layer)]

    def build(self, target: str, layer: LayerKey, inner: AttnFn) -> AttnFn | None:
        """The composed attention for one layer, or None when no stage applies there."""
        stages = self.stages_for(target, layer)
        return compose(stages, inner) if stages else None

    def pre_projection(self, target: str, layer: LayerKey, n, context, value, call: AttnCall):
        for stage in self.pre_stages_for(target, layer):
            if stage.active(call):
                n, context, value = stage.patch(n, context, value, call)
        return n, context, value

    def report(self, layers: Sequence[LayerKey]) -> list[str]:
        """Human-readable lines: which stage runs on which layers, and every precedence decision."""
        lines = []
        for target in (ATTN1, ATTN2):
            by_stage: dict[str, list[str]] = {}
            conflicts: dict[str, list[str]] = {}
            for layer in layers:
                stages = self.stages_for(target, layer) + self.pre_stages_for(target, layer)
                for stage in stages:
                    by_stage.setdefault(stage.name, []).append(layer.label())
                groups: dict[str, list] = {}
                for stage in stages:
                    if stage.exclusive:
                        groups.setdefault(stage.exclusive, []).append(stage)
                for members in groups.values():
                    if len(members) > 1:
                        names = " over ".join(s.name for s in sorted(members, key=_precedence))
                        conflicts.setdefault(names, []).append(layer.label())
            for name, labels in by_stage.items():
                lines.append(f"{name} ({target}) on {len(labels)} layers: {', '.join(labels)}")
            for names, labels in conflicts.items():
                lines.append(f"precedence {names} while both are active, on {', '.join(labels)}")
        return lines
