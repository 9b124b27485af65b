"""RefDrop: the accordion's parameters, layer selection, and its Save / Use AttentionPlan stages.

Save records the attention input that K and V are computed from (attn1's normed hidden states, an attn1
patch before the projections) of the first image's cond row (and uncond if asked) per (step, layer,
cond/uncond) into a ``ReferenceStore``, in fp16 or 8 bits; Use recomputes the reference's K/V through the
layer's own ``to_k`` / ``to_v`` and blends it into self-attention:
``(1 - c) * Attn(q, k, v) + c * Attn(q, k_ref, v_ref)``, the outermost attn1 stage (it sees the image's
own attention as composed by the stages inside it).

Steps are counted from the pass's sigma schedule (``step_index``); all model calls of one step share its
index (second-order samplers: the first recorded call of a step is the reference for every call of it).
A reference is one row, broadcast to every image of a batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from lib_omost.attention.plan import ATTN1, AttnCall, LayerKey
from lib_omost.attention.refdrop import (
    MissingReferenceError,
    ReferenceMismatchError,
    refdrop_attention,
)
from lib_omost.attention.refdrop_store import (
    INPUT8,
    INPUT16,
    MIB,
    Projection,
    ReferenceBudgetError,
    ReferenceStore,
    attn1_layers,
    reference_bytes,
)
from lib_omost.model_info import ModelInfo
from lib_omost.params import BOOL, CHOICE, FLOAT, TEXT, Feature, Param
from lib_omost.quoting import quoted

SAVE, USE = "Save", "Use"
BITS16, BITS8 = "16-bit", "8-bit"
GROUPS = ("input", "middle", "output")

FEATURE = Feature("refdrop", "RefDrop", (
    Param("mode", "Mode", CHOICE, SAVE, choices=(SAVE, USE),
          help="Save: record this generation's self-attention as the named reference. Use: blend it in."),
    Param("coefficient", "Coefficient", FLOAT, 0.3, -1.0, 1.0, 0.01, when=(("mode", (USE,)),),
          help="c > 0 (0.2-0.6): consistency with the reference; c < 0 (-0.2 to -0.3): diversity."),
    Param("reference", "Reference", TEXT, "default",
          help="Name of the reference to save or use (a file in the extension's refdrop_references folder)."),
    Param("save_percent", "Save percentage", FLOAT, 100.0, 0.0, 100.0, 1.0,
          help="Only the first part of the steps is saved and used."),
    Param("input", "Input layers", BOOL, True),
    Param("middle", "Middle layers", BOOL, True),
    Param("output", "Output layers", BOOL, True),
    Param("disabled_layers", "Disabled layers", TEXT, "", xyz=False,
          help="Layers to skip, as group:index or group:first-last, comma separated (e.g. output:0-3)."),
    Param("hires_pass", "Apply in hires pass", BOOL, False, when=(("mode", (USE,)),),
          help="Save records only the first pass; Use blends in the hires pass too when on."),
    Param("keep_uncond", "Store negative rows too", BOOL, False, xyz=False, when=(("mode", (SAVE,)),),
          help="Save the negative prompt's rows too (twice the memory); otherwise it uses the positive ones."),
    Param("precision", "Reference precision", CHOICE, BITS16, choices=(BITS16, BITS8), xyz=False,
          when=(("mode", (SAVE,)),),
          help="8-bit: half the size of 16-bit, with a small error in the reference's attention output."),
))

_RANGE = re.compile(r"\s*(input|middle|output)\s*:\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9}))?\s*")


def group_layers(layers) -> dict[str, list[LayerKey]]:
    """The model's self-attention layers per group, in forward order (the index used by "group:index")."""
    groups: dict[str, list[LayerKey]] = {g: [] for g in GROUPS}
    for layer in layers:
        groups[layer.block].append(layer)
    return groups


def index_table(layers) -> str:
    """Human-readable "group:index = block" lines, shown in the UI help."""
    lines = []
    for group, members in group_layers(layers).items():
        lines += [f"{group}:{i} = {group} block {layer.number}, transformer {layer.index}"
                  for i, layer in enumerate(members)]
    return "\n".join(lines)


