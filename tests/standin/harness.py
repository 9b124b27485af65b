# Test-side entry point of the WebUI stand-in (no real file mirrors it). It switches between the two
# flavours (Forge main: tests/standin/forge, reForge: tests/standin/reforge, both on top of
# tests/standin/common), starts a "WebUI" with extension directories the way the real one does, and runs
# generations through the real call order. Import it as `from tests.standin import harness`.
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
COMMON_DIR = os.path.join(HERE, "common")
FLAVOURS = ("forge", "reforge")
FAMILIES = ("sd15", "sd2", "sdxl")
_PURGED_PREFIXES = ("modules", "backend", "ldm_patched", "modules_forge", "launch", "standin_core",
                    "standin_flavour", "lib_omost.forge", "networks")
_active: list[str] = []
_weight_cache: dict = {}


def _purgeable(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PURGED_PREFIXES)


def active_flavour() -> str:
    if not _active:
        raise RuntimeError("no stand-in flavour is active: wrap the code in `with harness.use_flavour(name):`")
    return _active[-1]


@contextlib.contextmanager
def use_flavour(name: str):
    """Make `modules`, `launch` and `backend` (forge) or `ldm_patched` (reforge) importable; undo on exit.

    Previously imported modules of those packages (and lib_omost.forge, which caches the flavour) are set
    aside on entry and put back on exit, sys.path and the stand-in's environment variables are restored,
    so both flavours can be used, one after the other, in one pytest session.
    """
    if name not in FLAVOURS:
        raise ValueError(f"unknown stand-in flavour {name!r}; choose one of {FLAVOURS}")
    saved_path = list(sys.path)
    saved_modules = {k: v for k, v in sys.modules.items() if _purgeable(k)}
    saved_env = {k: os.environ.get(k) for k in ("STANDIN_INSTALLED", "STANDIN_PIP_LOG")}
    lib_omost = sys.modules.get("lib_omost")
    saved_forge_attr = getattr(lib_omost, "forge", None) if lib_omost is not None else None
    for k in saved_modules:
        del sys.modules[k]
    if lib_omost is not None and hasattr(lib_omost, "forge"):
        delattr(lib_omost, "forge")
    sys.path[:0] = [COMMON_DIR, os.path.join(HERE, name)]
    import standin_core.models
    standin_core.models.weight_cache = _weight_cache       # tensors only: safe to share across flavours
    _active.append(name)
    saved_cache = dict(_model_cache)
    _model_cache.clear()
    try:
        yield name
    finally:
        _active.pop()
        _model_cache.clear()
        _model_cache.update(saved_cache)
        for k in [k for k in sys.modules if _purgeable(k)]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        lib_omost = sys.modules.get("lib_omost")
        if lib_omost is not None:
            if saved_forge_attr is not None:
                lib_omost.forge = saved_forge_attr
            elif hasattr(lib_omost, "forge"):
                delattr(lib_omost, "forge")


# --- models ----------------------------------------------------------------------------------------

_model_cache: dict = {}


def make_sd_model(family: str = "sd15", seed: int = 0, *, cached: bool = True):
    """The flavour's shared.sd_model for a tiny model: "sd15", "sd2", "sdxl" (and "flux" in forge).

    The object has is_sd1 / is_sd2 / is_sdxl, forge_objects (unet patcher, toy clip),
    forge_objects_original / forge_objects_after_applying_lora and get_learned_conditioning. With
    cached=True one model per (flavour, family, seed) is reused inside the current use_flavour block; the
    patcher's model_options are reset to the pristine state each time it is handed out.
    """
    active_flavour()
    import standin_flavour
    key = (family, seed)
    if not cached or key not in _model_cache:
        model = standin_flavour.build_sd_model(family, seed)
        if not cached:
            return model
        _model_cache[key] = model
    model = _model_cache[key]
    model.forge_objects = model.forge_objects_original.shallow_copy()
    model.forge_objects_after_applying_lora = model.forge_objects_original.shallow_copy()
    model.forge_objects_original.unet.model_options = {"transformer_options": {}}
    return model


