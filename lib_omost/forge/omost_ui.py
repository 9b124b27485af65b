"""The Omost accordion's layout and events, and its Settings section.

Generation parameters come from the declaration (``make``); the chat, LLM settings, editor and preview
are UI only (not script arguments, so the API argument order is the declaration's).
"""

from __future__ import annotations

import base64
import io

from lib_omost.canvas import CanvasError, load_canvas_text, overlay_image
from lib_omost.canvas.cli import format_region_table
from lib_omost.forge import omost_chat
from lib_omost.llm.events import MAX_NEW_TOKENS, TEMPERATURE, TOP_P, SamplingSetting

SECTION = ("omost", "Omost")
DEFAULT_ENDPOINT = "http://127.0.0.1:8080/v1"
PREVIEW_SIDE = 384


def settings_options() -> dict:
    """(default, label) of each install-level option, shown in Settings → Omost."""
    from lib_omost.forge.refdrop_references import DEFAULT_BUDGET_MIB
    from lib_omost.llm import DEFAULT_MODEL
    from lib_omost.llm.events import DEFAULT_MAX_ANSWER_CHARS
    from lib_omost.llm.openai_compat import DEFAULT_READ_TIMEOUT
    return {
        "omost_llm_endpoint": (DEFAULT_ENDPOINT, "Omost: OpenAI-compatible server URL (llama.cpp, Ollama, vLLM ...)"),
        "omost_llm_local_model": (DEFAULT_MODEL, "Omost: local model (Hugging Face name or folder)"),
        "omost_system_prompt": ("", "Omost: system prompt override (empty = the built-in Omost prompt)"),
        "omost_system_prompt_kind": ("omost", "Omost: built-in system prompt: 'omost' (fine-tuned models) or "
                                              "'generic' (other instruction models)"),
        "omost_refdrop_budget_mib": (DEFAULT_BUDGET_MIB, "RefDrop: memory budget of a saved reference (MiB)"),
        # the WebUI's settings page makes a component only for str, int and bool defaults (a float stops it)
        "omost_llm_read_timeout": (int(DEFAULT_READ_TIMEOUT), "Omost: LLM server read timeout (seconds without data "
                                                         "before the answer fails; Stop works at any time)"),
        "omost_llm_max_answer_chars": (DEFAULT_MAX_ANSWER_CHARS, "Omost: answer cap (characters; a longer answer "
                                                                 "is cut there and kept)"),
    }


def add_settings() -> None:
    from modules import shared
    for key, (default, label) in settings_options().items():
        shared.opts.add_option(key, shared.OptionInfo(default, label, section=SECTION))


def _opt(key: str):
    try:
        from modules import shared
        return getattr(shared.opts, key)
    except Exception:       # before Settings exist (tests, API start-up): the declared default
        return settings_options()[key][0]


def llm_choice(values) -> omost_chat.LLMChoice:
    """The accordion's LLM settings (in llm_inputs order) and the two from Settings → Omost."""
    return omost_chat.LLMChoice(*values, read_timeout=_opt("omost_llm_read_timeout"),
                                max_answer_chars=_opt("omost_llm_max_answer_chars"))


def preview(canvas_text: str):
    """(layout preview HTML or no change, region table or the error) for the JSON box's text."""
    import gradio as gr
    try:
        canvas = load_canvas_text(canvas_text).canvas
    except CanvasError as e:
        return gr.update(), f"**Canvas error:** {e}"
    table = format_region_table(canvas)
    return image_html(overlay_image(canvas, PREVIEW_SIDE, PREVIEW_SIDE)), f"```\n{table}\n```"


def image_html(image) -> str:
    """An <img> holding the PNG inline. An image component would save every value through the WebUI's
    temp-file hook, which fails where the WebUI's temp folder does not exist (Forge Neo's default)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img class="omost-layout-preview" alt="Layout preview: colours and region boxes" '
            f'src="data:image/png;base64,{data}">')


def sampling_slider(setting: SamplingSetting):
    """The accordion's slider of an LLM sampling setting: its declared range, step, default and label."""
    import gradio as gr
    return gr.Slider(setting.minimum, setting.maximum, value=setting.default, step=setting.step, label=setting.label)


def _session(session):
    if session is None:
        session = omost_chat.new_session(_opt("omost_system_prompt") or "", _opt("omost_system_prompt_kind") or "omost")
    return session


