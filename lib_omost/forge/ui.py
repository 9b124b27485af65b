"""WebUI surfaces generated from a feature's parameter declaration: components, paste-back, xyz axes.

The components come out in declaration order after the accordion's enable flag, which is the API
argument order; the paste-back table and the xyz axes are built from the same list.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from lib_omost.params import BOOL, CHOICE, FLOAT, INT, JSON, Feature, Param, override

log = logging.getLogger("sd-forge-omost")


def elem_id(feature: Feature, name: str, is_img2img: bool) -> str:
    tab = "img2img" if is_img2img else "txt2img"
    return f"omost_{tab}_{feature.key}_{name}"


def component(param: Param, elem_id: str, **extra):
    """One gradio input for a parameter, with its default, range or choices (``extra`` overrides kwargs)."""
    import gradio as gr
    common = dict(label=param.label, value=param.default, elem_id=elem_id)
    if param.help:
        common["info"] = param.help
    if param.kind == BOOL:
        return gr.Checkbox(**common, **extra)
    if param.kind in (INT, FLOAT):
        step = param.step if param.step is not None else (1 if param.kind == INT else 0.01)
        return gr.Slider(minimum=param.minimum, maximum=param.maximum, step=step, **{**common, **extra})
    if param.kind == CHOICE:
        return gr.Dropdown(choices=list(param.choices), **{**common, **extra})
    return gr.Textbox(**{"lines": 6 if param.kind == JSON else 1, **common, **extra})


def feature_components(feature: Feature, is_img2img: bool, build: Callable | None = None) -> tuple[Any, dict]:
    """The accordion (enable flag) and {param name: component}.

    ``build(make, is_img2img)`` may arrange the components itself (rows, extra buttons); it must call
    ``make(name, **gradio_kwargs)`` once per parameter. Without it the components are stacked in declaration
    order. If ``build`` fails, the error is shown in the accordion and logged, and the parameters it did not
    make are stacked after it: the script still returns every component, so the WebUI's argument positions
    of every other script stay right.
    """
    import gradio as gr
    from modules.ui_components import InputAccordion
    made: dict[str, Any] = {}
    defaults = feature.defaults()

    def make(name: str, **extra):
        param = feature.by_name[name]
        made[name] = component(param, **{"elem_id": elem_id(feature, name, is_img2img),
                                         "visible": feature.in_use(param, defaults), **extra})
        return made[name]

    with InputAccordion(False, label=feature.title, elem_id=elem_id(feature, "enabled", is_img2img)) as enabled:
        if build is not None:
            try:
                build(make, is_img2img)
            except Exception as e:      # a UI that cannot be built must not take the WebUI down with it
                log.exception("%s: building the accordion failed", feature.title)
                gr.Markdown(f"**{feature.title}: part of this accordion could not be built** ({e}); "
                            "the console has the details.")
        for param in feature.params:
            if param.name not in made:
                make(param.name)
    show_what_is_used(feature, made)
    return enabled, made


def show_what_is_used(feature: Feature, components: dict) -> None:
    """Hide the controls the chosen modes do not use (``Param.when``), following every control they depend on."""
    dependents = [p for p in feature.params if p.when]
    controls = sorted({name for p in dependents for name, _ in p.when})
    if not dependents:
        return

    def visibility(*control_values):
        import gradio as gr
        values = dict(feature.defaults())
        for name, value in zip(controls, control_values):
            try:
                values[name] = feature.by_name[name].coerce(value)
            except ValueError:
                pass            # a value being typed: keep the default's view until it is valid
        return [gr.update(visible=feature.in_use(p, values)) for p in dependents]

    inputs = [components[name] for name in controls]
    outputs = [components[p.name] for p in dependents]
    for control in inputs:
        control.change(fn=visibility, inputs=inputs, outputs=outputs, show_progress=False)


def paste_table(feature: Feature, enabled, components: dict) -> list[tuple[Any, Any]]:
    """(component, key) pairs for ``Script.infotext_fields``.

    The enable flag reads a callable, so pasting a PNG made without this accordion turns it off; the
    parameters use their infotext keys as strings, which is what the WebUI's "Send to" buttons copy
    (they skip callable keys) and what its paste converts to the component's type.
    """
    table = [(enabled, feature.enabled_in)]
    table += [(components[p.name], feature.infotext_key(p)) for p in feature.params if p.infotext]
    return table


def install_script_ui(script, feature: Feature, is_img2img: bool, build: Callable | None = None) -> list:
    """Build the accordion, set the script's paste-back tables, return the components in API order."""
    enabled, components = feature_components(feature, is_img2img, build)
    script.infotext_fields = paste_table(feature, enabled, components)
    script.paste_field_names = [feature.enabled_key] + [feature.infotext_key(p) for p in feature.params if p.infotext]
    return [enabled, *(components[p.name] for p in feature.params)]


# --- X/Y/Z plot ------------------------------------------------------------------------------------

def find_xyz_module(scripts_data) -> Any | None:
    for data in scripts_data:
        if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid"):
            return data.module
    return None


def axis_options(xyz, feature: Feature) -> list:
    """One AxisOption per sweepable parameter; its values are validated before the grid runs."""
    options = []
    for param in feature.xyz_params():
        kind = {INT: int, FLOAT: float}.get(param.kind, str)

        def apply(p, x, xs, param=param):
            override(p, feature, param, x)

        def confirm(p, xs, param=param):
            for x in xs:
                param.coerce(x)

        choices = None
        if param.kind == CHOICE:
            choices = (lambda param=param: list(param.choices))
        elif param.kind == BOOL:
            choices = (lambda: ["True", "False"])
        options.append(xyz.AxisOption(feature.xyz_label(param), kind, apply, confirm=confirm, choices=choices))
    return options


def register_xyz_axes(features: list[Feature]) -> bool:
    """Append our axes to the X/Y/Z plot script (call from on_before_ui). False when no plot script exists."""
    from modules import scripts
    xyz = find_xyz_module(scripts.scripts_data)
    if xyz is None:
        return False
    existing = {option.label for option in xyz.axis_options}
    for feature in features:
        xyz.axis_options.extend(o for o in axis_options(xyz, feature) if o.label not in existing)
    return True
