# Mirrors modules/sd_samplers.py + sd_samplers_kdiffusion.py (Forge main @ dfdcbab6, reForge @ 3b56b268) for one
# sampler, "Euler" (options {} as the real entry), and the schedulers of sd_schedulers ("Automatic": uniform
# in t over the model's own sigmas, then 0; "Karras").
# get_sigmas (both forks, sd_samplers_kdiffusion.py KDiffusionSampler.get_sigmas): discard_next_to_last_sigma
# from the sampler's config options, or opts.always_discard_next_to_last_sigma (which also writes
# p.extra_generation_params["Discard penultimate sigma"] = True): steps + 1, and the penultimate sigma dropped
# at the end; the scheduler is p.hr_scheduler in the hires pass, else p.scheduler ("Automatic" = the config's
# scheduler option); p.sampler_noise_scheduler_override(steps), when set, replaces the schedule (the discard
# still applies after it); Karras uses the model's sigma_min / sigma_max ((0.1, 10) with
# opts.use_old_karras_scheduler_sigmas; opts.sigma_min / sigma_max / rho override when non-zero) and writes
# "Schedule type" (first pass) or "Hires schedule type" (hires pass, when it differs from the first pass's).
# sample(): opts.sgm_noise_multiplier writes p.extra_generation_params["SGM noise multiplier"] = True and
# starts from noise * sqrt(1 + sigma0^2) instead of noise * sigma0 (the flavour's start_noise: Forge main
# predictor.noise_scaling(max_denoise=...), reForge x * ...). sample_img2img() ignores the option in both
# forks: steps, t_enc from denoising strength (sd_samplers_common.setup_img2img_steps), start at
# sigmas[steps - t_enc - 1], xi = x + noise * sigma. Then Euler steps. sampling_prepare calls the memory
# estimate (memory_peak_estimation_modifier if a patch set one) with [2B, C, H, W] as the real one does.
import torch

import standin_flavour
from modules import sd_samplers_cfg_denoiser, sd_schedulers
from modules.sd_samplers_common import setup_img2img_steps  # noqa: F401 (callers import it from here too)
from modules.shared import opts, state


class SamplerData:
    def __init__(self, name, aliases=(), options=None):
        self.name, self.aliases, self.options = name, list(aliases), options or {}

    def total_steps(self, steps):
        return steps


samplers = [SamplerData("Euler", ["k_euler"], {})]
samplers_for_img2img = samplers
all_samplers_map = {x.name: x for x in samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name) if name is not None else samplers[0]


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    """sd_samplers.get_sampler_and_scheduler: "<sampler> <scheduler>" names split, unknown names -> defaults."""
    default_sampler = samplers[0]
    found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or default_sampler.name
    for scheduler in sd_schedulers.schedulers:
        for name_option in [scheduler.label, scheduler.name, *(scheduler.aliases or [])]:
            if name.endswith(" " + name_option):
                found_scheduler = scheduler
                name = name[:-(len(name_option) + 1)]
                break
    sampler = all_samplers_map.get(name, default_sampler)
    if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
        found_scheduler = sd_schedulers.schedulers[0]
    return sampler.name, found_scheduler.label


def fix_p_invalid_sampler_and_scheduler(p):
    p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)


def sampling_prepare(unet, x):
    standin_flavour.load_unet(unet)
    b, c, h, w = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    return estimate([b * 2, c, h, w])


def scheduler_kwargs(p, scheduler, schedule):
    """sigma_min / sigma_max (/ rho) for a scheduler function, with the infotext lines the real code writes."""
    m_sigma_min, m_sigma_max = schedule.sigmas[0].item(), schedule.sigmas[-1].item()
    sigma_min, sigma_max = (0.1, 10) if opts.use_old_karras_scheduler_sigmas else (m_sigma_min, m_sigma_max)
    kwargs = {"sigma_min": sigma_min, "sigma_max": sigma_max}
    if scheduler.label != "Automatic" and not p.is_hr_pass:
        p.extra_generation_params["Schedule type"] = scheduler.label
    elif scheduler.label != p.extra_generation_params.get("Schedule type"):
        p.extra_generation_params["Hires schedule type"] = scheduler.label
    if opts.sigma_min != 0 and opts.sigma_min != m_sigma_min:
        kwargs["sigma_min"] = opts.sigma_min
        p.extra_generation_params["Schedule min sigma"] = opts.sigma_min
    if opts.sigma_max != 0 and opts.sigma_max != m_sigma_max:
        kwargs["sigma_max"] = opts.sigma_max
        p.extra_generation_params["Schedule max sigma"] = opts.sigma_max
    if scheduler.default_rho != -1 and opts.rho != 0 and opts.rho != scheduler.default_rho:
        kwargs["rho"] = opts.rho
        p.extra_generation_params["Schedule rho"] = opts.rho
    return kwargs


class KDiffusionSampler:
    def __init__(self, name, sd_model):
        self.config = find_sampler_config(name)
        self.sd_model = sd_model
        self.model_wrap_cfg = None
        self.last_latent = None

    def get_sigmas(self, p, steps):
        discard_next_to_last_sigma = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard_next_to_last_sigma:
            discard_next_to_last_sigma = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard_next_to_last_sigma else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        schedule = standin_flavour.schedule_of(self.sd_model.forge_objects.unet)

        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler is None or scheduler.function is None:
            sigmas = schedule.automatic_sigmas(steps)
        else:
            sigmas = scheduler.function(n=steps, **scheduler_kwargs(p, scheduler, schedule), device="cpu")

        if discard_next_to_last_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

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
        if opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
        x = standin_flavour.start_noise(unet, sigmas[0], x, opts.sgm_noise_multiplier)
        extra = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self._euler(self._denoiser(p, steps), x, sigmas, extra)

    @torch.no_grad()
    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet = self.sd_model.forge_objects.unet
        sampling_prepare(unet, x)
        steps, t_enc = setup_img2img_steps(p, steps)
        sigma_sched = self.get_sigmas(p, steps)[steps - t_enc - 1:]
        xi = standin_flavour.img2img_start(unet, sigma_sched[0], noise, x.to(noise))
        extra = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        return self._euler(self._denoiser(p, t_enc + 1), xi, sigma_sched, extra)


def create_sampler(name, model):
    if name not in all_samplers_map:
        raise ValueError(f"the stand-in has only these samplers: {sorted(all_samplers_map)}; got {name!r}")
    return KDiffusionSampler(name, model)