def parse_disabled(text: str, layers) -> set[LayerKey]:
    """The layers named by a "group:index[-last], ..." list; ValueError naming the field, the bad item and
    what is allowed on this model."""
    groups = group_layers(layers)
    chosen: set[LayerKey] = set()
    field_label = FEATURE.by_name["disabled_layers"].label
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _RANGE.fullmatch(item)
        if not match:
            raise ValueError(f"{field_label}: {quoted(item)} is not group:index or group:first-last (groups: "
                             f"{', '.join(GROUPS)}; e.g. output:0-3)")
        group, first = match.group(1), int(match.group(2))
        last = int(match.group(3)) if match.group(3) is not None else first
        count = len(groups[group])
        if first > last:
            raise ValueError(f"{field_label}: {quoted(item)} runs backwards ({first} > {last}); write "
                             f"{group}:{last}-{first}")
        if last >= count:
            held = f"has indices 0-{count - 1}" if count else "has no self-attention layers"
            raise ValueError(f"{field_label}: {quoted(item)}: {group} {held} on this model (indices count "
                             f"inside each group; see the layer index tables)")
        chosen.update(groups[group][first:last + 1])
    return chosen


def index_ranges(indices) -> list[str]:
    """Sorted integers as "first-last" runs: [0, 1, 2, 5] -> ["0-2", "5"]."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]


def describe_steps(steps) -> str:
    """"step 3" or "steps 0-1, 5"."""
    runs = index_ranges(steps)
    return f"step{'s' if len(runs) > 1 or '-' in runs[0] else ''} {', '.join(runs)}"


def layer_ranges(chosen, layers) -> str:
    """``chosen`` in the disabled-list notation ("input:0-5, output:3"), indices as in ``group_layers``."""
    return ", ".join(f"{group}:{run}" for group, members in group_layers(layers).items()
                     for run in index_ranges(i for i, layer in enumerate(members) if layer in chosen))


def selected_layers(values: dict, layers) -> set[LayerKey]:
    disabled = parse_disabled(values["disabled_layers"], layers)
    return {layer for layer in layers if values[layer.block] and layer not in disabled}


def saved_steps(steps: int, save_percent: float) -> int:
    """How many leading steps are saved/used: ceil of the percentage, at least one when above 0."""
    if save_percent <= 0:
        return 0
    return min(steps, max(1, -(-int(round(steps * save_percent)) // 100)))


def save_bytes(info: ModelInfo, layers, latent_hw: tuple[int, int], steps: int, rows: int,
               precision: str = BITS16) -> int:
    """Bytes a Save of ``steps`` steps on ``layers`` stores at a latent size (``rows`` rows per key)."""
    tokens = {layer: count for layer, count, _ in attn1_layers(info.family, latent_hw)}
    return reference_bytes([(layer, tokens[layer], info.layers[layer]) for layer in layers], steps, rows,
                           INPUT8 if precision == BITS8 else INPUT16)


def format_mib(nbytes: float) -> str:
    mib = nbytes / MIB
    return f"{mib:.1f} MiB" if mib >= 1 else f"{mib:.3g} MiB"


def check_save_budget(needed: int, budget: int, setting: str) -> None:
    """ReferenceBudgetError naming the need, the budget, its setting and what else to change."""
    if needed > budget:
        raise ReferenceBudgetError(
            f"saving this reference needs {format_mib(needed)}, above the RefDrop memory budget of "
            f"{format_mib(budget)}; raise the budget (Settings: {setting}), lower the save percentage, disable "
            f"layer groups or layers, or save at a smaller resolution")


@dataclass
class RefDropStage:
    """Save or Use on the selected layers. ``step_of(sigma) -> int`` comes from the pass's schedule.

    Save is a pre-projection stage (``patch``: it records the input K and V are computed from); Use is an
    attention stage (``__call__``) that needs ``projections[layer](n) -> (k, v)``, the layer's own to_k/to_v.
    """
    mode: str
    layers: set
    store: ReferenceStore
    step_of: Callable[[float], int]
    steps_limit: int
    coefficient: float = 0.0
    reference: str = ""                                 # the reference's name, for messages
    projections: dict = field(default_factory=dict)     # Use: LayerKey -> Projection
    problems: list = field(default_factory=list)       # filled at run time; reported in the infotext
    steps_without_reference: set = field(default_factory=set)   # Use: sampled steps the reference lacks
    name: str = "RefDrop"
    target: str = ATTN1
    order: int = 10
    exclusive: str | None = None

    def __post_init__(self) -> None:
        # Use blends only on the steps the reference holds (e.g. it was saved with a lower save percentage)
        self.reference_steps = frozenset(self.store.steps()) if self.mode == USE else None
        self._step_kv: tuple = (None, None, None, {})    # (step, device, dtype, {id(entry): (entry, (k, v))})

    def step_kv(self, step: int, layer: LayerKey, entry, like) -> tuple:
        """An entry's K/V on ``like``'s device and dtype, computed once per step and layer.

        Every call of a step (cond and uncond in split calls, a second-order sampler's extra calls) reuses
        them; those of the previous step are dropped when the step changes.
        """
        if self._step_kv[:3] != (step, like.device, like.dtype):
            self._step_kv = (step, like.device, like.dtype, {})
        cache = self._step_kv[3]
        if id(entry) not in cache:
            project: Projection | None = self.projections.get(layer)
            cache[id(entry)] = (entry, entry.kv(like.device, like.dtype, project))
        return cache[id(entry)][1]

    def applies(self, layer: LayerKey) -> bool:
        return layer in self.layers

    def active(self, call: AttnCall) -> bool:
        if call.sigma is None or self.problems:
            return False
        try:
            step = self.step_of(call.sigma)
        except ValueError as e:     # a call outside the pass's schedule: stop, and say so, rather than raise
            self.problems.append(f"cannot tell the sampling step of sigma {call.sigma:g} ({e})")
            return False
        if step >= self.steps_limit:
            return False
        if self.reference_steps is not None and step not in self.reference_steps:
            self.steps_without_reference.add(step)
            return False
        return True

    def patch(self, n, context, value, call: AttnCall):
        """Save: record the input of K (``context``: ``n`` itself in self-attention), unchanged."""
        if value is not context:
            self.problems.append(f"at {call.layer.label()} another extension gives attn1 a V input that is not its "
                                 "K input, which a reference of one input cannot reproduce")
            return n, context, value
        try:
            self.store.record(self.step_of(call.sigma), call.layer, context, call.cond_rows, call.uncond_rows)
        except ReferenceBudgetError as e:
            self.problems.append(str(e))  # stops recording; the runner then writes no partial reference
        return n, context, value

    def __call__(self, q, k, v, call: AttnCall, inner):
        step = self.step_of(call.sigma)
        try:
            k_ref, v_ref = self.store.for_rows(step, call.layer, call.cond_rows, call.uncond_rows, q.shape[0],
                                               lambda entry: self.step_kv(step, call.layer, entry, q))
            return refdrop_attention(q, k, v, k_ref, v_ref, call.heads, self.coefficient,
                                     inner=lambda q_, k_, v_: inner(q_, k_, v_, call))
        except (MissingReferenceError, ReferenceMismatchError) as e:
            self.problems.append(str(e))      # stops the stage for the rest of the pass (see active)
            return inner(q, k, v, call)


def check_widths(reference_widths: dict, info: ModelInfo, layers) -> None:
    """ReferenceMismatchError when a selected layer's K/V width differs from the reference's."""
    for layer in layers:
        label = layer.label()
        if label in reference_widths and reference_widths[label] != info.layers[layer]:
            raise ReferenceMismatchError(
                f"the reference's K/V width at {label} is {reference_widths[label]}, this model's is "
                f"{info.layers[layer]}: it was saved with another model family; save a new reference")