def build_omost_ui(make, is_img2img: bool) -> None:
    import gradio as gr
    tab = "img2img" if is_img2img else "txt2img"
    state = gr.State(None)
    chatbot = gr.Chatbot(show_label=False, height=440, elem_id=f"omost_{tab}_chatbot")
    message = gr.Textbox(label="Request", lines=2, placeholder="Describe the image, or the change to make")
    with gr.Row():
        send = gr.Button("Send", variant="primary")
        stop = gr.Button("Stop")
        retry = gr.Button("Retry")
        undo = gr.Button("Undo")
        clear = gr.Button("Clear")
    status = gr.Markdown("")
    with gr.Accordion("LLM settings", open=False):
        backend = gr.Radio(list(omost_chat.BACKENDS), value=omost_chat.SERVER, label="Backend")
        endpoint = gr.Textbox(label="Server URL", value=_opt("omost_llm_endpoint"))
        model_name = gr.Textbox(label="Server model (empty: the first model the server lists)")
        api_key = gr.Textbox(label="API key (never saved, logged or written to images)", type="password")
        local_model = gr.Textbox(label="Local model (Hugging Face name or folder)",
                                 value=_opt("omost_llm_local_model"), visible=False)
        trust = gr.Checkbox(False, label="trust_remote_code (runs code shipped with the model; phi-3 on "
                                         "some transformers versions)", visible=False)
        with gr.Row():
            temperature = sampling_slider(TEMPERATURE)
            top_p = sampling_slider(TOP_P)
        with gr.Row():
            max_tokens = sampling_slider(MAX_NEW_TOKENS)
            llm_seed = gr.Number(-1, label="LLM seed (-1 = random)", precision=0)
        unload = gr.Button("Unload the local model", visible=False)
    with gr.Row():
        with gr.Column(scale=3):
            canvas = make("canvas", elem_id=f"omost_{tab}_canvas_json", lines=8, max_lines=30)
            gr.HTML('<div class="omost-canvas-editor-mount"></div>', elem_id=f"omost_{tab}_canvas_editor")
            with gr.Row():
                example = gr.Button("Load the example canvas")
                to_chat = gr.Button("Send edited canvas to the chat")
        with gr.Column(scale=2):
            first_image, first_table = preview(omost_chat.example_json_text())
            image = gr.HTML(first_image, elem_id=f"omost_{tab}_layout")
            regions = gr.Markdown(first_table)
    with gr.Row():
        make("method")
        make("strength")
        make("end_percent")
    with gr.Row():
        make("prompt_box")
        make("hires_regions")
        make("initial_latent")

    llm_inputs = [backend, endpoint, model_name, api_key, local_model, trust, temperature, top_p, max_tokens, llm_seed]
    server_only, local_only = [endpoint, model_name, api_key], [local_model, trust, unload]

    def show_backend(choice):
        server = choice == omost_chat.SERVER
        return [gr.update(visible=server)] * len(server_only) + [gr.update(visible=not server)] * len(local_only)

    def with_preview(updates):
        """Add the layout preview to a stream of (pairs, canvas text, status), rendered when the text changes
        (Gradio does not reliably fire the JSON box's change event for updates made by another event)."""
        last, shown = None, (gr.update(), gr.update())
        for pairs, text, line in updates:
            if text != last:
                last, shown = text, preview(text)
            yield pairs, text, line, *shown

    def chat(request, session, *args):
        session = _session(session)
        llm = llm_choice(args[:-1])
        for out in with_preview(omost_chat.stream_answer(session, llm, request, args[-1])):
            yield *out, session, ""

    def chat_retry(session, *args):
        session = _session(session)
        for out in with_preview(omost_chat.stream_answer(session, llm_choice(args[:-1]), None, args[-1])):
            yield *out, session

    def stop_chat(session):
        if session is not None:
            session.stop.set()
        return "stopping..."

    def undo_turn(session, text):
        session = _session(session)
        return *next(with_preview([omost_chat.undo(session, text)])), session

    def load_example():
        text = omost_chat.example_json_text()
        return text, *preview(text)

    def clear_chat(session):
        session = _session(session)
        pairs, line = omost_chat.clear(session)
        return pairs, line, session

    def send_canvas(session, text):
        session = _session(session)
        pairs, line = omost_chat.canvas_to_chat(session, text)
        return pairs, line, session

    def unload_model():
        from lib_omost.llm import unload_model as unload
        return "the local model was unloaded" if unload() else "no local model was loaded"

    shown = [chatbot, canvas, status, image, regions]
    send.click(fn=chat, inputs=[message, state, *llm_inputs, canvas], outputs=[*shown, state, message])
    message.submit(fn=chat, inputs=[message, state, *llm_inputs, canvas], outputs=[*shown, state, message])
    retry.click(fn=chat_retry, inputs=[state, *llm_inputs, canvas], outputs=[*shown, state])
    stop.click(fn=stop_chat, inputs=[state], outputs=[status], queue=False)
    undo.click(fn=undo_turn, inputs=[state, canvas], outputs=[*shown, state])
    clear.click(fn=clear_chat, inputs=[state], outputs=[chatbot, status, state])
    to_chat.click(fn=send_canvas, inputs=[state, canvas], outputs=[chatbot, status, state])
    example.click(fn=load_example, inputs=[], outputs=[canvas, image, regions])
    unload.click(fn=unload_model, inputs=[], outputs=[status])
    canvas.change(fn=preview, inputs=[canvas], outputs=[image, regions], show_progress=False)
    backend.change(fn=show_backend, inputs=[backend], outputs=[*server_only, *local_only], show_progress=False)

