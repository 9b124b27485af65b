"""What the command line needs beyond the standard library, and how to get a missing piece.

The installed package (pyproject.toml) brings numpy, Pillow and httpx: enough for `omost layout` and for
`omost chat --endpoint`. A local model (`omost chat --model-path`) needs the `local` extra (torch,
transformers, accelerate). One table here says which piece comes with what, so every "not installed" message
names the same command.
"""

from __future__ import annotations

import importlib.util

# top-level module -> (its pip name, what needs it, the extra that installs it; "" = the package itself)
_NEEDED_BY = {
    "numpy": ("numpy", "the canvas", ""),
    "PIL": ("Pillow", "the canvas", ""),
    "httpx": ("httpx", "the OpenAI-compatible backend (--endpoint)", ""),
    "torch": ("torch", "a local model (--model-path)", "local"),
    "transformers": ("transformers", "a local model (--model-path)", "local"),
    "tokenizers": ("tokenizers", "a local model (--model-path)", "local"),
    "safetensors": ("safetensors", "a local model (--model-path)", "local"),
    "accelerate": ("accelerate", "a local model (--model-path)", "local"),
}


def install_hint(module: str | None) -> str | None:
    """The message for a missing module the command line needs, or None when `module` is not one of them."""
    top = (module or "").split(".")[0]
    if top not in _NEEDED_BY:
        return None
    name, needed_by, extra = _NEEDED_BY[top]
    if extra:
        return (f"{needed_by} needs {name}, which is not installed. Install the [{extra}] extra: "
                f"pip install '.[{extra}]' in the sd-forge-omost folder (pipx: pipx install --force '.[{extra}]'); "
                f"or use an OpenAI-compatible server (--endpoint)")
    return (f"{needed_by} needs {name}, which is not installed. Install the package: pip install . in the "
            f"sd-forge-omost folder (pipx: pipx install .)")


def require(*modules: str) -> None:
    """Raise ModuleNotFoundError (named, so `install_hint` applies) for the first of `modules` not
    installed. Only looks the modules up: nothing is imported."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
