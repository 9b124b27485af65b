"""Prints the theme stylesheet (the :root / .dark CSS variables) that a Gradio package serves, for the WebUI's theme.

Usage: python -I gradio_theme_css.py <folder that holds the gradio package>

Runs Gradio's own gradio/themes code (Gradio 3.41 or 4.x, an installed package or one unpacked from a wheel)
without importing the rest of Gradio: the few modules gradio/themes imports for uploading themes to the Hub
are stubbed, and `gradio` is an empty package pointing at the given folder. Run it in a fresh process (-I):
it fills sys.modules with stubs. The theme arguments are the WebUI's "Default" theme
(modules/shared_gradio_themes.py: gr.themes.Default with these fonts).
"""

import sys
import types
from pathlib import Path


def stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def main(root: Path) -> str:
    stub("huggingface_hub", CommitOperationAdd=object, hf_api=types.SimpleNamespace(SpaceInfo=object))
    stub("requests")
    stub("semantic_version", Version=object)
    stub("gradio_client")
    stub("gradio_client.documentation", document=lambda *a, **k: (lambda obj: obj),
         set_documentation_group=lambda *a, **k: None)
    package = stub("gradio")
    package.__path__ = [str(root / "gradio")]
    from gradio.themes.default import Default  # noqa: E402 (after the stubs)

    theme = Default(font=["Source Sans Pro", "ui-sans-serif", "system-ui", "sans-serif"],
                    font_mono=["IBM Plex Mono", "ui-monospace", "Consolas", "monospace"])
    return theme._get_theme_css()


if __name__ == "__main__":
    sys.stdout.write(main(Path(sys.argv[1])))
