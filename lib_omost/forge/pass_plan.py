"""One sampling pass's plan: everything a generation changes on the UNet and at the sampler's start, and the
one installer that puts it on. This is the file that decides what a generation changes in the WebUI.

Each accordion contributes its ``Parts`` under its own key (``lib_omost.forge.accordions``); ``install``
puts the whole pass's plan on one clone of the pass's UNet (the clone is made once per pass and reused by
the next accordion while nobody else replaced it), and logs it in one place (``write_precedence`` puts its
precedence decisions in the infotext). A pass is the first pass or the hires pass: a plan left by another pass
(Forge main calls the hires pass's hook once on the first pass's UNet) is replaced, never added to.

Composition with other extensions, decided here:

| what another extension set before ours  | what happens                                                      |
| --------------------------------------- | ----------------------------------------------------------------- |
| attention replace (attn1 / attn2)       | kept; called as the innermost attention of our replace            |
| attn1 / attn2 patches, block patches,   | kept; ours are added after them (block patches that both resize    |
| block inner modifiers                   | one block may break the image: the user is told)                  |
| model_function_wrapper                  | kept; ours wraps it (theirs runs inside ours, on our arguments)   |
| conditioning modifiers                  | kept; ours run after them, on what they returned                  |
| object patches                          | kept; ours calls theirs and adds to its output                    |
| ``p.sampler_noise_scheduler_override``  | kept; ours asks it for the longer schedule it takes the tail of   |
| ``p.modified_noise``                    | kept; ours starts from it instead of the WebUI's noise            |

What we installed earlier (in this pass, or Forge main's discarded first hires call) is taken off first
(``lib_omost.forge.markers``), so installing again replaces our own parts and never stacks them. Not
covered: an extension whose script runs between two of ours and wraps our wrapper or replace (rather than
setting its own beside it) keeps calling the parts of ours it saw, and ours are installed again around it
(those then run twice).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from lib_omost.attention.core import layer_hw
from lib_omost.attention.plan import (
    ATTN1,
    ATTN2,
    AttentionPlan,
    AttnCall,
    HostSigma,
    LayerKey,
)
from lib_omost.features import slothful
from lib_omost.forge.markers import before_ours, is_ours, mark, unmark_list, unmark_slot
from lib_omost.forge.webui import FORGE, flavour
from lib_omost.model_info import ModelInfo

log = logging.getLogger("sd-forge-omost")

PASS_KEY = "omost_pass_plan"        # the installed PassPlan, in model_options (survives clone())
# infotext: the precedence decisions; the stage that yields is always Slothful / Near-sighted (to MSW-MSA)
PLAN_LINE = f"{slothful.FEATURE.title} precedence"
HIRES = " (hires pass)"
BLOCK_PATCHES = {
    "input_block_patch": "set_model_input_block_patch",
    "input_block_patch_after_skip": "set_model_input_block_patch_after_skip",
    "output_block_patch": "set_model_output_block_patch",
}


@dataclass(frozen=True)
class Parts:
    """What one accordion changes in one sampling pass (every field optional)."""
    stages: tuple = ()                  # attention stages (lib_omost.attention.plan.Stage)
    pre_stages: tuple = ()              # stages before the q/k/v projections (RefDrop Save)
    block_patches: object = None        # a lib_omost.features.hidiffusion.BlockPatches
    wrappers: tuple = ()                # make(previous) -> a model_function_wrapper calling previous; inner first
    modifiers: tuple = ()               # conditioning modifiers
    object_patches: Callable | None = None    # (unet) -> {name: function replacing unet.object_patches.get(name)}
    start: Callable | None = None       # (noise, previous override) -> (start noise, scheduler override, log line)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        words = [f"{len(self.stages)} attention stage(s)" if self.stages else "",
                 f"{len(self.pre_stages)} pre-projection stage(s)" if self.pre_stages else "",
                 "block patches" if self.block_patches else "",
                 f"{len(self.wrappers)} model wrapper(s)" if self.wrappers else "",
                 f"{len(self.modifiers)} conditioning modifier(s)" if self.modifiers else "",
                 "layer forwards (object patches)" if self.object_patches else "",
                 "the start noise and schedule" if self.start else ""]
        return ", ".join(w for w in words if w) or "nothing"


class PassPlan:
    """The Parts of every accordion in one sampling pass. Immutable but for what install() records on it;
    deep copies return the plan itself (the WebUI deep-copies model_options on every clone())."""

    def __init__(self, hires: bool, by_feature: dict[str, Parts] | None = None, info=None) -> None:
        self.hires = hires
        self.by_feature = dict(by_feature or {})
        self.info = info                        # the model facts the attention plan is built for
        self.attention = AttentionPlan({k: (v.stages, v.pre_stages) for k, v in self.by_feature.items()
                                        if v.stages or v.pre_stages})
        self.owner = None                       # weak reference to the clone this plan is installed on
        self.started = None                     # (noise the start took or None, noise it made)

    def with_feature(self, key: str, parts: Parts | None, info=None) -> PassPlan:
        by_feature = {k: v for k, v in self.by_feature.items() if k != key}
        if parts:
            by_feature[key] = parts
        return PassPlan(self.hires, by_feature, info or self.info)

    def __deepcopy__(self, memo) -> PassPlan:
        return self

    def __bool__(self) -> bool:
        return bool(self.by_feature)

    def all(self, name: str) -> list:
        return [getattr(parts, name) for parts in self.by_feature.values() if getattr(parts, name)]

    @property
    def start(self):
        starts = self.all("start")
        return starts[0] if starts else None

    def installed_on(self, unet) -> bool:
        return self.owner is not None and self.owner() is unet


def installed_plan(unet) -> PassPlan | None:
    return unet.model_options.get(PASS_KEY)


def _this_pass(p) -> bool:
    return bool(getattr(p, "is_hr_pass", False))


def install(p, key: str, parts: Parts | None, info=None, noise=None) -> list[str]:
    """Set ``key``'s parts for this sampling pass (None or empty: it changes nothing) and put the whole plan
    on the pass's UNet. ``noise``: the WebUI's starting noise (for a start part). Returns notes for the user
    about ``key``'s parts. With nothing of ours installed and nothing to install, nothing is touched."""
    hires = _this_pass(p)
    current = p.sd_model.forge_objects.unet
    installed = installed_plan(current)
    earlier = installed if installed is not None and installed.hires == hires else PassPlan(hires)
    if installed is earlier and not parts and key not in earlier.by_feature:
        return []                               # this accordion changes nothing that is there
    plan = earlier.with_feature(key, parts, info)
    notes = []
    if installed is not None or plan:
        unet = current if installed is earlier and earlier.installed_on(current) else current.clone()
        take_off_ours(unet)
        notes += _put_on(unet, plan, parts)
        unet.model_options[PASS_KEY] = plan
        plan.owner = weakref.ref(unet)
        p.sd_model.forge_objects.unet = unet
        if parts:
            log.info("%s%s: %s", key, HIRES if hires else "", parts.describe())
            for line in plan.attention.report(list(plan.info.layers)) if parts.stages or parts.pre_stages else []:
                log.info("AttentionPlan: %s", line)
    notes += _put_start(p, plan, earlier, noise)
    return notes


