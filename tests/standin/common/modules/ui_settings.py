# Mirrors modules/ui_settings.py create_setting_component (Forge main @ dfdcbab6; reForge @ 3b56b268 the same
# for this part): an option without its own component gets a Textbox (str default), Number (int) or Checkbox
# (bool); any other default type raises "bad options item type", which in the real WebUI kills the API thread.
import gradio as gr

from modules.shared import opts


def create_setting_component(key):
    info = opts.data_labels[key]
    t = type(info.default)
    args = info.component_args() if callable(info.component_args) else info.component_args
    if info.component is not None:
        comp = info.component
    elif t == str:
        comp = gr.Textbox
    elif t == int:
        comp = gr.Number
    elif t == bool:
        comp = gr.Checkbox
    else:
        raise Exception(f"bad options item type: {t} for key {key}")
    value = opts.data[key] if key in opts.data else info.default
    return comp(label=info.label, value=value, elem_id=f"setting_{key}", **(args or {}))
