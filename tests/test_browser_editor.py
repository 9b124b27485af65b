"""Runs the canvas editor's browser tests (tests/browser/editor.test.mjs, node:test + headless Chromium).

They need node, Debian's chromium at /usr/bin/chromium and `npm ci --prefix tests/browser` (playwright-core).
Outside CI (the CI environment variable unset) a missing piece skips this test with the reason; in CI a missing
piece is a failure, so the browser tests can never silently not run there.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path(os.environ.get("OMOST_CHROMIUM", "/usr/bin/chromium"))
INSTALL_HINT = "apt-get install -y chromium && npm ci --prefix tests/browser"
TIMEOUT_S = 300


def missing_requirements() -> list[str]:
    """What the browser tests need but this machine lacks."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (nodejs >= 20) is not on PATH")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} does not exist")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        missing.append("tests/browser/node_modules/playwright-core is not installed")
    return missing


def require_browser():
    """Skips (outside CI) or fails (in CI) when this machine cannot run the browser tests."""
    missing = missing_requirements()
    if missing:
        reason = "browser tests cannot run: " + "; ".join(missing) + f" (install: {INSTALL_HINT})"
        if os.environ.get("CI"):
            pytest.fail(reason + " [CI is set, so this is a failure]")
        pytest.skip(reason)


def run_node_tests(test_file: str, extra_env: dict | None = None) -> str:
    """Runs `node --test` on one file of tests/browser; fails unless at least one test ran and every test passed."""
    try:
        result = subprocess.run(
            ["node", "--test", "--test-reporter=spec", test_file],
            cwd=BROWSER_DIR,
            env={**os.environ, "OMOST_CHROMIUM": str(CHROMIUM), "NO_COLOR": "1", **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the browser tests did not finish in {TIMEOUT_S} s:\n{exc.stdout or ''}\n{exc.stderr or ''}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test exited with {result.returncode}:\n{output}"
    counts = {k: int(v) for k, v in re.findall(r"^ℹ (tests|pass|fail|skipped|cancelled|todo) (\d+)$", output, re.M)}
    assert counts.get("tests", 0) > 0, f"no browser test ran:\n{output}"
    assert counts.get("pass") == counts["tests"], f"not every browser test passed ({counts}):\n{output}"
    return output


def test_canvas_editor_in_headless_chromium():
    require_browser()
    run_node_tests("editor.test.mjs")