def take_off_ours(unet) -> None:
    """Take everything of ours off a UNet clone, giving back what each part replaced."""
    options = unet.model_options
    take_off_attention(options)
    transformer = options.get("transformer_options", {})
    for name in BLOCK_PATCHES:
        unmark_list(transformer.get("patches", {}), name)
    unmark_list(transformer, "block_inner_modifiers")
    unmark_list(options, "conditioning_modifiers")
    unmark_slot(options, "model_function_wrapper")
    for name in list(unet.object_patches):
        unmark_slot(unet.object_patches, name)


def _put_on(unet, plan: PassPlan, parts: Parts | None) -> list[str]:
    """Put the plan's UNet parts on ``unet`` (ours are off it). Notes concern ``parts`` (the new ones)."""
    notes = []
    if plan.attention:
        install_plan(unet, plan.attention, plan.info)
    for patches in plan.all("block_patches"):
        foreign = foreign_block_patches(unet)
        if foreign and parts is not None and patches is parts.block_patches:
            notes.append(f"another extension's block patches are active ({', '.join(sorted(set(foreign)))}, e.g. "
                         "Deep Shrink); if both resize the same block the image may break: turn one off")
        _put_block_patches(unet, patches)
    wrappers = [make for makers in plan.all("wrappers") for make in makers]
    if wrappers:
        foreign = unet.model_options.get("model_function_wrapper")
        wrapper = foreign
        for make in wrappers:
            wrapper = make(wrapper)
        unet.set_model_unet_function_wrapper(mark(wrapper, foreign))
    modifiers = [mark(m) for ms in plan.all("modifiers") for m in ms]
    if modifiers:
        unet.model_options["conditioning_modifiers"] = unet.model_options.get("conditioning_modifiers", []) + modifiers
    for make in plan.all("object_patches"):
        for name, fn in make(unet).items():
            unet.add_object_patch(name, mark(fn, unet.object_patches.get(name)))
    return notes


