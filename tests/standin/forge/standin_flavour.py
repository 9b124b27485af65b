# The Forge-main side of every difference between the two flavours (the reforge/ directory has the other
# side), plus the model objects Forge main puts in shared.sd_model. Facts from
# lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e57677014f05a3309b48cc87383167:
#   modules/processing.py sample_hr_pass: process_before_every_sampling is called, forge_objects is reset
#     from forge_objects_after_applying_lora, and process_before_every_sampling is called again (3 calls
#     with hires fix: first pass, then twice around the reset).
#   modules/scripts.py ScriptRunner.process_before_every_sampling (the second, winning definition) loops over
#     self.alwayson_scripts, not the ordered callbacks.
#   modules/ui_components.py: InputAccordion is a function returning an InputAccordionImpl (gr.Checkbox).
#   modules/prompt_parser.py SdConditioning has distilled_cfg_scale.
#   backend/diffusion_engine/sd15.py, sd20.py, sdxl.py: engines with forge_objects (ForgeObjects),
#     text_processing_engine (SD1/SD2) or text_processing_engine_l/_g (SDXL), is_sd1 / is_sd2 / is_sdxl;
#     encode_first_stage(x) = forge_objects.vae.first_stage_model.process_in(vae.encode(x * 0.5 + 0.5)) (the
#     scaled latent, inference mode); get_first_stage_encoding is the identity (diffusion_engine/base.py).
#   modules/sd_samplers_kdiffusion.py sample: x = predictor.noise_scaling(sigmas[0], x, zeros,
#     max_denoise=opts.sgm_noise_multiplier); sample_img2img: noise_scaling(sigma, noise, x, max_denoise=False).
#   modules/sd_samplers_common.py approximation_indexes: Full 0, Approx NN 1, Approx cheap 2, TAESD 3.
import torch

from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_model import KModel
from backend.modules.k_prediction import Prediction
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.patcher.unet import UnetPatcher
from backend.sampling import sampling_function as forge_sampling
from standin_core import models, vae

NAME = "forge"
GRADIO_MAJOR = 4
HIRES_SEQUENCE = ("call", "restore", "call")
BEFORE_EVERY_SAMPLING_SCRIPTS = "alwayson_scripts"
INPUT_ACCORDION_IS_CLASS = False
SDCONDITIONING_HAS_DISTILLED_CFG = True
MEMORY_FACTOR = 1.0          # calc_cond_uncond_batch: memory_required(shape) < free_memory
# modules/processing.py StableDiffusionProcessingTxt2Img.sample, before the hires pass:
# `'Use same choices' not in self.hr_additional_modules` -- a TypeError when the API request left it None.
HIRES_READS_ADDITIONAL_MODULES = True
ENGINE_ATTRS = {"sd15": "text_processing_engine", "sd2": "text_processing_engine"}
APPROXIMATION_INDEXES = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


class StandinEngine(ForgeDiffusionEngine):
    """One class for the SD15 / SD20 / SDXL engines of backend/diffusion_engine (same surfaces)."""

    def __init__(self, family, seed):
        super().__init__()
        self.family = family
        diffusion_model = models.build_unet(IntegratedUNet2DConditionModel, family, seed)
        unet = UnetPatcher(KModel(diffusion_model, Prediction(), config=models.unet_config(family)))
        self.engines = models.text_engines(family, seed)
        if family == "sdxl":
            self.text_processing_engine_l = self.engines["clip_l"]
            self.text_processing_engine_g = self.engines["clip_g"]
        else:
            self.text_processing_engine = next(iter(self.engines.values()))
        toy_vae = vae.ToyVAE(seed, first_stage_model=vae.LatentScaling(vae.latent_scale_factor(family)))
        self.forge_objects = ForgeObjects(unet=unet, clip=models.toy_clip(self.engines), vae=toy_vae, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1, self.is_sd2, self.is_sdxl = family == "sd15", family == "sd2", family == "sdxl"

    def encode_first_stage(self, x):
        toy_vae = self.forge_objects.vae
        return vae.encode_first_stage(toy_vae, toy_vae.first_stage_model, x)

    @torch.no_grad()
    def get_learned_conditioning(self, prompt):
        from modules.shared import opts
        return models.learned_conditioning(self.family, self.engines, prompt, opts.sdxl_crop_left, opts.sdxl_crop_top)


class FluxLikeEngine(ForgeDiffusionEngine):
    """Stands for backend/diffusion_engine/flux.py: not a UNet; every is_sd* flag False."""

    def __init__(self, seed):
        super().__init__()
        self.family = "flux"
        unet = UnetPatcher(KModel(models.FluxLikeModel(seed), Prediction(), config={}))
        self.engines = models.text_engines("sd15", seed)
        self.forge_objects = ForgeObjects(unet=unet, clip=models.toy_clip(self.engines), vae=None, clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.use_distilled_cfg_scale = True

    @torch.no_grad()
    def get_learned_conditioning(self, prompt):
        return models.learned_conditioning("sd15", self.engines, prompt)


def build_sd_model(family, seed):
    return FluxLikeEngine(seed) if family == "flux" else StandinEngine(family, seed)


def schedule_of(unet):
    """The object with sigmas / percent_to_sigma / timestep: unet.model.predictor."""
    return unet.model.predictor


def start_noise(unet, sigma, x, sgm_noise_multiplier):
    """KDiffusionSampler.sample's starting latent."""
    return schedule_of(unet).noise_scaling(sigma, x, torch.zeros_like(x), max_denoise=sgm_noise_multiplier)


def img2img_start(unet, sigma, noise, latent):
    """KDiffusionSampler.sample_img2img's starting latent (the SGM option is not read there)."""
    return schedule_of(unet).noise_scaling(sigma, noise, latent, max_denoise=False)


def denoise(denoiser, params, cond_scale, cond_composition):
    """CFGDenoiser.forward's call into the backend: sampling_function(self, denoiser_params, ...)."""
    denoised, _, _ = forge_sampling.sampling_function(denoiser, params, cond_scale, cond_composition)
    return denoised


def load_unet(unet):
    """sampling_prepare -> memory_management.load_models_gpu: object patches on (and the previous clone's off)."""
    from standin_core import memory
    memory.load_models_gpu(unet, lambda m: m.forge_patch_model(), lambda m: m.forge_unpatch_model())
