"""What Slothful / Near-sighted attention and HiDiffusion contribute to a sampling pass (run by
``lib_omost.forge.accordions.run``).
"""

from __future__ import annotations

from lib_omost.features import hidiffusion, slothful
from lib_omost.forge.accordions import Accordion, Contribution, DidNotRun
from lib_omost.forge.generation import report_problem
from lib_omost.forge.pass_plan import Parts, upsample_hook_available
from lib_omost.forge.webui import schedule_sigmas
from lib_omost.unet.raunet import step_sigma_window


def image_seed(p) -> int:
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None)
    return int(seeds[0]) if seeds else int(getattr(p, "seed", 0) or 0)


def contribute_slothful(p, values, info, _sampling) -> Contribution:
    return Contribution(Parts(stages=tuple(slothful.stages(values, info, image_seed(p)))), values)


SLOTHFUL = Accordion(slothful.FEATURE, contribute_slothful)


def pass_size(p) -> tuple[int, int]:
    """(width, height) of the image this sampling pass makes: the hires pass runs at the upscaled size."""
    if getattr(p, "is_hr_pass", False):
        return int(p.hr_upscale_to_x), int(p.hr_upscale_to_y)
    return int(p.width), int(p.height)


def contribute_hidiffusion(p, values, info, _sampling) -> Contribution:
    feature = hidiffusion.FEATURE
    hires = getattr(p, "is_hr_pass", False)
    applied_key = f"{feature.title} applied" + (" (hires pass)" if hires else "")
    if hires and not values["hires_pass"]:
        return Contribution(infotext=values, extra={applied_key: "nothing (Apply in hires pass is off)"})
    try:
        settings = hidiffusion.resolve(values, info.unet_family, *pass_size(p))
    except ValueError as e:
        raise DidNotRun(str(e)) from None
    if getattr(p.sd_model.forge_objects.unet, "controlnet_linked_list", None) is not None and (settings.raunet or settings.ca):
        report_problem(p, feature, "ControlNet is active: its residuals have the normal UNet sizes, so RAU-Net "
                                   "and CA are skipped for this generation (MSW-MSA still runs)")
        settings.raunet = settings.ca = None
        settings.off_reason = "RAU-Net and CA skipped because ControlNet is active"
    if settings.raunet and settings.upscale_mode != "nearest" and not upsample_hook_available():
        report_problem(p, feature, f"reForge has no hook before the Upsample: the paired Upsample resizes with "
                                   f"nearest, not {settings.upscale_mode}")
        settings.upscale_mode = "nearest"
    to_sigma = None
    if values["time_mode"] == hidiffusion.STEP_FRACTION:
        sigmas = schedule_sigmas(p)
        if sigmas is None:
            report_problem(p, feature, "the sampler gives no step schedule: time windows are taken as percent")
        else:
            to_sigma = lambda window: step_sigma_window(window, sigmas)      # noqa: E731
    parts = Parts(block_patches=hidiffusion.block_patches(settings, info, to_sigma),
                  stages=tuple(hidiffusion.stages(settings, info, image_seed(p), to_sigma)))
    return Contribution(parts, values, {applied_key: settings.describe()},
                        f"HiDiffusion {' '.join(settings.notes)}: {settings.describe()}")


HIDIFFUSION = Accordion(hidiffusion.FEATURE, contribute_hidiffusion)