# ---- attention: an AttentionPlan as one replace per key, foreign replaces kept inside -------------------
# Forge and reForge look a replace up by (block, number, depth index) first, then by (block, number). Ours
# goes under the three-part key of every layer a stage applies to; a replace another extension put under
# either key becomes our innermost attention function, so both run.

PATCH_NAMES = {ATTN1: "attn1_patch", ATTN2: "attn2_patch"}


def cond_uncond_rows(options: dict, batch: int) -> tuple[list[int], list[int]]:
    """Rows of an attention batch that belong to cond and to uncond chunks.

    Forge main passes cond_indices/uncond_indices; reForge passes only cond_or_uncond (one entry per
    chunk, 0 = cond, 1 = uncond), and row i of chunk j is j * rows_per_chunk + i. Without either, every
    row is treated as cond (a caller that does not batch by chunks).
    """
    if "cond_indices" in options and "uncond_indices" in options:
        return list(options["cond_indices"]), list(options["uncond_indices"])
    chunks = options.get("cond_or_uncond")
    if not chunks:
        return list(range(batch)), []
    if batch % len(chunks):
        raise ValueError(f"attention batch {batch} does not split into {len(chunks)} cond/uncond chunks")
    per = batch // len(chunks)
    cond = [j * per + i for j, c in enumerate(chunks) if c == 0 for i in range(per)]
    uncond = [j * per + i for j, c in enumerate(chunks) if c != 0 for i in range(per)]
    return cond, uncond


def layer_key(options: dict) -> LayerKey:
    block = options["block"]
    return LayerKey(block[0], int(block[1]), int(options.get("block_index", 0)))


def make_call(q: torch.Tensor, options: dict, layer: LayerKey, sigma_of: HostSigma | None = None) -> AttnCall:
    """The flavour-independent description of one attention call (``sigma_of``: the install's shared reader
    of the forward's sigma, so that the device is read once per forward, not once per layer)."""
    shape = options.get("original_shape")
    latent_hw = (int(shape[-2]), int(shape[-1])) if shape is not None else (q.shape[1], 1)
    cond, uncond = cond_uncond_rows(options, q.shape[0])
    sigmas = options.get("sigmas")
    return AttnCall(layer=layer, heads=int(options["n_heads"]), hw=layer_hw(latent_hw, q.shape[1]),
                    latent_hw=latent_hw, cond_rows=cond, uncond_rows=uncond, sigmas=sigmas,
                    options=options, host_sigma=sigma_of(sigmas) if sigma_of is not None else None)


PLAN_KEY = "omost_attention_plan"   # the attention plan installed last, in model_options (survives clone())


def _replace_table(model_options: dict, target: str) -> dict:
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get(target, {})


def foreign_replace(model_options: dict, target: str, layer: LayerKey):
    """The replace another extension installed for this layer, if any (same lookup as the WebUI).

    A replace of ours from an earlier install is seen through: what its key held before is looked up.
    """
    table = _replace_table(model_options, target)
    fn = before_ours(table.get(tuple(layer)))
    return fn if fn is not None else table.get((layer.block, layer.number))


def _inner(info: ModelInfo, foreign) -> Callable:
    if foreign is not None:
        return lambda q, k, v, call: foreign(q, k, v, call.options)
    attention = info.attention
    return lambda q, k, v, call: attention(q, k, v, call.heads, call.options)


def _replace(fn, layer: LayerKey, sigma_of: HostSigma):
    def replace(q, k, v, extra_options):
        return fn(q, k, v, make_call(q, extra_options, layer, sigma_of))
    return replace


def _pre_projection_patch(plan: AttentionPlan, target: str, sigma_of: HostSigma):
    def patch(n, context, value, extra_options):
        block = extra_options.get("block")
        if block is None:
            return n, context, value
        layer = layer_key(extra_options)
        if not plan.pre_stages_for(target, layer):
            return n, context, value
        return plan.pre_projection(target, layer, n, context, value,
                                   make_call(n, extra_options, layer, sigma_of))
    return patch


def take_off_attention(model_options: dict) -> None:
    """Take our replaces and attn patches off (an earlier install of ours), giving back what they replaced."""
    for target in (ATTN1, ATTN2):
        table = _replace_table(model_options, target)
        for key in list(table):
            unmark_slot(table, key)
    patches = model_options.get("transformer_options", {}).get("patches", {})
    for name in PATCH_NAMES.values():
        unmark_list(patches, name)


