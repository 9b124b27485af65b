"""The canvas editor under Gradio's real stylesheets (tests/browser/gradio_css.test.mjs, headless Chromium).

Forge main and Neo run Gradio 4.40.0 (installed here by requirements-dev.txt); reForge and Forge Classic run
Gradio 3.41.2, which is not installed: its wheel is fetched from PyPI once (`pip download`, no dependencies)
into tests/.cache/ (git-ignored), checked against its sha256, and only its stylesheets and theme code are
unpacked there. No Gradio file is ever committed. For each version this writes what the page needs into
tests/.cache/gradio-css/: the theme's CSS variables (tests/browser/gradio_theme_css.py runs Gradio's own theme
code) and the list of the package's stylesheets, then runs the node tests with OMOST_GRADIO_CSS pointing there.

Outside CI (the CI environment variable unset) a missing piece (node, chromium, playwright-core, or the wheel
when PyPI cannot be reached) skips this test with the reason; in CI it is a failure.
Set OMOST_WEBUI_STYLE to a WebUI's own style.css to load it as the WebUI does (before the extension's).
"""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_browser_editor import BROWSER_DIR, require_browser, run_node_tests

CACHE = Path(__file__).resolve().parent / ".cache"
GRADIO3 = "3.41.2"
GRADIO3_WHEEL = f"gradio-{GRADIO3}-py3-none-any.whl"
GRADIO3_SHA256 = "ea5c7b2996156d9e1587505e2fd988ed84f5ff29725ebfce663ecee4872edcd3"
ASSETS = "gradio/templates/frontend/assets"


def skip_or_fail(reason: str):
    if os.environ.get("CI"):
        pytest.fail(reason + " [CI is set, so this is a failure]")
    pytest.skip(reason)


def theme_css(package_root: Path) -> str:
    result = subprocess.run([sys.executable, "-I", str(BROWSER_DIR / "gradio_theme_css.py"), str(package_root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"Gradio's theme code failed under {package_root}:\n{result.stderr}"
    assert "--button-secondary-background-fill" in result.stdout, result.stdout[:2000]
    return result.stdout


def gradio4() -> tuple[str, Path]:
    """The installed Gradio (4.40.0 from requirements-dev.txt): its version and the folder holding `gradio/`."""
    spec = importlib.util.find_spec("gradio")  # finds the package without importing it (seconds saved)
    if spec is None or not spec.submodule_search_locations:
        skip_or_fail("gradio is not installed (pip install -r requirements-dev.txt)")
    version = importlib.metadata.version("gradio")
    assert version.startswith("4."), f"requirements-dev.txt pins Gradio 4.40.0 (Forge main); found {version}"
    return version, Path(spec.submodule_search_locations[0]).parent


def gradio3() -> Path:
    """Gradio 3.41.2's stylesheets and theme code, unpacked from its PyPI wheel into tests/.cache/."""
    root = CACHE / f"gradio-{GRADIO3}"
    done = root / ".complete"
    if done.exists():
        return root
    wheel = CACHE / "wheels" / GRADIO3_WHEEL
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"gradio=={GRADIO3}", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", str(wheel.parent)],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not wheel.exists():
            skip_or_fail(f"could not download {GRADIO3_WHEEL} from PyPI (pip download exited {result.returncode}):\n"
                         f"{result.stdout}{result.stderr}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != GRADIO3_SHA256:
        wheel.unlink()
        pytest.fail(f"{wheel} has sha256 {digest}, expected {GRADIO3_SHA256} (deleted; the next run downloads it again)")
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if (name.startswith(ASSETS + "/") and name.endswith(".css")) or \
                    (name.startswith("gradio/themes/") and name.endswith(".py")):
                zf.extract(name, root)
    done.write_text(digest + "\n")
    return root


def stylesheet_set(version: str, package_root: Path, out: Path) -> dict:
    """What the page loads for one Gradio version: the theme variables and every stylesheet of the package."""
    out.mkdir(parents=True, exist_ok=True)
    theme = out / f"theme-{version}.css"
    theme.write_text(theme_css(package_root))
    css = sorted(str(p) for p in (package_root / ASSETS).glob("*.css"))
    assert css, f"no stylesheet under {package_root / ASSETS}"
    return {"version": version, "container": "gradio-container-" + version.replace(".", "-"),
            "theme": str(theme), "css": css}


def test_canvas_editor_under_gradio_stylesheets():
    require_browser()
    out = CACHE / "gradio-css"
    version4, root4 = gradio4()
    sets = [stylesheet_set(version4, root4, out), stylesheet_set(GRADIO3, gradio3(), out)]
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps(sets, indent=1))
    run_node_tests("gradio_css.test.mjs", {"OMOST_GRADIO_CSS": str(manifest)})
