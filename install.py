"""Run by the WebUI launcher at every start (in its own process, WebUI root on PYTHONPATH).

Installs only what the WebUI lacks and never a different version of a package the WebUI pins.
Everything the extension needs (torch, numpy, Pillow, gradio, transformers, safetensors, httpx) ships
with Forge and reForge; the one optional extra is bitsandbytes, needed only by the 4-bit / 8-bit Omost
LLMs, and only where it can work (a CUDA GPU on Linux or Windows). Set OMOST_SKIP_BITSANDBYTES=1 to
never install it. Idempotent: a second run finds everything in place and does nothing.
"""

import os
import sys

# Forge main installs this version itself when the GPU allows; the same pin keeps the two from fighting.
BITSANDBYTES = "bitsandbytes==0.45.3"


def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:   # a broken torch is the WebUI's to report, not ours
        return False


def planned_installs(is_installed, has_cuda: bool, platform: str, environ) -> list[tuple[str, str]]:
    """(pip requirement, reason) for each install to run now; empty when nothing is missing."""
    if environ.get("OMOST_SKIP_BITSANDBYTES") == "1" or is_installed("bitsandbytes"):
        return []
    if not has_cuda or not (platform.startswith("linux") or platform.startswith("win")):
        return []
    return [(BITSANDBYTES, "for the 4-bit / 8-bit Omost LLMs")]


def main() -> None:
    import launch
    installs = planned_installs(launch.is_installed, cuda_available(), sys.platform, os.environ)
    if not installs:
        print("[sd-forge-omost] nothing to install")
        return
    for requirement, reason in installs:
        print(f"[sd-forge-omost] installing {requirement} ({reason})")
        try:
            launch.run_pip(f"install {requirement}", f"{requirement} for sd-forge-omost")
        except Exception as e:  # the extension still works without it: say so, do not stop the WebUI
            print(f"[sd-forge-omost] could not install {requirement}: {e}. The 4-bit/8-bit Omost models will "
                  "not load; the full-precision ones and OpenAI-compatible servers still work.")


main()