def load_model(family: str = "sd15", seed: int = 0):
    """make_sd_model and make it the loaded model (shared.sd_model)."""
    from modules import shared
    shared.sd_model = make_sd_model(family, seed)
    return shared.sd_model


def schedule(unet):
    """The real object for percent_to_sigma / timestep / sigmas of this flavour's unet patcher."""
    import standin_flavour
    return standin_flavour.schedule_of(unet)


@contextlib.contextmanager
def force_split(max_rows: int | None):
    """Make free memory hold at most ``max_rows`` rows per UNet call (None: unlimited)."""
    import standin_flavour
    from standin_core import memory
    memory.set_max_rows(max_rows, standin_flavour.MEMORY_FACTOR)
    try:
        yield
    finally:
        memory.set_max_rows(None, standin_flavour.MEMORY_FACTOR)


class UnetCall:
    def __init__(self, x_shape, transformer_options, context_shape):
        self.x_shape = tuple(x_shape)
        self.transformer_options = transformer_options
        self.context_shape = tuple(context_shape) if context_shape is not None else None

    @property
    def cond_or_uncond(self):
        return self.transformer_options.get("cond_or_uncond")


@contextlib.contextmanager
def record_unet_calls(sd_model=None):
    """Record every diffusion-model call (input shape, a snapshot of transformer_options, context shape).

    Wraps the diffusion model instance's forward; model_options are not touched, so what the extension
    installs and what it sees are unchanged.
    """
    from modules import shared
    sd_model = sd_model or shared.sd_model
    diffusion_model = sd_model.forge_objects_original.unet.model.diffusion_model
    calls: list[UnetCall] = []
    original = diffusion_model.forward

    def forward(x, timesteps=None, context=None, *args, transformer_options={}, **kwargs):
        calls.append(UnetCall(x.shape, dict(transformer_options), None if context is None else context.shape))
        return original(x, timesteps, context, *args, transformer_options=transformer_options, **kwargs)

    diffusion_model.forward = forward
    try:
        yield calls
    finally:
        del diffusion_model.forward


# --- the WebUI ---------------------------------------------------------------------------------------

def _submitted_value(component):
    if getattr(component, "type", None) == "index" and getattr(component, "choices", None) is not None:
        values = [choice[1] if isinstance(choice, tuple) else choice for choice in component.choices]
        return values.index(component.value) if component.value in values else None
    return component.value


