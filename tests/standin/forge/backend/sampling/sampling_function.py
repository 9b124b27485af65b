# Mirrors Forge main backend/sampling/sampling_function.py @ dfdcbab685e57677014f05a3309b48cc87383167.
# Per UNet call the transformer_options are a SHALLOW copy of model_options["transformer_options"] plus
# cond_or_uncond (one entry per chunk, 0 cond / 1 uncond), sigmas (the x batch's sigmas: one per image,
# NOT repeated per chunk), cond_mark (0/1 per row) and cond_indices / uncond_indices (row lists).
# Order in sampling_function: conditioning_modifiers, then CFG-1 optimisation (uncond dropped),
# sampler_pre_cfg_function (tuple form), batching, sampler_cfg_function or CFG with edit strength,
# sampler_post_cfg_function.
import math

import torch

from standin_core import memory
from standin_core.batching import calc_cond_batch, cfg1_skips_uncond
from backend.sampling.condition import compile_conditions, compile_weighted_conditions


def compute_cond_mark(cond_or_uncond, sigmas):
    rows = int(sigmas.shape[0])
    marks = []
    for chunk in cond_or_uncond:
        marks += [chunk] * rows
    return torch.Tensor(marks).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    rows = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for i, chunk in enumerate(cond_or_uncond):
        (cond_indices if chunk == 0 else uncond_indices).extend(range(i * rows, (i + 1) * rows))
    return cond_indices, uncond_indices


def transformer_options_for(model_options, cond_or_uncond, timestep):
    to = model_options["transformer_options"].copy() if "transformer_options" in model_options else {}
    to["cond_or_uncond"] = cond_or_uncond[:]
    to["sigmas"] = timestep
    to["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
    to["cond_indices"], to["uncond_indices"] = compute_cond_indices(cond_or_uncond, timestep)
    return to


def fits(model, input_shape):
    return model.memory_required(input_shape) < memory.free_memory


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond, out_uncond = calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options, fits=fits,
                                           transformer_options_for=transformer_options_for)
    return out_cond, out_uncond


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    uncond_ = None if cfg1_skips_uncond(cond_scale, model_options) else uncond
    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)
    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    """``self`` is the CFGDenoiser; the UNet patcher is read from the model's forge_objects at call time."""
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    x, timestep = denoiser_params.x, denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)
