# How a denoiser step batches cond / uncond chunks into UNet calls; identical logic in
#   Forge main  backend/sampling/sampling_function.py calc_cond_uncond_batch, backend/sampling/condition.py
#                                                                                 @ dfdcbab6
#   reForge     ldm_patched/modules/samplers.py _calc_cond_batch, ldm_patched/modules/conds.py,
#               modules_forge/forge_sampler.py cond_from_a1111_to_patched_ldm     @ 3b56b268
# Facts reproduced: every chunk (cond, each AND sub-prompt, uncond) goes into one list in the order
# conds then uncond; the chunks that can be concatenated with the first are taken in REVERSED order
# (so uncond comes first: cond_or_uncond == [1, 0]); cross-attention conds of different token
# lengths concatenate only when lcm/min <= 4, and are then repeated to the LCM length; when memory is
# short the group is halved, thirded, ... (the first len//i of the reversed list) until it fits.
# ``fits(model, input_shape)`` is the flavour's memory test; the toy memory model is one unit per row
# (see memory.py), so tests can force split calls by lowering the free memory.
# Masked conds (get_area_and_mult in both forks): chunk["mask"] [M, H_lat, W_lat] must match x's spatial
# size (an AssertionError otherwise, as the real assert), times chunk.get("mask_strength", 1), unsqueezed to
# [M, 1, H, W] and repeated to [B // M * M, C, H, W]; reForge first keeps only the first B mask rows
# (``cut_mask_to_batch``), Forge main does not. mult = mask * strength; full-canvas chunks: ones * strength.
# Per chunk: out += pred * mult, count += mult (count starts at 1e-37), result out / count. ``area`` conds
# are not modelled (NotImplementedError).
import collections
import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        reps = [math.ceil(batch_size / tensor.shape[0])] + [1] * (tensor.ndim - 1)
        return tensor.repeat(reps)[:batch_size]
    return tensor


class Condition:
    """Forge ``Condition`` / reForge ``CONDRegular``: concatenates only with equal shapes."""

    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [x.cond for x in others])

    def size(self):
        return list(self.cond.size())


class ConditionCrossAttn(Condition):
    """Forge ``ConditionCrossAttn`` / reForge ``CONDCrossAttn``: the LCM rule for token lengths."""

    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if math.lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return True

    def concat(self, others):
        conds = [self.cond] + [x.cond for x in others]
        length = conds[0].shape[1]
        for c in conds[1:]:
            length = math.lcm(length, c.shape[1])
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


def compile_conditions(cond):
    """A1111 cond (tensor, or dict with crossattn/vector) -> one chunk description."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    result = dict(cross_attn=cond["crossattn"], pooled_output=cond["vector"],
                  model_conds=dict(c_crossattn=ConditionCrossAttn(cond["crossattn"]), y=Condition(cond["vector"])))
    return [result]


def compile_weighted_conditions(cond, weights):
    """One chunk per AND position: rows = the images of the batch, strength = that sub-prompt's weight."""
    chunks = []
    for position in map(list, zip(*weights)):
        indices = [i for i, _ in position]
        weight = position[-1][1] if position else 0
        feed = cond.advanced_indexing(indices) if hasattr(cond, "advanced_indexing") else cond[indices]
        chunk = compile_conditions(feed)
        chunk[0]["strength"] = weight
        chunks += chunk
    return chunks


ChunkRun = collections.namedtuple("ChunkRun", ["input_x", "mult", "conditioning", "area", "control", "patches"])


