# Mirrors reForge ldm_patched/modules/samplers.py @ 3b56b268ad9158ee8b30900973b6ccda4ec22241.
# Per UNet call the transformer_options are model_options["transformer_options"] merged into a fresh dict
# (nested dicts copied, lists extended into new lists) plus cond_or_uncond, uuids and sigmas ONLY: no
# cond_mark / cond_indices / uncond_indices (row i of chunk j is j * rows + i). The memory test is
# memory_required(shape) * 1.5 < free memory. sampling_function: CFG-1 optimisation, conds = [cond, uncond],
# sampler_calc_cond_batch_function or batching, sampler_pre_cfg_function (args-dict form, after batching),
# cfg_function (sampler_cfg_function, edit strength, sampler_post_cfg_function).
# get_area_and_mult keeps only the first B rows of a cond's mask (mask[:input_x.shape[0]]) before repeating it.
# Not modelled: 'default' conds, hooks, area conds, gligen, opts.epsilon_scaling_enabled (off by default).
import math

from standin_core import memory
from standin_core.batching import calc_cond_batch as _calc_cond_batch, cfg1_skips_uncond


def merge_nested_dicts(dict1, dict2, copy_dict1=True):
    merged = copy_nested_dicts(dict1) if copy_dict1 else dict1
    for key, value in dict2.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(value, merged.setdefault(key, {}))
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


def copy_nested_dicts(d):
    return {k: copy_nested_dicts(v) if isinstance(v, dict) else (v.copy() if isinstance(v, list) else v)
            for k, v in d.items()}


def transformer_options_for(model_options, cond_or_uncond, timestep):
    to = {}
    if "transformer_options" in model_options:
        to = merge_nested_dicts(to, model_options["transformer_options"], copy_dict1=False)
    to["cond_or_uncond"] = cond_or_uncond[:]
    to["uuids"] = [0] * len(cond_or_uncond)
    to["sigmas"] = timestep
    return to


def fits(model, input_shape):
    return model.memory_required(input_shape) * 1.5 < memory.free_memory


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    return _calc_cond_batch(model, conds, x_in, timestep, model_options, fits=fits,
                            transformer_options_for=transformer_options_for, cut_mask_to_batch=True)


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    return tuple(calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options))


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options={}, cond=None, uncond=None):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred if uncond_pred is not None else None,
                "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model,
                "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif uncond_pred is None:
        cfg_result = cond_pred
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                "model_options": model_options, "input": x}
        cfg_result = fn(args)
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None):
    uncond_ = None if cfg1_skips_uncond(cond_scale, model_options) else uncond
    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        args = {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = model_options["sampler_calc_cond_batch_function"](args)
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
        x = args["input"]
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)
