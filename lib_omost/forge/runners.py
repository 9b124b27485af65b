"""``process_before_every_sampling`` of each accordion: values -> stages/patches -> installed, infotext written.

Each runner is idempotent within a pass (running again replaces what it installed) and installs nothing
when its accordion is off.
"""

from __future__ import annotations

import logging

from lib_omost.features import hidiffusion, slothful
from lib_omost.forge.generation import (
    did_not_run,
    loaded_model_info,
    read_values,
    report_problem,
    write_infotext,
)
from lib_omost.forge.pass_plan import Parts, install, upsample_hook_available, write_precedence
from lib_omost.forge.webui import schedule_sigmas
from lib_omost.unet.raunet import step_sigma_window

log = logging.getLogger("sd-forge-omost")


def image_seed(p) -> int:
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None)
    return int(seeds[0]) if seeds else int(getattr(p, "seed", 0) or 0)


def _begin(p, feature, args):
    """(values, model info) of an enabled accordion on a model it can serve, else None (reported)."""
    values = read_values(p, feature, args)
    info = None if values is None else loaded_model_info(p, feature)
    if info is None:
        install(p, feature.key, None)
        write_precedence(p)
        return None
    return values, info


def run_slothful(p, args, **_sampling) -> None:
    feature = slothful.FEATURE
    begun = _begin(p, feature, args)
    if begun is None:
        return
    values, info = begun
    install(p, feature.key, Parts(stages=tuple(slothful.stages(values, info, image_seed(p)))), info)
    write_infotext(p, feature, values)
    write_precedence(p)


def pass_size(p) -> tuple[int, int]:
    """(width, height) of the image this sampling pass makes: the hires pass runs at the upscaled size."""
    if getattr(p, "is_hr_pass", False):
        return int(p.hr_upscale_to_x), int(p.hr_upscale_to_y)
    return int(p.width), int(p.height)


def run_hidiffusion(p, args, **_sampling) -> None:
    feature = hidiffusion.FEATURE
    begun = _begin(p, feature, args)
    if begun is None:
        return
    values, info = begun
    hires = getattr(p, "is_hr_pass", False)
    applied_key = f"{feature.title} applied" + (" (hires pass)" if hires else "")
    if hires and not values["hires_pass"]:
        write_infotext(p, feature, values, {applied_key: "nothing (Apply in hires pass is off)"})
        install(p, feature.key, None)
        write_precedence(p)
        return
    try:
        settings = hidiffusion.resolve(values, info.unet_family, *pass_size(p))
    except ValueError as e:
        did_not_run(p, feature, str(e))
        install(p, feature.key, None)
        write_precedence(p)
        return
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
    for note in install(p, feature.key, parts, info):
        report_problem(p, feature, note)
    write_infotext(p, feature, values, {applied_key: settings.describe()})
    write_precedence(p)
    log.info("HiDiffusion %s: %s", " ".join(settings.notes), settings.describe())
