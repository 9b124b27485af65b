"""The README's one install command, as a new user runs it: `pip install .` into a FRESH virtual environment
(no torch, nothing preinstalled), then the `omost` command. A dependency missing from pyproject.toml, a file
left out of the package or an import of torch on the layout/server path fails here.

The fresh venv is made without pip (`venv --without-pip`, instant) and this venv's pip installs into it
(`pip --python`); the build runs in pip's usual isolated build environment. The source is copied first, so
setuptools' build/ and egg-info folders do not land in the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from lib_omost import __version__
from lib_omost.canvas import canvas_to_json, example_canvas
from lib_omost.llm.conversation import canvas_answer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "dragon_battle.response.md"
PACKAGED = ("pyproject.toml", "README.md", "lib_omost")  # what `pip install .` reads


def _bare_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A fresh venv with the package installed by pip from a copy of the repository; its bin folder."""
    base = tmp_path_factory.mktemp("install")
    source = base / "sd-forge-omost"
    source.mkdir()
    for name in PACKAGED:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, source / name)
    python = _bare_venv(base / "venv")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                           "--disable-pip-version-check", str(source)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install . failed:\n{done.stdout}\n{done.stderr}"
    return python.parent


def omost(bin_dir: Path, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(bin_dir / "omost"), *args], input=stdin, capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def in_fresh(bin_dir: Path, code: str) -> str:
    done = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=bin_dir, check=True)
    return done.stdout.strip()


def test_the_package_holds_only_lib_omost_and_needs_no_torch(fresh):
    files = json.loads(in_fresh(fresh, "import importlib.metadata as m, json; "
                                       "print(json.dumps([str(f) for f in m.files('sd-forge-omost')]))"))
    tops = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert tops == {"lib_omost", f"sd_forge_omost-{__version__}.dist-info"}, tops
    assert "lib_omost/canvas/cli.py" in files and "lib_omost/llm/openai_compat.py" in files
    assert in_fresh(fresh, "import importlib.util as u; print([m for m in ('torch', 'transformers', 'gradio') "
                           "if u.find_spec(m)])") == "[]"


def test_version_and_help(fresh):
    version = omost(fresh, "--version")
    assert version.returncode == 0 and version.stdout == f"omost (sd-forge-omost) {__version__}\n"
    top = omost(fresh, "--help")
    assert top.returncode == 0 and "layout [INPUT]" in top.stdout and "chat PROMPT" in top.stdout
    for command in ("layout", "chat"):
        done = omost(fresh, command, "--help")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: omost {command} ")
        examples = done.stdout.split("examples:\n", 1)[1]
        assert f"  omost {command} " in examples


def test_layout_prints_the_example_and_writes_files(fresh, tmp_path):
    done = omost(fresh, "layout", "--png", "layout.png", "--json", "canvas.json", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("built-in example canvas\n") and "A golden retriever lying down." in done.stdout
    assert (tmp_path / "layout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "canvas.json").read_text()) == canvas_to_json(example_canvas())


def test_layout_reads_stdin(fresh, tmp_path):
    done = omost(fresh, "layout", "-", stdin=SAMPLE.read_text(encoding="utf-8"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("canvas from stdin\n"), done.stderr
    bad = omost(fresh, "layout", "-", stdin="canvas = Canvas()\nexec('1')\n", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: stdin: line 2: calling exec() is not allowed")


def test_chat_against_a_server_runs_without_torch(fresh, tmp_path):
    from test_llm_openai import Server

    canvas = example_canvas()
    answer = canvas_answer(canvas)
    server = Server()
    server.script = lambda h, body: h.sse([_chunk(answer[i:i + 200]) for i in range(0, len(answer), 200)]
                                          + [_chunk(None, "stop"), b"data: [DONE]\n\n"])
    try:
        done = omost(fresh, "chat", "a dog", "--endpoint", server.url, "--json", "c.json", "--quiet", cwd=tmp_path)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert "[omost] finished (stop)" in done.stderr and "wrote c.json" in done.stdout
    assert json.loads((tmp_path / "c.json").read_text()) == canvas_to_json(canvas)


def _chunk(content, finish=None) -> bytes:
    delta = {} if content is None else {"content": content}
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() \
        + b"\n\n"


def test_a_local_model_without_torch_names_the_extra(fresh, tmp_path):
    done = omost(fresh, "chat", "a dog", "--model-path", str(tmp_path / "model"), cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: a local model (--model-path) needs torch, which is not installed. Install the "
                           "[local] extra: pip install '.[local]' in the sd-forge-omost folder (pipx: pipx install "
                           "--force '.[local]'); or use an OpenAI-compatible server (--endpoint)\n")


def test_a_clone_without_the_dependencies_says_what_to_install(tmp_path):
    """`python -m lib_omost layout` from the repository folder in a Python without numpy/Pillow (the first thing
    a new user tried): one line naming the install command, no traceback."""
    python = _bare_venv(tmp_path / "bare")
    done = subprocess.run([str(python), "-m", "lib_omost", "layout"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: the canvas needs numpy, which is not installed. Install the package: pip install . "
                           "in the sd-forge-omost folder (pipx: pipx install .)\n")


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`omost layout | head -1`: the closed pipe ends the command with 141 (as a shell reports SIGPIPE), no
    traceback. Here the pipe's read end is closed before the command starts, so its first write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "lib_omost", "layout"], cwd=ROOT, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""
