# Mirrors modules/ui_components.py InputAccordion:
#   Forge main @ dfdcbab6: InputAccordion(value=None, **kwargs) is a FUNCTION returning
#     InputAccordionImpl(value=value, setup=True, **kwargs), a gr.Checkbox subclass (hidden checkbox
#     "<id>-checkbox" + gr.Accordion "<id>" with elem_classes ["input-accordion"], open=value).
#   reForge @ 3b56b268: InputAccordion(value, **kwargs) is the gr.Checkbox subclass itself; repeated
#     elem_ids get "-1", "-2", ... suffixes (the id set is reset when scripts unload).
# Both are used as `with InputAccordion(False, label=...) as enabled:` and arrive as a bool.
# (The real classes pass _js= to .change(), which only Forge's gradio repair maps to js=; here js= is used.)
from functools import wraps

import gradio as gr

from modules import gradio_extensions  # noqa: F401 (class-creation patches, before the subclass below)
import standin_flavour

_JS = 'function(checked){ inputAccordionChecked("%s", checked); }'


class FormRow(gr.Row):
    webui_do_not_create_gradio_pyi_thank_you = True


class FormGroup(gr.Group):
    webui_do_not_create_gradio_pyi_thank_you = True


def _accordion_kwargs(kwargs, accordion_id, value):
    return {**kwargs, "elem_id": accordion_id, "label": kwargs.get("label", "Accordion"),
            "elem_classes": ["input-accordion"], "open": value}


class _AccordionMixin:
    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


if not standin_flavour.INPUT_ACCORDION_IS_CLASS:
    class InputAccordionImpl(_AccordionMixin, gr.Checkbox):
        webui_do_not_create_gradio_pyi_thank_you = True
        global_index = 0

        @wraps(gr.Checkbox.__init__)
        def __init__(self, value=None, setup=False, **kwargs):
            if not setup:
                super().__init__(value=value, **kwargs)
                return
            self.accordion_id = kwargs.get("elem_id")
            if self.accordion_id is None:
                self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
                InputAccordionImpl.global_index += 1
            super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
            self.change(fn=None, js=_JS % self.accordion_id, inputs=[self])
            self.accordion = gr.Accordion(**_accordion_kwargs(kwargs, self.accordion_id, value))

    def InputAccordion(value=None, **kwargs):
        return InputAccordionImpl(value=value, setup=True, **kwargs)

else:
    class InputAccordion(_AccordionMixin, gr.Checkbox):
        webui_do_not_create_gradio_pyi_thank_you = True
        accordion_id_set = set()
        global_index = 0

        def __init__(self, value, **kwargs):
            self.accordion_id = kwargs.get("elem_id")
            if self.accordion_id is None:
                self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
                InputAccordion.global_index += 1
            if not InputAccordion.accordion_id_set:
                from modules import script_callbacks
                script_callbacks.on_script_unloaded(InputAccordion.reset)
            if self.accordion_id in InputAccordion.accordion_id_set:
                count = 1
                while f"{self.accordion_id}-{count}" in InputAccordion.accordion_id_set:
                    count += 1
                self.accordion_id = f"{self.accordion_id}-{count}"
            InputAccordion.accordion_id_set.add(self.accordion_id)
            super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
            self.change(fn=None, js=_JS % self.accordion_id, inputs=[self])
            self.accordion = gr.Accordion(**_accordion_kwargs(kwargs, self.accordion_id, value))

        @classmethod
        def reset(cls):
            cls.global_index = 0
            cls.accordion_id_set.clear()
