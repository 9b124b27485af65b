# Mirrors modules/shared.py + modules/options.py (Forge main @ dfdcbab6, reForge @ 3b56b268): opts
# (Options with data_labels / data, attribute access, set(), add_option(), get_default()), OptionInfo,
# options_section, state, cmd_opts, sd_model, demo, latent_upscale_modes, prompt_styles.
# Only the options the stand-in reads are declared; extensions add theirs with add_option (on_ui_settings).
import os
import tempfile
import types


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False, category_id=None):
        self.default, self.label = default, label
        self.component, self.component_args = component, component_args
        self.onchange, self.section, self.category_id, self.refresh = onchange, section, category_id, refresh
        self.do_not_save = False
        self.comment_before, self.comment_after = comment_before, comment_after
        self.infotext, self.restrict_api = infotext, restrict_api

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label, js_func):
        self.comment_before += f"[<a onclick='{js_func}(); return false'>{label}</a>]"
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.comment_after += " <span class='info'>(requires restart)</span>"
        return self

    def needs_reload_ui(self):
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
        return self


def options_section(section_identifier, options_dict):
    for v in options_dict.values():
        if len(section_identifier) == 2:
            v.section = section_identifier
        elif len(section_identifier) == 3:
            v.section, v.category_id = section_identifier[0:2], section_identifier[2]
    return options_dict


_builtin_fields = {"data_labels", "data", "restricted_opts", "typemap"}


class Options:
    typemap = {int: float}

    def __init__(self, data_labels):
        self.data_labels = data_labels
        self.data = {k: v.default for k, v in data_labels.items() if not v.do_not_save}
        self.restricted_opts = set()

    def __setattr__(self, key, value):
        if key in _builtin_fields:
            return super().__setattr__(key, value)
        if key in self.data or key in self.data_labels:
            info = self.data_labels.get(key)
            if info is not None and info.do_not_save:
                return
            self.data[key] = value
            return
        return super().__setattr__(key, value)

    def __getattr__(self, item):
        if item in _builtin_fields:
            return super().__getattribute__(item)
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels[key]
        if option.do_not_save or (is_api and option.restrict_api):
            return False
        setattr(self, key, value)
        if run_callbacks and option.onchange is not None:
            option.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()

    def cast_value(self, key, value):
        default = self.get_default(key)
        if value is None or default is None:
            return value
        expected = type(default)
        if expected == bool and value == "False":
            return False
        return expected(value)


def _defaults():
    values = dict(
        sdxl_crop_left=0, sdxl_crop_top=0, emphasis="Original", CLIP_stop_at_last_layers=1,
        s_min_uncond=0.0, s_min_uncond_all=False, skip_early_cond=0.0, s_churn=0.0, s_tmin=0.0, s_tmax=0.0,
        s_noise=1.0, eta_noise_seed_delta=0, return_grid=True, img_max_size_mp=200, infotext_skip_pasting=[],
        infotext_styles="Ignore", persistent_cond_cache=True, hires_fix_use_firstpass_conds=False,
        add_model_hash_to_info=True, add_model_name_to_info=True, add_version_to_infotext=True,
        add_user_name_to_info=False, face_restoration=False, face_restoration_model=None, tiling=False,
        live_previews_enable=False, send_seed=True, use_old_hires_fix_width_height=False,
        img2img_fix_steps=False, disable_weights_auto_swap=True, inpainting_mask_weight=1.0,
        token_merging_ratio=0.0, token_merging_ratio_hr=0.0, hide_samplers=[],
    )
    with_infotext = dict(   # option: (default, infotext name) as in modules/shared_options.py
        always_discard_next_to_last_sigma=(False, "Discard penultimate sigma"),
        sgm_noise_multiplier=(False, "SGM noise multiplier"),
        sd_vae_encode_method=("Full", "VAE Encoder"),
        use_old_karras_scheduler_sigmas=(False, None),
        sigma_min=(0.0, "Schedule min sigma"),
        sigma_max=(0.0, "Schedule max sigma"),
        rho=(0.0, "Schedule rho"),
    )
    return {**{k: OptionInfo(v) for k, v in values.items()},
            **{k: OptionInfo(v, infotext=name) for k, (v, name) in with_infotext.items()}}


opts = Options(_defaults())
cmd_opts = types.SimpleNamespace(api=True, nowebui=False, no_prompt_history=True, hide_ui_dir_config=False,
                                 freeze_settings=False, skip_install=False, api_auth=None,
                                 # the built-in LoRA extension's preload.py adds --lora-dir (models/Lora)
                                 lora_dir=os.path.join(tempfile.gettempdir(), "standin-models-Lora"))


class State:
    def __init__(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.job_count, self.sampling_step, self.sampling_steps = "", 0, 0, 0
        self.xyz_plot_x = self.xyz_plot_y = self.xyz_plot_z = None

    def begin(self, job="(unknown)"):
        self.job, self.interrupted, self.skipped = job, False, False

    def end(self):
        self.job = ""

    def nextjob(self):
        pass


state = State()
sd_model = None
demo = None
device = "cpu"
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}


class _Styles:
    def apply_styles_to_prompt(self, prompt, styles):
        return prompt

    def apply_negative_styles_to_prompt(self, prompt, styles):
        return prompt


prompt_styles = _Styles()
total_tqdm = types.SimpleNamespace(updateTotal=lambda total: None, clear=lambda: None)
