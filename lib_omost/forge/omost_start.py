"""Start txt2img from the canvas colours: the WebUI side of ``lib_omost.features.omost_start``.

Two public WebUI hooks do it, nothing is patched: ``p.sampler_noise_scheduler_override`` hands the sampler the
tail of a longer schedule (only in the first pass; any other request, e.g. the hires pass, gets the WebUI's
normal schedule), and ``p.modified_noise`` replaces the starting noise. The pass installer
(``lib_omost.forge.pass_plan``) sets both, chained to what another extension set there.
"""

from __future__ import annotations

import math

import torch

from lib_omost.features.omost_start import (blurred_canvas_colours, keep_through_discard, schedule_length,
                                            schedule_tail, start_noise)


def canvas_latent(p, canvas) -> torch.Tensor:
    """The blurred canvas colours at the image size, encoded by the WebUI's own VAE path."""
    from modules import sd_samplers_common
    from modules.shared import opts
    image = blurred_canvas_colours(canvas, int(p.width), int(p.height))
    method = sd_samplers_common.approximation_indexes.get(opts.sd_vae_encode_method, 0)
    return sd_samplers_common.images_tensor_to_samples(image, method, p.sd_model)


def discards_penultimate(sampler) -> bool:
    """The WebUI's 'discard penultimate sigma' rule for this sampler (its config, or the global option)."""
    from modules.shared import opts
    config = getattr(sampler, "config", None)
    options = getattr(config, "options", None) or {}
    return bool(options.get("discard_next_to_last_sigma", False) or
                getattr(opts, "always_discard_next_to_last_sigma", False))


def webui_schedule(p, steps: int, override) -> torch.Tensor:
    """The sampler's own schedule for ``steps`` steps with ``override`` as p's scheduler override."""
    saved = p.sampler_noise_scheduler_override
    p.sampler_noise_scheduler_override = override
    try:
        return torch.as_tensor(p.sampler.get_sigmas(p, steps), dtype=torch.float32).cpu()
    finally:
        p.sampler_noise_scheduler_override = saved


def tail_override(p, tail: torch.Tensor, steps: int, previous, discard: bool):
    """A scheduler override answering the first pass's request with ``tail``, anything else as usual."""
    def override(requested: int):
        wanted = requested - 1 if discard else requested      # get_sigmas added one for the discard rule
        if wanted == steps and not getattr(p, "is_hr_pass", False):
            sigmas = tail
        else:
            sigmas = webui_schedule(p, wanted, previous)       # already discarded by that inner call
        return keep_through_discard(sigmas) if discard else sigmas
    return override


def start_from_canvas(p, latent: torch.Tensor, strength: float):
    """The start part of the first pass (``pass_plan.Parts.start``): (noise, previous scheduler override) ->
    (the canvas latent plus that noise at the mapped sigma, an override giving the schedule's tail, a log line)."""
    def start(noise: torch.Tensor, previous):
        from modules.shared import opts
        if latent.shape[1:] != noise.shape[1:]:
            raise ValueError(f"the canvas latent {list(latent.shape[1:])} does not match the noise "
                             f"{list(noise.shape[1:])}")
        steps = int(p.steps)
        total = schedule_length(steps, strength)
        tail = schedule_tail(webui_schedule(p, total, previous), steps)
        override = tail_override(p, tail, steps, previous, discards_penultimate(p.sampler))
        sigma = float(tail[0])
        scale = math.sqrt(1.0 + sigma ** 2) if getattr(opts, "sgm_noise_multiplier", False) else sigma
        made = start_noise(noise, latent.expand(noise.shape[0], -1, -1, -1), scale)
        return made, override, (f"Omost: sampling starts from the canvas colours at sigma {sigma:.4g} (the last "
                                f"{steps} steps of a {total}-step schedule)")
    return start
