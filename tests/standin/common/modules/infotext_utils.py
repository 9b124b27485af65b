# Mirrors modules/infotext_utils.py (Forge main @ dfdcbab6; reForge @ 3b56b268, same for these parts):
# quote/unquote (JSON-quote values containing , : or newline), parse_generation_parameters (prompt lines,
# "Negative prompt:" lines, the last line parsed as "key: value" pairs only when it has at least 3 pairs,
# "WxH" values split into key-1 / key-2, then the defaults the real parser adds), PasteField,
# add_paste_fields, and the paste logic of connect_paste: for each (component, key) a callable key gets
# params, a string key reads params[key]; None leaves the component unchanged; otherwise the value is
# converted to type(component.value) ("False" -> False for bools, float for ints).
# connect_paste_params_buttons' "Send to" copy only carries fields whose key is a STRING in
# paste_field_names: fields registered with a callable never travel (send_to_values reproduces that).
import json
import re

import gradio as gr

from modules import errors, script_callbacks

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
type_of_gr_update = type(gr.update())


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


paste_fields: dict = {}


def reset():
    paste_fields.clear()


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    if fields:
        for i in range(len(fields)):
            if not isinstance(fields[i], PasteField):
                fields[i] = PasteField(*fields[i])
    paste_fields[tabname] = {"init_img": init_img, "fields": fields, "override_settings_component": override_settings_component}


_DEFAULTS = {
    "Clip skip": "1", "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler", "Hires checkpoint": "Use same checkpoint", "Hires prompt": "",
    "Hires negative prompt": "", "Mask mode": "Inpaint masked", "Masked content": "original",
    "Inpaint area": "Whole picture", "Masked area padding": 32, "RNG": "GPU", "Schedule type": "Automatic",
    "Schedule max sigma": 0, "Schedule min sigma": 0, "Schedule rho": 0,
}


def parse_generation_parameters(x: str, skip_fields=None):
    res, prompt, negative_prompt, done_with_prompt = {}, "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v) if isinstance(v, str) else None
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    for key, value in _DEFAULTS.items():
        res.setdefault(key, value)
    for key in skip_fields or []:
        res.pop(key, None)
    return res


def paste_updates(fields, params):
    """What connect_paste's paste_func returns for these (component, key) pairs: one gr.update per field."""
    res = []
    for output, key in fields:
        if callable(key):
            try:
                v = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                v = None
        else:
            v = params.get(key, None)
        if v is None:
            res.append(gr.update())
        elif isinstance(v, type_of_gr_update):
            res.append(v)
        else:
            try:
                valtype = type(output.value)
                if valtype == bool and v == "False":
                    val = False
                elif valtype == int:
                    val = float(v)
                else:
                    val = valtype(v)
                res.append(gr.update(value=val))
            except Exception:
                res.append(gr.update())
    return res


def paste_infotext(infotext, fields):
    """Parse ``infotext`` and return {component: new value} for the fields the paste would change."""
    params = parse_generation_parameters(infotext)
    script_callbacks.infotext_pasted_callback(infotext, params)
    changed = {}
    for (component, _), update in zip(fields, paste_updates(fields, params)):
        if "value" in update:
            changed[component] = update["value"]
    return changed


def send_to_values(source_fields, target_fields, paste_field_names, values):
    """The "Send to <tab>" copy: values of source fields whose key is in paste_field_names, by position."""
    names = ["Prompt", "Negative prompt", "Steps", "Face restoration", "Seed"] + list(paste_field_names)
    inputs = [field for field, name in source_fields if isinstance(name, str) and name in names]
    outputs = [field for field, name in target_fields if isinstance(name, str) and name in names]
    return {out: values[inp] for inp, out in zip(inputs, outputs) if inp in values}
