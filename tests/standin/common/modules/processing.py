# Mirrors modules/processing.py (Forge main @ dfdcbab685e57677014f05a3309b48cc87383167; reForge @
# 3b56b268ad9158ee8b30900973b6ccda4ec22241) for what extensions see:
# * StableDiffusionProcessing: a dataclass (xyz cells use copy(p), a SHALLOW copy that shares
#   extra_generation_params / script_args); sd_model is a property returning shared.sd_model;
#   setting scripts and script_args runs the scripts' setup(); cached_c / cached_uc are class-level caches
#   (the same cond objects are reused across generations with equal prompts and sizes).
# * process_images: scripts.before_process; then process_images_inner: fixed seeds, scripts.process, and per
#   n_iter batch: forge_objects = forge_objects_original.shallow_copy(), before_process_batch,
#   forge_objects = forge_objects_after_applying_lora.shallow_copy(), process_batch, setup_conds, sample,
#   post_sample, postprocess_batch, infotexts; finally scripts.postprocess.
# * sample(): forge_objects reset from forge_objects_after_applying_lora, then
#   process_before_every_sampling(p, x=noise, noise=noise, c=p.c, uc=p.uc), p.modified_noise honoured.
# * hires fix (latent upscale): is_hr_pass = True, latents resized, new noise, hr conds, then the flavour's
#   sequence of resets and process_before_every_sampling calls (Forge main: call, reset, call; reForge:
#   reset, call), sample_img2img with hr_second_pass_steps or steps; hr_cfg is the scale of that pass.
#   Forge main first tests `"Use same choices" not in p.hr_additional_modules`: an API request without
#   hr_additional_modules (None) fails there with TypeError (HTTP 500); the UI always sends a list.
# * CFG 1: Forge main sets uc = None (and hr_uc = None when hr_cfg == 1); reForge always computes uc; both
#   backends then drop the uncond chunk.
# * p.sampler_noise_scheduler_override = None (set in __post_init__, as the real one); hires fix: hr_scheduler
#   defaults to scheduler, "Hires schedule type" starts as None (the sampler's get_sigmas fills it).
# * create_infotext: generation_params then **p.extra_generation_params; list values indexed per image,
#   callables called; "k: quote(v)" joined by ", " (just "k" when k == v), None values skipped.
# Images are never decoded: Processed carries the final latents.
import math
import random
from copy import copy
from dataclasses import dataclass, field
from typing import Any

import torch

import standin_flavour
from modules import infotext_utils, prompt_parser, rng, scripts, sd_samplers, shared
from modules.shared import opts, state

