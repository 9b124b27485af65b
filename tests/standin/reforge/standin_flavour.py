# The reForge side of every difference between the two flavours (forge/standin_flavour.py has the other),
# plus the model object reForge puts in shared.sd_model. Facts from
# Panchovix/stable-diffusion-webui-reForge @ 3b56b268ad9158ee8b30900973b6ccda4ec22241:
#   modules/processing.py sample_hr_pass: forge_objects is reset, then before_hr and ONE
#     process_before_every_sampling call (2 calls with hires fix).
#   modules/scripts.py: process_before_every_sampling runs self.ordered_scripts(...) (only scripts that
#     override it, in callback order).
#   modules/ui_components.py: InputAccordion is a gr.Checkbox subclass taking (value, **kwargs), ids de-duplicated.
#   modules/prompt_parser.py SdConditioning has no distilled_cfg_scale.
#   modules_forge/forge_loader.py: sd_model.forge_objects is a ForgeSD; unet is modules_forge UnetPatcher
#     around ldm_patched BaseModel (model_config.unet_config, model_sampling).
#   modules/sd_samplers_cfg_denoiser.py: converts conds (forge_sampler), applies conditioning_modifiers,
#     calls ldm_patched.modules.samplers.sampling_function(model, x, sigma, uncond, cond, cond_scale, ...).
#   modules_forge/forge_loader.py: sd_model.get_first_stage_encoding = identity; sd_model.encode_first_stage(x)
#     = unet.model.model_config.latent_format.process_in(forge_objects.vae.encode(x * 0.5 + 0.5)) (inference
#     mode), both set as instance attributes.
#   modules/sd_samplers_kdiffusion.py sample: x * sqrt(1 + sigmas[0] ** 2) with opts.sgm_noise_multiplier, else
#     x * sigmas[0]; sample_img2img: xi = x + noise * sigma_sched[0].
#   modules/sd_samplers_common.py approximation_indexes: Full 0, Approx NN 1, Approx cheap 2, TAESD 3, Approx PCA 4.
import torch

from ldm_patched.modules import samplers
from ldm_patched.modules.model_base import BaseModel, ModelConfig
from modules_forge import forge_sampler
from modules_forge.forge_loader import ForgeSD
from modules_forge.unet_patcher import UnetPatcher
from standin_core import models, vae
from ldm_patched.ldm.modules.diffusionmodules.openaimodel import UNetModel

NAME = "reforge"
GRADIO_MAJOR = 3             # the real reForge pins gradio 3.41.2; the stand-in still runs on gradio 4.40
HIRES_SEQUENCE = ("restore", "call")
BEFORE_EVERY_SAMPLING_SCRIPTS = "ordered_scripts"
INPUT_ACCORDION_IS_CLASS = True
SDCONDITIONING_HAS_DISTILLED_CFG = False
MEMORY_FACTOR = 1.5          # _calc_cond_batch: memory_required(shape) * 1.5 < free_memory
HIRES_READS_ADDITIONAL_MODULES = False   # reForge reloads hr_checkpoint_info only
APPROXIMATION_INDEXES = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3, "Approx PCA": 4}


class StandinSdModel(torch.nn.Module):
    """The A1111-style sd_model reForge keeps (LatentDiffusion / DiffusionEngine) with forge_objects attached."""

    def __init__(self, family, seed):
        super().__init__()
        if family not in models.FAMILIES:
            raise ValueError(f"reForge stand-in models: {models.FAMILIES}; got {family!r}")
        self.family = family
        latent_format = vae.LatentScaling(vae.latent_scale_factor(family))
        base = BaseModel(ModelConfig(models.unet_config(family), latent_format=latent_format),
                         unet_model=lambda **config: models.build_unet(UNetModel, family, seed))
        unet = UnetPatcher(base)
        self.engines = models.text_engines(family, seed)
        self.cond_stage_model = next(iter(self.engines.values())) if family != "sdxl" else None
        self.forge_objects = ForgeSD(unet=unet, clip=models.toy_clip(self.engines), vae=vae.ToyVAE(seed), clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.model = type("DiffusionWrapper", (), {})()
        self.model.diffusion_model = base.diffusion_model
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd15", family == "sd2", family == "sdxl"
        self.is_sd3 = False
        self.is_inpaint = False
        self.use_distilled_cfg_scale = False
        self.cond_stage_key = "crossattn"
        self.get_first_stage_encoding = lambda x: x
        self.encode_first_stage = lambda x: vae.encode_first_stage(
            self.forge_objects.vae, self.forge_objects.unet.model.model_config.latent_format, x)

    @torch.no_grad()
    def get_learned_conditioning(self, c):
        from modules.shared import opts
        return models.learned_conditioning(self.family, self.engines, c, opts.sdxl_crop_left, opts.sdxl_crop_top)


def build_sd_model(family, seed):
    if family == "flux":
        raise ValueError("reForge has no Flux engine; use the forge flavour for a non-UNet model")
    return StandinSdModel(family, seed)


def schedule_of(unet):
    """The object with sigmas / percent_to_sigma / timestep: unet.get_model_object("model_sampling")."""
    return unet.get_model_object("model_sampling")


def start_noise(unet, sigma, x, sgm_noise_multiplier):
    """KDiffusionSampler.sample's starting latent (reForge scales x itself, no noise_scaling call)."""
    return x * torch.sqrt(1.0 + sigma ** 2.0) if sgm_noise_multiplier else x * sigma


def img2img_start(unet, sigma, noise, latent):
    """KDiffusionSampler.sample_img2img's starting latent (the SGM option is not read there)."""
    return latent + noise * sigma


def denoise(denoiser, params, cond_scale, cond_composition):
    unet = denoiser.inner_model.inner_model.forge_objects.unet
    model, model_options, seed = unet.model, unet.model_options, denoiser.p.seeds[0]
    x, sigma = params.x, params.sigma
    uncond = forge_sampler.cond_from_a1111_to_patched_ldm(params.text_uncond)
    cond = forge_sampler.cond_from_a1111_to_patched_ldm_weighted(params.text_cond, cond_composition)
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, sigma, uncond, cond, cond_scale, model_options, seed = modifier(
            model, x, sigma, uncond, cond, cond_scale, model_options, seed)
    return samplers.sampling_function(model, x, sigma, uncond, cond, cond_scale, model_options, seed)


def load_unet(unet):
    """prepare_sampling -> model_management.load_models_gpu: object patches on (and the previous clone's off)."""
    from standin_core import memory
    memory.load_models_gpu(unet, lambda m: m.patch_model(), lambda m: m.unpatch_model())
