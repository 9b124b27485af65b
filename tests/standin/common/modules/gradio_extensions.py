# Mirrors the two class-creation patches of Forge main modules/gradio_extensions.py @ dfdcbab6 that the
# stand-in needs: gradio's ComponentMeta must not write a .pyi file next to a webui module that subclasses a
# component (classes marked webui_do_not_create_gradio_pyi_thank_you), and `updateable` is disabled.
# Not reproduced (so the stand-in is stricter than Forge main): the `repair` wrapper that drops unknown
# constructor kwargs with a warning and maps `_js=` to `js=` / `source=` to `sources=` on events.
import gradio
import gradio.component_meta

_original_create_or_modify_pyi = getattr(gradio.component_meta.create_or_modify_pyi, "standin_original",
                                         gradio.component_meta.create_or_modify_pyi)


def create_or_modify_pyi(component_class, class_name, events):
    if hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
        return
    _original_create_or_modify_pyi(component_class, class_name, events)


create_or_modify_pyi.standin_original = _original_create_or_modify_pyi
gradio.component_meta.create_or_modify_pyi = create_or_modify_pyi
gradio.component_meta.updateable = lambda x: x
