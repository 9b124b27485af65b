"""What the extension needs to know about the running WebUI and its loaded model.

Forge main / Neo expose the UNet through ``backend.*``; reForge / Forge Classic through ``ldm_patched.*``.
Everything that differs between them is answered here, so that the rest of the extension never branches
on the flavour.
"""

from __future__ import annotations

import inspect

import importlib
from functools import lru_cache
from typing import Callable

from lib_omost.attention.plan import LayerKey
from lib_omost.model_info import ModelInfo

FORGE = "forge"        # Forge main and Neo: backend.*
REFORGE = "reforge"    # reForge and Forge Classic: ldm_patched.*

class UnsupportedModel(ValueError):
    """The loaded model is not a UNet these patches can serve."""


@lru_cache(maxsize=None)
def flavour() -> str:
    """Which backend this WebUI runs. Cached: a WebUI never changes its backend while running."""
    for name, module in ((FORGE, "backend.patcher.unet"), (REFORGE, "ldm_patched.modules.model_patcher")):
        try:
            importlib.import_module(module)
            return name
        except ImportError:
            continue
    raise RuntimeError("neither Forge's backend nor reForge's ldm_patched can be imported: "
                       "this extension needs Stable Diffusion WebUI Forge or reForge")


def model_family(sd_model) -> str:
    """"sd15", "sd2" or "sdxl"; anything else raises UnsupportedModel with a message for the user."""
    if getattr(sd_model, "is_sdxl", False):
        return "sdxl"
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    if getattr(sd_model, "is_sd1", False):
        return "sd15"
    name = type(sd_model).__name__
    raise UnsupportedModel(f"the loaded model ({name}) is not SD1.5, SD2 or SDXL; these attention and UNet "
                           "patches only work on those UNet models (Flux, SD3 and other transformer models "
                           "are not supported)")


def attention_function() -> Callable:
    """The WebUI's own attention as f(q, k, v, heads, options) on [B, N, heads*dim] tensors.

    Called exactly as the WebUI's CrossAttention calls it, so a layer where no stage acts computes what
    the unpatched WebUI computes (reForge passes the block's attn_precision along; Forge Classic has none).
    """
    if flavour() == FORGE:
        from backend.attention import attention_function as forge_attention
        return lambda q, k, v, heads, options: forge_attention(q, k, v, heads)
    from ldm_patched.ldm.modules import attention as reforge
    if "attn_precision" not in inspect.signature(reforge.optimized_attention).parameters:
        # Forge Classic (early 2025): its attention takes no precision, and its CrossAttention passes none
        return lambda q, k, v, heads, options: reforge.optimized_attention(q, k, v, heads)
    return lambda q, k, v, heads, options: reforge.optimized_attention(
        q, k, v, heads, attn_precision=options.get("attn_precision"))


def _diffusion_model(unet):
    return unet.model.diffusion_model


def model_channels(unet) -> int:
    if flavour() == FORGE:
        return int(_diffusion_model(unet).config["model_channels"])
    return int(unet.model.model_config.unet_config["model_channels"])


def model_sampling(unet):
    """The object with percent_to_sigma(p), timestep(sigma) and sigma(timestep)."""
    if flavour() == FORGE:
        return unet.model.predictor
    getter = getattr(unet, "get_model_object", None)
    if getter is not None:
        return getter("model_sampling")
    # Forge Classic (early 2025) has reForge's backend without get_model_object: an object patch, else the model's
    return getattr(unet, "object_patches", {}).get("model_sampling", unet.model.model_sampling)


def _transformer_blocks(unet):
    """(LayerKey, its SpatialTransformer, the BasicTransformerBlock) of every transformer block, in forward order."""
    dm = _diffusion_model(unet)
    groups = [("input", list(dm.input_blocks)), ("middle", [dm.middle_block]), ("output", list(dm.output_blocks))]
    for block, modules in groups:
        for number, module in enumerate(modules):
            for layer in module:
                for index, transformer in enumerate(getattr(layer, "transformer_blocks", ())):
                    yield LayerKey(block, number, index), layer, transformer


def attention_layers(unet) -> dict[LayerKey, int]:
    """Every transformer block of the UNet with its channel count, in forward order."""
    return {key: int(spatial.in_channels) for key, spatial, _ in _transformer_blocks(unet)}


def attn1_projections(unet) -> dict:
    """{LayerKey: n -> (to_k(n), to_v(n))} through each block's own attn1 modules (the model's weights as
    patched for this generation, e.g. with LoRAs, and the WebUI's own casting of them)."""
    def projection(attn):
        return lambda n: (attn.to_k(n), attn.to_v(n))
    return {key: projection(block.attn1) for key, _, block in _transformer_blocks(unet)}


def model_info(sd_model, unet) -> ModelInfo:
    sampling = model_sampling(unet)
    return ModelInfo(
        family=model_family(sd_model),
        model_channels=model_channels(unet),
        layers=attention_layers(unet),
        percent_to_sigma=lambda p: float(sampling.percent_to_sigma(p)),
        sigma_to_timestep=sampling.timestep,
        attention=attention_function(),
    )


def _img2img_steps(p, steps):
    try:
        from modules.sd_samplers_common import setup_img2img_steps
    except ImportError:            # the test stand-in keeps it in modules.sd_samplers
        from modules.sd_samplers import setup_img2img_steps
    return setup_img2img_steps(p, steps)


def schedule_sigmas(p) -> list[float] | None:
    """The sigma schedule this sampling pass's sampler builds (the WebUI's own rules), or None.

    txt2img: ``get_sigmas(p, steps)``. img2img and the hires pass: the sampler enlarges the schedule per
    ``setup_img2img_steps`` and runs its tail, so steps are indexed in that enlarged schedule.
    """
    get = getattr(getattr(p, "sampler", None), "get_sigmas", None)
    if get is None:
        return None
    steps = int(p.steps)
    try:
        if getattr(p, "is_hr_pass", False):
            steps, _ = _img2img_steps(p, int(getattr(p, "hr_second_pass_steps", 0) or steps))
        elif hasattr(p, "init_images"):
            steps, _ = _img2img_steps(p, None)
        return [float(s) for s in get(p, steps)]
    except Exception as e:    # a sampler without a k-diffusion schedule: callers fall back to counting
        import logging
        logging.getLogger("sd-forge-omost").info("no sigma schedule from the sampler (%s)", e)
        return None
