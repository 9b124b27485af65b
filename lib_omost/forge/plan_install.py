"""The attention part of the pass installer: an AttentionPlan as one replace per key, foreign replaces inside.

Forge and reForge look a replace up by (block, number, depth index) first, then by (block, number). We
install ours under the three-part key of every layer a stage applies to; a replace another extension put
under either key becomes our innermost attention function, so both run. Called by
``lib_omost.forge.pass_plan.install`` (the one installer), which owns the clone.
"""

from __future__ import annotations

from typing import Callable

import torch

from lib_omost.attention.core import layer_hw
from lib_omost.attention.plan import ATTN1, ATTN2, AttentionPlan, AttnCall, HostSigma, LayerKey
from lib_omost.forge.markers import before_ours, mark, unmark_list, unmark_slot
from lib_omost.model_info import ModelInfo

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
