# Mirrors modules/sd_samplers_cfg_denoiser.py CFGDenoiser.forward (Forge main @ dfdcbab6, reForge @ 3b56b268):
# rebuild this step's cond (with the AND composition) and uncond from the schedules, fire on_cfg_denoiser
# with CFGDenoiserParams(x, image_cond, sigma, sampling_step, sampling_steps, cond, uncond, denoiser), use
# p.hr_cfg as the scale in the hires pass, drop the uncond (scale 1) for "skip early CFG" steps, then hand
# the (possibly callback-modified) params to the flavour's backend (standin_flavour.denoise), and fire
# on_cfg_after_cfg. The backend reads the UNet from inner_model.inner_model.forge_objects.unet at call time.
import types

import standin_flavour
from modules import prompt_parser
from modules.script_callbacks import (AfterCFGCallbackParams, CFGDenoiserParams, cfg_after_cfg_callback,
                                      cfg_denoiser_callback)
from modules.shared import opts, state


class CFGDenoiser:
    def __init__(self, sampler, p, sd_model):
        self.sampler, self.p = sampler, p
        self.inner_model = types.SimpleNamespace(inner_model=sd_model)
        self.step = 0
        self.total_steps = None

    def __call__(self, x, sigma, uncond, cond, cond_scale, s_min_uncond=0.0, image_cond=None):
        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None
        params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
        cfg_denoiser_callback(params)
        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        denoised = standin_flavour.denoise(self, params, cond_scale, cond_composition)
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        self.step += 1
        return after.x
