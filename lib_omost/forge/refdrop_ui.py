"""The RefDrop accordion's layout: the declared controls plus reference management (list, refresh, delete)."""

from __future__ import annotations

from lib_omost.attention.refdrop_store import attn1_layers
from lib_omost.features.refdrop import index_table
from lib_omost.forge.refdrop_references import delete_reference, list_references


def layer_index_help() -> str:
    tables = []
    for family, title in (("sd15", "SD1.5 / SD2"), ("sdxl", "SDXL")):
        layers = [layer for layer, _, _ in attn1_layers(family, (64, 64))]
        tables.append(f"**{title}**\n```\n{index_table(layers)}\n```")
    return ("Disabled layers use `group:index` (or `group:first-last`), the index counted inside each group:\n\n"
            + "\n\n".join(tables))


def build_refdrop_ui(make, is_img2img: bool) -> None:
    import gradio as gr
    make("mode")
    make("coefficient")
    reference = make("reference")
    with gr.Row():      # a row of their own: beside the text box they would stretch to its height
        refresh = gr.Button("Refresh list", size="sm")
        delete = gr.Button("Delete reference", size="sm", variant="stop")
    status = gr.Markdown(_listing())
    make("save_percent")
    with gr.Row():
        make("input")
        make("middle")
        make("output")
    make("disabled_layers")
    with gr.Accordion("Layer index tables", open=False):
        gr.Markdown(layer_index_help())
    with gr.Row():
        make("hires_pass")
        make("keep_uncond")
    refresh.click(fn=_listing, inputs=[], outputs=[status])
    delete.click(fn=lambda name: f"{_delete(name)}\n\n{_listing()}", inputs=[reference], outputs=[status])


def _delete(name: str) -> str:
    try:
        return delete_reference(name)
    except ValueError as e:
        return str(e)


def _listing() -> str:
    names = list_references()
    return "Saved references: " + (", ".join(f"`{n}`" for n in names) if names else "none yet (run Save first)")