opt_C, opt_f = 4, 8
UC_NONE_AT_CFG1 = standin_flavour.NAME == "forge"


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except ValueError:
            seed = -1
    if seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p):
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def program_version():
    return f"standin-{standin_flavour.NAME}"


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    distilled_cfg_scale: float = 3.5
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    denoising_strength: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False

    scripts_value: Any = field(default=None, init=False)
    script_args_value: Any = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    cached_uc = [None, None]
    cached_c = [None, None]

    comments: dict = None
    sampler: Any = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)
    rng: Any = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)
    user: str = field(default=None, init=False)
    token_merging_ratio = 0
    token_merging_ratio_hr = 0

    def __post_init__(self):
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.cached_uc = StableDiffusionProcessing.cached_uc
        self.cached_c = StableDiffusionProcessing.cached_c
        self.extra_result_images = []
        self.latents_after_sampling = []
        self.modified_noise = None
        self.is_using_inpainting_conditioning = False

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def comment(self, text):
        self.comments[text] = 1

    def fill_fields_from_opts(self):
        pass

    def get_token_merging_ratio(self, for_hr=False):
        return 0

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def setup_prompts(self):
        prompts = self.prompt if isinstance(self.prompt, list) else self.batch_size * self.n_iter * [self.prompt]
        negatives = (self.negative_prompt if isinstance(self.negative_prompt, list)
                     else self.batch_size * self.n_iter * [self.negative_prompt])
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in prompts]
        self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles) for x in negatives]
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None):
        return (tuple(required_prompts), steps, hires_steps, id(shared.sd_model), opts.sdxl_crop_left,
                opts.sdxl_crop_top, self.width, self.height, bool(getattr(required_prompts, "is_negative_prompt", False)))

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps)
        for cache in caches:
            if cache[0] is not None and params == cache[0]:
                return cache[1]
        cache = caches[0]
        cache[1] = function(shared.sd_model, required_prompts, steps, hires_steps)
        cache[0] = params
        return cache[1]

    def _conditioning(self, prompts, width, height, is_negative_prompt=False):
        kwargs = {"distilled_cfg_scale": self.distilled_cfg_scale} if standin_flavour.SDCONDITIONING_HAS_DISTILLED_CFG else {}
        return prompt_parser.SdConditioning(prompts, width=width, height=height, is_negative_prompt=is_negative_prompt,
                                            **kwargs)

    def setup_conds(self):
        prompts = self._conditioning(self.prompts, self.width, self.height)
        negatives = self._conditioning(self.negative_prompts, self.width, self.height, is_negative_prompt=True)
        total_steps = sd_samplers.find_sampler_config(self.sampler_name).total_steps(self.steps)
        self.firstpass_steps = total_steps
        if UC_NONE_AT_CFG1 and self.cfg_scale == 1:
            self.uc = None
        else:
            self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negatives, total_steps,
                                                  [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts, total_steps,
                                             [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        pass

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None


def restore_forge_objects(p, source="forge_objects_after_applying_lora"):
    p.sd_model.forge_objects = getattr(p.sd_model, source).shallow_copy()


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_additional_modules: list = field(default=None)
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_cfg: float = 1.0
    hr_distilled_cfg: float = 3.5

    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: Any = field(default=None, init=False)
    hr_uc: Any = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.cached_hr_uc = StableDiffusionProcessingTxt2Img.cached_hr_uc
        self.cached_hr_c = StableDiffusionProcessingTxt2Img.cached_hr_c

    def init(self, all_prompts, all_seeds, all_subseeds):
        if not self.enable_hr:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.hr_upscaler not in shared.latent_upscale_modes:
            raise ValueError(f"the stand-in's hires fix supports latent upscalers only: {sorted(shared.latent_upscale_modes)}")
        self.latent_scale_mode = shared.latent_upscale_modes[self.hr_upscaler]
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        else:
            self.extra_generation_params["Hires resize"] = f"{self.hr_resize_x}x{self.hr_resize_y}"
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.hr_resize_x, self.hr_resize_y
        if self.hr_second_pass_steps:
            self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps
        self.extra_generation_params["Hires upscaler"] = self.hr_upscaler
        self.extra_generation_params["Hires CFG Scale"] = self.hr_cfg
        self.extra_generation_params["Hires schedule type"] = None    # set by the sampler's get_sigmas
        if self.hr_scheduler is None:
            self.hr_scheduler = self.scheduler

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        self.hr_prompt = self.hr_prompt or self.prompt
        self.hr_negative_prompt = self.hr_negative_prompt or self.negative_prompt
        count = self.batch_size * self.n_iter
        self.all_hr_prompts = self.hr_prompt if isinstance(self.hr_prompt, list) else count * [self.hr_prompt]
        self.all_hr_negative_prompts = (self.hr_negative_prompt if isinstance(self.hr_negative_prompt, list)
                                        else count * [self.hr_negative_prompt])

    def parse_extra_network_prompts(self):
        if self.enable_hr:
            start, end = self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size
            self.hr_prompts = self.all_hr_prompts[start:end]
            self.hr_negative_prompts = self.all_hr_negative_prompts[start:end]

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        prompts = self._conditioning(self.hr_prompts, self.hr_upscale_to_x, self.hr_upscale_to_y)
        negatives = self._conditioning(self.hr_negative_prompts, self.hr_upscale_to_x, self.hr_upscale_to_y,
                                       is_negative_prompt=True)
        steps = self.hr_second_pass_steps or self.steps
        if UC_NONE_AT_CFG1 and self.hr_cfg == 1:
            self.hr_uc = None
        else:
            self.hr_uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negatives, self.firstpass_steps,
                                                     [self.cached_hr_uc, self.cached_uc], None, steps)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts,
                                                self.firstpass_steps, [self.cached_hr_c, self.cached_c], None, steps)

    def setup_conds(self):
        super().setup_conds()
        self.hr_uc = self.hr_c = None
        if self.enable_hr:
            self.calculate_hr_conds()

    def get_conds(self):
        return (self.hr_c, self.hr_uc) if self.is_hr_pass else super().get_conds()

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        restore_forge_objects(self)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x, self.modified_noise = self.modified_noise, None
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning)
        if not self.enable_hr:
            return samples
        if standin_flavour.HIRES_READS_ADDITIONAL_MODULES and "Use same choices" not in self.hr_additional_modules:
            pass    # the real code switches VAE / text-encoder modules here (not modelled)
        return self.sample_hr_pass(samples, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, seeds, subseeds, subseed_strength, prompts):
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f),
                                                  mode=self.latent_scale_mode["mode"],
                                                  antialias=self.latent_scale_mode["antialias"])
        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        self.calculate_hr_conds()
        before_hr_done = False
        for action in standin_flavour.HIRES_SEQUENCE:
            if action == "restore":
                restore_forge_objects(self)
            elif self.scripts is not None:
                if not before_hr_done:
                    self.scripts.before_hr(self)
                    before_hr_done = True
                self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        if self.modified_noise is not None:
            noise, self.modified_noise = self.modified_noise, None
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc,
                                              steps=self.hr_second_pass_steps or self.steps)
        self.sampler = None
        self.is_hr_pass = False
        return samples


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img from a given latent (the stand-in has no VAE): p.init_latent [B, 4, H/8, W/8]."""
    init_images: list = None
    denoising_strength: float = 0.75
    init_latent: Any = None
    initial_noise_multiplier: float = None

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.init_latent is None:
            self.init_latent = torch.zeros(self.batch_size, opt_C, self.height // opt_f, self.width // opt_f)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        restore_forge_objects(self)
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning,
                                                       uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x, self.modified_noise = self.modified_noise, None
        return self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning)


class Processed:
    def __init__(self, p, latents, infotexts, seed):
        self.latents = latents
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""
        self.seed = seed
        self.all_prompts, self.all_seeds = p.all_prompts, p.all_seeds
        self.extra_generation_params = p.extra_generation_params
        self.width, self.height = p.width, p.height

    def infotext(self, p, index):
        return create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=index)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    clip_skip = int(getattr(p, "clip_skip", opts.CLIP_stop_at_last_layers))
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = {"Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler,
                         "CFG scale": p.cfg_scale}
    if standin_flavour.NAME == "forge" and p.sd_model.use_distilled_cfg_scale:
        generation_params["Distilled CFG Scale"] = p.distilled_cfg_scale
    generation_params.update({
        "Image CFG scale": getattr(p, "image_cfg_scale", None),
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Face restoration": opts.face_restoration_model if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "Variation seed": None if p.subseed_strength == 0 else all_subseeds[index],
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "Tiling": "True" if p.tiling else None,
        **p.extra_generation_params,
        "Version": program_version() if opts.add_version_to_infotext else None,
        "User": p.user if opts.add_user_name_to_info else None,
    })
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            from modules import errors
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}"
                     for k, v in generation_params.items() if v is not None)
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_text}\n{text}".strip()


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
    return process_images_inner(p)


def process_images_inner(p):
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    if p.restore_faces is None:
        p.restore_faces = opts.face_restoration
    if p.tiling is None:
        p.tiling = opts.tiling
    p.sd_model_name = getattr(p.sd_model, "standin_name", f"standin-{p.sd_model.family}")
    p.sd_model_hash = getattr(p.sd_model, "standin_hash", "0123456789")
    p.sd_model.comments = []
    p.sd_model.extra_generation_params = {}
    p.fill_fields_from_opts()
    p.setup_prompts()
    p.all_seeds = seed if isinstance(seed, list) else [int(seed) + (x if p.subseed_strength == 0 else 0)
                                                       for x in range(len(p.all_prompts))]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)
    infotexts, latents = [], []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted:
                break
            restore_forge_objects(p, "forge_objects_original")
            batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
            p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
            p.rng = rng.ImageRNG((opt_C, p.height // opt_f, p.width // opt_f), p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            if len(p.prompts) == 0:
                break
            p.parse_extra_network_prompts()
            restore_forge_objects(p)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            p.extra_generation_params.update(p.sd_model.extra_generation_params)
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                               subseed_strength=p.subseed_strength, prompts=p.prompts)
            p.latents_after_sampling.extend(samples)
            if p.scripts is not None:
                post = scripts.PostSampleArgs(samples)
                p.scripts.post_sample(p, post)
                samples = post.samples
                p.scripts.postprocess_batch(p, samples, batch_number=n)
            for i in range(samples.shape[0]):
                p.batch_index = i
                infotexts.append(create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i,
                                                 all_negative_prompts=p.negative_prompts))
            latents.append(samples)
    result = Processed(p, torch.cat(latents) if latents else None, infotexts, p.all_seeds[0])
    if p.scripts is not None:
        p.scripts.postprocess(p, result)
    return result