def install_plan(unet, plan: AttentionPlan, info: ModelInfo) -> list[LayerKey]:
    """Put ``plan`` on ``unet`` (a clone the caller owns), replacing what an earlier install of ours put there.

    Returns the layers that got a replace.
    """
    unet.model_options[PLAN_KEY] = plan
    take_off_attention(unet.model_options)
    installed = []
    sigma_of = HostSigma()
    for target in (ATTN1, ATTN2):
        setter = unet.set_model_attn1_replace if target == ATTN1 else unet.set_model_attn2_replace
        for layer in info.layers:
            fn = plan.build(target, layer, _inner(info, foreign_replace(unet.model_options, target, layer)))
            if fn is None:
                continue
            held = _replace_table(unet.model_options, target).get(tuple(layer))
            setter(mark(_replace(fn, layer, sigma_of), held), layer.block, layer.number, layer.index)
            installed.append(layer)
        if any(plan.pre_stages_for(target, layer) for layer in info.layers):
            patch_setter = unet.set_model_attn1_patch if target == ATTN1 else unet.set_model_attn2_patch
            patch_setter(mark(_pre_projection_patch(plan, target, sigma_of)))
    return installed


# ---- block patches ------------------------------------------------------------------------------------

def foreign_block_patches(unet) -> list[str]:
    """Names of block patches another extension (e.g. Deep Shrink) installed on this UNet."""
    patches = unet.model_options.get("transformer_options", {}).get("patches", {})
    return [name for name in BLOCK_PATCHES for f in patches.get(name, []) if not is_ours(f)]


def upsample_hook_available() -> bool:
    """Whether this WebUI runs a hook just before an Upsample layer (Forge main's block inner modifiers;
    reForge's UNet calls the Upsample directly, so nothing can resize before it there)."""
    return flavour() == FORGE


def _upsample_modifier(fn):
    def modifier(x, when, layer, layer_index, block, transformer_options):
        if when == "before" and type(layer).__name__ == "Upsample":
            return fn(x, transformer_options)
        return x
    return modifier


def _put_block_patches(unet, patches) -> None:
    if patches.upsample_before and not upsample_hook_available():
        raise ValueError("this WebUI has no hook before the Upsample layer: leave upsample_before empty")
    for name, setter in BLOCK_PATCHES.items():
        for fn in getattr(patches, name):
            getattr(unet, setter)(mark(fn))
    for fn in patches.upsample_before:
        unet.add_block_inner_modifier(mark(_upsample_modifier(fn)))


# ---- the sampler's start (on p, not on the UNet) ------------------------------------------------------

def _put_start(p, plan: PassPlan, earlier: PassPlan, noise) -> list[str]:
    """The plan's start on p: a scheduler override and the starting noise, chained to another extension's."""
    start = plan.start
    if start is not None and start is earlier.start and earlier.started is not None:
        plan.started = earlier.started          # already on p (another accordion installed since)
        return []
    override = getattr(p, "sampler_noise_scheduler_override", None)
    if is_ours(override):
        p.sampler_noise_scheduler_override = before_ours(override)
    if earlier.started is not None and getattr(p, "modified_noise", None) is earlier.started[1]:
        p.modified_noise = earlier.started[0]
    if start is None:
        return []
    foreign_noise = getattr(p, "modified_noise", None)      # another extension's: we start from it
    previous = p.sampler_noise_scheduler_override
    try:
        made, override, line = start(noise if foreign_noise is None else foreign_noise, previous)
    except ValueError as e:
        return [f"the initial latent failed ({e}); sampling starts from noise"]
    p.sampler_noise_scheduler_override = mark(override, previous)
    p.modified_noise = made
    plan.started = (foreign_noise, made)
    log.info("%s%s", line, " (from another extension's starting noise)" if foreign_noise is not None else "")
    return []


# ---- infotext ----------------------------------------------------------------------------------------

def write_precedence(p) -> None:
    """The pass's precedence decisions in the infotext (the hires pass's under its own key); at a first pass
    the hires key an earlier generation left goes (X/Y/Z cells share one extra_generation_params)."""
    params = p.extra_generation_params
    hires = _this_pass(p)
    if not hires:
        params.pop(PLAN_LINE + HIRES, None)
    key = PLAN_LINE + (HIRES if hires else "")
    plan = installed_plan(p.sd_model.forge_objects.unet)
    lines = plan.attention.report(list(plan.info.layers)) if plan and plan.hires == hires and plan.attention else []
    precedence = [line for line in lines if line.startswith("precedence")]
    if precedence:
        params[key] = "; ".join(precedence)
    else:
        params.pop(key, None)