class WebUI:
    """A started stand-in WebUI: script runners with built UIs, paste fields, API defaults."""

    def __init__(self, demo, app):
        from modules import scripts
        self.demo, self.app = demo, app
        self.scripts = scripts
        self.txt2img_runner = scripts.scripts_txt2img
        self.img2img_runner = scripts.scripts_img2img
        self._api_defaults: dict = {}

    def runner(self, tab: str = "txt2img"):
        if tab not in ("txt2img", "img2img"):
            raise ValueError(f"tab must be 'txt2img' or 'img2img', got {tab!r}")
        return self.txt2img_runner if tab == "txt2img" else self.img2img_runner

    def script(self, title: str, tab: str = "txt2img"):
        found = self.runner(tab).script(title)
        if found is None:
            raise KeyError(f"no script titled {title!r} in {tab}; have {sorted(self.runner(tab).title_map)}")
        return found

    def ui_defaults(self, tab: str = "txt2img") -> list:
        """The script_args a UI submit sends when nothing was touched (component values in input order;
        type="index" dropdowns/radios send the index of their value, as gradio's preprocess does)."""
        runner = self.runner(tab)
        return [0] + [_submitted_value(c) for c in runner.inputs[1:]]

    def script_args(self, overrides: dict[str, Sequence] | None = None, tab: str = "txt2img") -> list:
        """UI default args with some scripts' args replaced (by title, like alwayson_scripts)."""
        from modules.api import api
        return api.init_script_args({"alwayson_scripts": {k: {"args": list(v)} for k, v in (overrides or {}).items()}},
                                    self.ui_defaults(tab), None, None, self.runner(tab))

    def api_defaults(self, tab: str = "txt2img") -> list:
        """init_default_script_args (ui() called again, twice per script), cached like the real Api."""
        from modules.api import api
        if tab not in self._api_defaults:
            self._api_defaults[tab] = api.init_default_script_args(self.runner(tab))
        return self._api_defaults[tab]

    def make_p(self, tab: str = "txt2img", script_args=None, **kwargs):
        from modules import processing
        kwargs.setdefault("sampler_name", "Euler")
        kwargs.setdefault("steps", 2)
        kwargs.setdefault("width", 64)
        kwargs.setdefault("height", 64)
        kwargs.setdefault("seed", 1)
        if tab == "txt2img":
            kwargs.setdefault("hr_additional_modules", ["Use same choices"])   # the UI's default selection
        cls = processing.StableDiffusionProcessingTxt2Img if tab == "txt2img" else processing.StableDiffusionProcessingImg2Img
        p = cls(**kwargs)
        p.scripts = self.runner(tab)
        p.script_args = tuple(self.ui_defaults(tab) if script_args is None else script_args)
        return p

    def txt2img(self, script_args=None, **kwargs):
        """process_images on a txt2img p (64x64, 2 steps, seed 1 unless given); returns Processed."""
        from modules import processing
        return processing.process_images(self.make_p("txt2img", script_args, **kwargs))

    def img2img(self, script_args=None, **kwargs):
        from modules import processing
        return processing.process_images(self.make_p("img2img", script_args, **kwargs))

    def api_txt2img(self, request: dict):
        """The API path: script args from defaults, request infotext, alwayson_scripts; then process."""
        from modules.api import api
        return api.txt2img(request, self.api_defaults("txt2img"))

    def pasted_values(self, feature, infotext: str) -> dict:
        """The values of ``feature`` that pasting ``infotext`` gives (the WebUI's parser, then the paste
        callbacks, then the feature's reading of the parsed keys)."""
        from modules import infotext_utils, script_callbacks
        params = infotext_utils.parse_generation_parameters(infotext)
        script_callbacks.infotext_pasted_callback(infotext, params)
        return feature.from_infotext(params)

    def paste(self, infotext: str, tab: str = "txt2img") -> dict:
        """{component: value} that pasting ``infotext`` would set in this tab."""
        from modules import infotext_utils
        return infotext_utils.paste_infotext(infotext, infotext_utils.paste_fields[tab]["fields"])

    def run_selectable(self, title: str, args: Sequence, tab: str = "txt2img", overrides=None, **kwargs):
        """Run a selectable script (e.g. "X/Y/Z plot") the way the UI does: ScriptRunner.run(p, *script_args).

        ``overrides`` sets alwayson scripts' args by title (others keep UI defaults). Returns (p, result).
        """
        runner = self.runner(tab)
        index = [s.title().lower() for s in runner.selectable_scripts].index(title.lower())
        script = runner.selectable_scripts[index]
        script_args = self.script_args(overrides, tab)
        script_args[script.args_from:script.args_to] = list(args)
        script_args[0] = index + 1
        p = self.make_p(tab, script_args, **kwargs)
        return p, runner.run(p, *p.script_args)


def plain_txt2img(family: str | None = None, **kwargs):
    """process_images with no script runner at all (p.scripts is None): the bare pipeline, no UI built.

    Loads a ``family`` model first when given (else uses the loaded one, loading sd15 if none).
    """
    from modules import processing, shared
    if family is not None or shared.sd_model is None:
        load_model(family or "sd15")
    for key, value in dict(sampler_name="Euler", steps=2, width=64, height=64, seed=1,
                           hr_additional_modules=["Use same choices"]).items():
        kwargs.setdefault(key, value)
    return processing.process_images(processing.StableDiffusionProcessingTxt2Img(**kwargs))


