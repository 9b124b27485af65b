# Mirrors the script-argument handling of modules/api/api.py (Forge main @ dfdcbab6; reForge @ 3b56b268):
# script_name_to_index (titles matched case-insensitively; unknown -> HTTP 422), init_default_script_args
# (calls every script's ui() TWICE inside a fresh gr.Blocks and takes .value of each component),
# init_script_args (defaults, then values read from a request infotext, then the selectable script's
# args, then alwayson_scripts args positionally: only the first min(len(args), args_to - args_from) are
# replaced, so missing trailing args keep the UI defaults), apply_infotext's script part (each paste field
# whose component is a script input: value from the callable or params[label], converted with
# type(component.value) when not already of that type), get_script_info, and txt2img (text2imgapi).
import gradio as gr

from modules import infotext_utils, processing, scripts, shared


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(f"{status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


def script_name_to_index(name, scripts_list):
    try:
        return [script.title().lower() for script in scripts_list].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def init_default_script_args(script_runner):
    last_arg_index = 1
    for script in script_runner.scripts:
        if last_arg_index < script.args_to:
            last_arg_index = script.args_to
    script_args = [None] * last_arg_index
    script_args[0] = 0
    with gr.Blocks():
        for script in script_runner.scripts:
            if script.ui(script.is_img2img):
                script_args[script.args_from:script.args_to] = [elem.value for elem in script.ui(script.is_img2img)]
    return script_args


def get_script(script_name, script_runner):
    if not script_name:
        return None
    return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]


def get_selectable_script(script_name, script_runner):
    if not script_name:
        return None, None
    index = script_name_to_index(script_name, script_runner.selectable_scripts)
    return script_runner.selectable_scripts[index], index


def script_args_from_infotext(infotext, tabname, script_runner):
    """apply_infotext's mentioned_script_args: {input index: value} for script inputs found in the infotext."""
    if not infotext:
        return {}
    params = infotext_utils.parse_generation_parameters(infotext)
    indexes = {id(v): i for i, v in enumerate(script_runner.inputs)}
    found = {}
    for field in infotext_utils.paste_fields[tabname]["fields"]:
        if id(field.component) not in indexes:
            continue
        value = field.function(params) if field.function else params.get(field.label)
        if value is None:
            continue
        target_type = type(field.component.value)
        if target_type == type(None):
            continue
        if isinstance(value, dict) and value.get("__type__") == "generic_update":
            value = value.get("value")
        if value is not None and not isinstance(value, target_type):
            value = target_type(value)
        found[indexes[id(field.component)]] = value
    return found


def init_script_args(request, default_script_args, selectable_script, selectable_idx, script_runner, *,
                     input_script_args=None):
    script_args = default_script_args.copy()
    for index, value in (input_script_args or {}).items():
        script_args[index] = value
    if selectable_script:
        script_args[selectable_script.args_from:selectable_script.args_to] = request.get("script_args", [])
        script_args[0] = selectable_idx + 1
    for name, payload in (request.get("alwayson_scripts") or {}).items():
        script = get_script(name, script_runner)
        if script is None:
            raise HTTPException(status_code=422, detail=f"always on script {name} not found")
        if script.alwayson is False:
            raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
        if "args" in payload:
            for idx in range(0, min(script.args_to - script.args_from, len(payload["args"]))):
                script_args[script.args_from + idx] = payload["args"][idx]
    return script_args


def get_script_info():
    res = []
    for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
        res += [script.api_info for script in runner.scripts if script.api_info is not None]
    return res


_PROCESSING_KEYS = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size",
                    "n_iter", "sampler_name", "scheduler", "enable_hr", "hr_scale", "hr_upscaler",
                    "hr_second_pass_steps", "hr_cfg", "denoising_strength", "hr_additional_modules", "hr_prompt",
                    "hr_negative_prompt", "subseed", "subseed_strength", "styles"}


def txt2img(request, defaults=None):
    """POST /sdapi/v1/txt2img with a dict request; returns the Processed result."""
    runner = scripts.scripts_txt2img
    defaults = defaults if defaults is not None else init_default_script_args(runner)
    infotext_args = script_args_from_infotext(request.get("infotext"), "txt2img", runner)
    selectable, selectable_idx = get_selectable_script(request.get("script_name"), runner)
    script_args = init_script_args(request, defaults, selectable, selectable_idx, runner, input_script_args=infotext_args)
    unknown = set(request) - _PROCESSING_KEYS - {"alwayson_scripts", "script_args", "script_name", "infotext"}
    if unknown:
        raise HTTPException(status_code=422, detail=f"the stand-in API does not know {sorted(unknown)}")
    kwargs = {k: v for k, v in request.items() if k in _PROCESSING_KEYS}
    kwargs.setdefault("sampler_name", "Euler")
    p = processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **kwargs)
    p.is_api = True
    p.scripts = runner
    if selectable is not None:
        p.script_args = script_args
        return runner.run(p, *p.script_args)
    p.script_args = tuple(script_args)
    return processing.process_images(p)