def mask_mult(chunk, x_in, cut_mask_to_batch=False):
    """The mask part of mult: chunk["mask"] * mask_strength, as [rows, C, H, W]."""
    mask = chunk["mask"]
    if tuple(mask.shape[1:]) != tuple(x_in.shape[2:]):
        raise AssertionError(f"cond mask of shape {list(mask.shape)} does not match the latent's spatial size "
                             f"{list(x_in.shape[2:])}; a mask must be [M, H_lat, W_lat]")
    if cut_mask_to_batch:
        mask = mask[:x_in.shape[0]]
    mask = mask * chunk.get("mask_strength", 1.0)
    return mask.unsqueeze(1).repeat(x_in.shape[0] // mask.shape[0], x_in.shape[1], 1, 1)


def area_and_mult(chunk, x_in, timestep, cut_mask_to_batch=False):
    """Full-canvas or masked chunks (no area conds): mult = mask * strength (mask = ones without one)."""
    if "timestep_start" in chunk and timestep[0] > chunk["timestep_start"]:
        return None
    if "timestep_end" in chunk and timestep[0] < chunk["timestep_end"]:
        return None
    if "area" in chunk:
        raise NotImplementedError(f"the stand-in has no area conds (chunk 'area' = {chunk['area']!r}); "
                                  "use a full-canvas or a 'mask' cond")
    mask = mask_mult(chunk, x_in, cut_mask_to_batch) if "mask" in chunk else torch.ones_like(x_in)
    mult = mask * chunk.get("strength", 1.0)
    conditioning = {k: c.process_cond(batch_size=x_in.shape[0], device=x_in.device)
                    for k, c in chunk["model_conds"].items()}
    return ChunkRun(x_in, mult, conditioning, None, chunk.get("control"), None)


def _can_concat(a, b):
    if a.input_x.shape != b.input_x.shape or (a.control is None) != (b.control is None):
        return False
    if a.control is not None and a.control is not b.control:
        return False
    if a.conditioning.keys() != b.conditioning.keys():
        return False
    return all(a.conditioning[k].can_concat(b.conditioning[k]) for k in a.conditioning)


def _cat_conditioning(items):
    gathered = {}
    for item in items:
        for k, c in item.items():
            gathered.setdefault(k, []).append(c)
    return {k: cs[0].concat(cs[1:]) for k, cs in gathered.items()}


def calc_cond_batch(model, conds, x_in, timestep, model_options, *, fits, transformer_options_for,
                    cut_mask_to_batch=False):
    """Denoised prediction per entry of ``conds`` (index 0 = cond, 1 = uncond); None entries are skipped.

    ``transformer_options_for(model_options, cond_or_uncond, timestep)`` builds the per-call
    transformer_options the flavour passes to the UNet; ``cut_mask_to_batch`` is reForge's mask[:B].
    """
    outs = [torch.zeros_like(x_in) for _ in conds]
    counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = []
    for index, chunks in enumerate(conds):
        for chunk in chunks or ():
            run = area_and_mult(chunk, x_in, timestep, cut_mask_to_batch)
            if run is not None:
                to_run.append((run, index))

    while to_run:
        first = to_run[0][0]
        group = [j for j in range(len(to_run)) if _can_concat(to_run[j][0], first)]
        group.reverse()
        chosen = group[:1]
        for divisor in range(1, len(group) + 1):
            candidate = group[:len(group) // divisor]
            shape = [len(candidate) * first.input_x.shape[0]] + list(first.input_x.shape[1:])
            if fits(model, shape):
                chosen = candidate
                break
        picked = [to_run.pop(j) for j in chosen]
        cond_or_uncond = [index for _, index in picked]
        input_x = torch.cat([run.input_x for run, _ in picked])
        c = _cat_conditioning([run.conditioning for run, _ in picked])
        timestep_ = torch.cat([timestep] * len(picked))
        c["transformer_options"] = transformer_options_for(model_options, cond_or_uncond, timestep)
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](
                model.apply_model, {"input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        for (run, index), out in zip(picked, output.chunk(len(picked))):
            outs[index] += out * run.mult
            counts[index] += run.mult
    return [out / count for out, count in zip(outs, counts)]


def apply_eps_model(sampling, diffusion_model, x, t, c_concat=None, c_crossattn=None, control=None,
                    transformer_options={}, **kwargs):
    """Forge KModel.apply_model / reForge BaseModel._apply_model: scale input, sigma -> timestep, denoise."""
    sigma = t
    xc = sampling.calculate_input(sigma, x)
    if c_concat is not None:
        xc = torch.cat([xc, c_concat], dim=1)
    timesteps = sampling.timestep(t).float()
    output = diffusion_model(xc, timesteps, context=c_crossattn, control=control,
                             transformer_options=transformer_options, **kwargs).float()
    return sampling.calculate_denoised(sigma, output, x)


def cfg1_skips_uncond(cond_scale, model_options):
    """Both forks drop the uncond chunk when CFG == 1 unless a patch disabled that optimisation."""
    return math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