def _create_ui():
    """modules/ui.py create_ui for what scripts need: both tabs' script UIs, paste fields, settings."""
    import gradio as gr
    from modules import infotext_utils, script_callbacks, scripts, shared, ui_settings
    with gr.Blocks() as demo:
        for tab, runner in (("txt2img", scripts.scripts_txt2img), ("img2img", scripts.scripts_img2img)):
            scripts.scripts_current = runner
            runner.initialize_scripts(is_img2img=tab == "img2img")
            with gr.Tab(tab):
                prompt = gr.Textbox(label="Prompt", elem_id=f"{tab}_prompt")
                steps = gr.Slider(label="Sampling steps", minimum=1, maximum=150, value=20, step=1)
                runner.prepare_ui()
                runner.setup_ui()
            infotext_utils.add_paste_fields(tab, None, [(prompt, "Prompt"), (steps, "Steps"),
                                                        *runner.infotext_fields])
        scripts.scripts_current = None
        script_callbacks.ui_settings_callback()
        with gr.Tab("Settings"):
            for key, info in shared.opts.data_labels.items():
                if info.section is not None:            # the options extensions add (the stand-in's own have none)
                    ui_settings.create_setting_component(key)
    return demo


def start_webui(extension_dirs: Iterable[str] = (), *, nowebui: bool = False, family: str = "sd15",
                seed: int = 0) -> WebUI:
    """Load the extensions' scripts and start like webui.py, with a tiny model of ``family`` loaded.

    Default (UI mode): load_scripts, before_ui callbacks, create_ui (txt2img then img2img, settings),
    app_started(demo, app). nowebui=True (API-only, as `--nowebui`): the Api is created first, which builds
    the UI and the default args BEFORE the before_ui callbacks run, then app_started(None, app).
    """
    from modules import errors, extensions, infotext_utils, script_callbacks, scripts
    extensions.extensions.clear()
    infotext_utils.reset()
    errors.clear()
    for path in extension_dirs:
        extensions.add_extension(path)
    load_model(family, seed)
    scripts.load_scripts()
    try:
        from fastapi import FastAPI
        app = FastAPI()
    except ImportError:
        app = None
    if nowebui:
        demo = _create_ui()
        webui = WebUI(demo, app)
        webui.api_defaults("txt2img")
        webui.api_defaults("img2img")
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app)
    else:
        script_callbacks.before_ui_callback()
        demo = _create_ui()
        webui = WebUI(demo, app)
        script_callbacks.app_started_callback(demo, app)
    return webui


def reported_errors() -> list:
    """(message, exception) for everything the WebUI would only have logged (callbacks, script hooks)."""
    from modules import errors
    return list(errors.reported)


# --- install.py ----------------------------------------------------------------------------------------

def set_installed(packages: dict[str, str]):
    """Which packages (name -> version) launch.is_installed sees, here and in installer processes."""
    from modules import launch_utils
    launch_utils.set_installed(packages)


def run_installer(extension_dir: str, pip_log: str, installed: dict[str, str] | None = None,
                  extra_env: dict[str, str] | None = None):
    """Run <extension_dir>/install.py as the launcher does (separate process, WebUI root on PYTHONPATH).

    Returns (returncode, stdout, stderr, pip_calls) where pip_calls are the [command, desc] pairs the
    installer passed to launch.run_pip (pip itself never runs).
    """
    import json
    from modules import launch_utils
    if installed is not None:
        launch_utils.set_installed(installed)
    open(pip_log, "w").close()
    env = {"STANDIN_PIP_LOG": pip_log, **(extra_env or {})}
    returncode, stdout, stderr = launch_utils.run_extension_installer(extension_dir, env)
    with open(pip_log, encoding="utf8") as f:
        calls = [json.loads(line) for line in f if line.strip()]
    return returncode, stdout, stderr, calls


def unet_patcher(sd_model=None):
    from modules import shared
    return (sd_model or shared.sd_model).forge_objects.unet


def model_channels(unet) -> int:
    """Read model_channels the flavour's real way (Forge: diffusion_model.config; reForge: unet_config)."""
    if active_flavour() == "forge":
        return int(unet.model.diffusion_model.config["model_channels"])
    return int(unet.model.model_config.unet_config["model_channels"])

