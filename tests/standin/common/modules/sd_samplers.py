# Mirrors modules/sd_samplers.py + sd_samplers_kdiffusion.py + sd_samplers_common.setup_img2img_steps
# (Forge main @ dfdcbab6, reForge @ 3b56b268) for one sampler, "Euler" with the "Automatic" schedule
# (uniform in t over the model's own sigmas, then 0). sample(): x = noise * sigma_max (noise_scaling),
# Euler steps; sample_img2img(): steps, t_enc from denoising strength, start at sigmas[steps - t_enc - 1],
# xi = x + noise * sigma. sampling_prepare calls the memory estimate (memory_peak_estimation_modifier if
# a patch set one) with [2B, C, H, W] as the real one does.
import torch

import standin_flavour
from modules import sd_samplers_cfg_denoiser
from modules.shared import opts, state


class SamplerData:
    def __init__(self, name, aliases=(), options=None):
        self.name, self.aliases, self.options = name, list(aliases), options or {}

    def total_steps(self, steps):
        return steps


samplers = [SamplerData("Euler", ["k_euler"], {"scheduler": "automatic"})]
samplers_for_img2img = samplers
all_samplers_map = {x.name: x for x in samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name) if name is not None else samplers[0]


def get_sampler_and_scheduler(sampler_name, scheduler_name):
    return (sampler_name or "Euler"), (scheduler_name or "Automatic")


def fix_p_invalid_sampler_and_scheduler(p):
    if p.sampler_name not in all_samplers_map:
        p.sampler_name = "Euler"
    if p.scheduler in (None, ""):
        p.scheduler = "Automatic"


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def sampling_prepare(unet, x):
    b, c, h, w = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    return estimate([b * 2, c, h, w])


class KDiffusionSampler:
    def __init__(self, name, sd_model):
        self.config = find_sampler_config(name)
        self.sd_model = sd_model
        self.model_wrap_cfg = None
        self.last_latent = None

    def get_sigmas(self, p, steps):
        return standin_flavour.schedule_of(self.sd_model.forge_objects.unet).automatic_sigmas(steps)

    def _euler(self, denoiser, x, sigmas, extra_args):
        state.sampling_steps = len(sigmas) - 1
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            state.sampling_step = i
            denoised = denoiser(x, sigmas[i] * s_in, **extra_args)
            d = (x - denoised) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
            self.last_latent = x
        return x

    def _denoiser(self, p, steps):
        denoiser = sd_samplers_cfg_denoiser.CFGDenoiser(self, p, self.sd_model)
        denoiser.total_steps = steps
        self.model_wrap_cfg = denoiser
        return denoiser

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        return {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                "cond_scale": p.cfg_scale, "s_min_uncond": 0.0}

    @torch.no_grad()
    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet = self.sd_model.forge_objects.unet
        sampling_prepare(unet, x)
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = standin_flavour.schedule_of(unet).noise_scaling(sigmas[0], x, torch.zeros_like(x))
        extra = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self._euler(self._denoiser(p, steps), x, sigmas, extra)

    @torch.no_grad()
    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet = self.sd_model.forge_objects.unet
        sampling_prepare(unet, x)
        steps, t_enc = setup_img2img_steps(p, steps)
        sigma_sched = self.get_sigmas(p, steps)[steps - t_enc - 1:]
        xi = standin_flavour.schedule_of(unet).noise_scaling(sigma_sched[0], noise, x.to(noise))
        extra = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self._euler(self._denoiser(p, t_enc + 1), xi, sigma_sched, extra)


def create_sampler(name, model):
    if name not in all_samplers_map:
        raise ValueError(f"the stand-in has only these samplers: {sorted(all_samplers_map)}; got {name!r}")
    return KDiffusionSampler(name, model)
