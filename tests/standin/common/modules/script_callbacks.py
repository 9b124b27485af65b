# Mirrors modules/script_callbacks.py (Forge main @ dfdcbab6; reForge @ 3b56b268 is the same for these):
# callback_map of lists of ScriptCallback(script=caller's file, callback, name), on_* registration,
# the *_callback runners (exceptions reported via errors.report and swallowed; before_ui runs the list in
# REVERSED order), remove_current_script_callbacks (every callback registered from the caller's file),
# remove_callbacks_for_function, clear_callbacks (called by scripts.load_scripts).
# User-configured callback ordering is not modelled: callbacks run in registration order.
import dataclasses
import inspect
import os
from typing import Any

from modules import errors, extensions


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = x, sampling_step, total_sampling_steps, inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


_CATEGORIES = ("app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
               "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
               "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "on_reload",
               "list_optimizers", "list_unets", "before_token_counter")
callback_map = {f"callbacks_{c}": [] for c in _CATEGORIES}


def _caller_file():
    stack = [frame for frame in inspect.stack() if frame.filename != __file__]
    return stack[0].filename if stack else "unknown file"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    filename = filename or _caller_file()
    extension = extensions.find_extension(filename)
    callback_name = f"{extension.canonical_name if extension else 'base'}/{os.path.basename(filename)}/{category}"
    if name is not None:
        callback_name += f"/{name}"
    unique = callback_name
    for index in range(1000):
        if not any(x.name == unique for x in callbacks):
            break
        unique = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    return list(unordered_callbacks)


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])
    return sort_callbacks(category, unordered_callbacks)


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def _run(category, *args, reverse=False):
    callbacks = ordered_callbacks(category)
    for c in (reversed(callbacks) if reverse else callbacks):
        try:
            c.callback(*args)
        except Exception:
            errors.report(f"Error executing callback {category}_callback for {c.script}", exc_info=True)


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_settings_callback():
    _run("ui_settings")


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _run("cfg_after_cfg", params)


def before_component_callback(component, **kwargs):
    for c in ordered_callbacks("before_component"):
        try:
            c.callback(component, **kwargs)
        except Exception:
            errors.report(f"Error executing callback before_component_callback for {c.script}", exc_info=True)


def after_component_callback(component, **kwargs):
    for c in ordered_callbacks("after_component"):
        try:
            c.callback(component, **kwargs)
        except Exception:
            errors.report(f"Error executing callback after_component_callback for {c.script}", exc_info=True)


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("script_unloaded")


def before_ui_callback():
    _run("before_ui", reverse=True)


def remove_current_script_callbacks():
    filename = _caller_file()
    if filename == "unknown file":
        return
    for callbacks in callback_map.values():
        for callback in [cb for cb in callbacks if cb.script == filename]:
            callbacks.remove(callback)


def remove_callbacks_for_function(callback_func):
    for callbacks in callback_map.values():
        for callback in [cb for cb in callbacks if cb.callback == callback_func]:
            callbacks.remove(callback)


def _register(category):
    def on(callback, *, name=None):
        add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category,
                     filename=_caller_file())
    on.__name__ = f"on_{category}"
    return on


on_app_started = _register("app_started")
on_before_reload = _register("on_reload")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_train_tabs = _register("ui_train_tabs")
on_ui_settings = _register("ui_settings")
on_before_image_saved = _register("before_image_saved")
on_image_saved = _register("image_saved")
on_extra_noise = _register("extra_noise")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_before_component = _register("before_component")
on_after_component = _register("after_component")
on_image_grid = _register("image_grid")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_list_unets = _register("list_unets")
on_before_token_counter = _register("before_token_counter")
