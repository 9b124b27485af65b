"""``python -m lib_omost layout``: table, map, files, and one-line errors."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lib_omost.canvas import canvas_from_json, canvas_to_json, color_preview, example_canvas, parse_answer
from lib_omost.canvas.cli import format_region_map, format_region_table, main, write_canvas_outputs

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
SAMPLE_PATH = DATA / "dragon_battle.response.md"


def test_no_input_shows_the_built_in_example(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("built-in example canvas\n")
    assert format_region_table(example_canvas()) in out and format_region_map(example_canvas()) in out


def test_table_lists_global_and_regions_in_program_order():
    canvas = parse_answer(SAMPLE_PATH.read_text(encoding="utf-8")).canvas
    lines = format_region_table(canvas).splitlines()
    assert lines[0].split()[:3] == ["#", "distance", "rect"]
    assert lines[1].startswith("G ") and "darkslategray" in lines[1] and "whole canvas" in lines[1]
    assert lines[2].split()[:6] == ["1", "5", "[15,", "75,", "0,", "60]"]
    assert "on the left, no offset, a large horizontal area" in lines[2] and lines[2].endswith("fierce warriors.")
    assert len(lines) == 6
    canvas.regions[0].location = None
    assert "free rectangle" in format_region_table(canvas).splitlines()[2]


def test_map_shows_the_nearest_region_per_cell():
    canvas = parse_answer(SAMPLE_PATH.read_text(encoding="utf-8")).canvas
    rows = format_region_map(canvas, cols=9, rows=9).splitlines()
    assert rows[0] == rows[-1] == "+---------+"
    grid = [row[1:-1] for row in rows[1:-1]]
    # cell centres 5, 15, ..., 85: the sky (3, farthest) only where nothing nearer covers it
    assert grid[0] == "333333333"
    # row centre 25: warriors (distance 5, columns < 60) over the dragon (7, columns 10-80), sky at the edge
    assert grid[2] == "111111223"
    assert grid[8] == "444444444"  # battlefield at the bottom


def test_files_are_written_and_read_back(tmp_path, capsys):
    png, ours, comfy, code = (tmp_path / n for n in ("l.png", "c.json", "comfy.json", "c.py"))
    argv = [str(SAMPLE_PATH), "--png", str(png), "--json", str(ours), "--comfyui", str(comfy), "--code", str(code),
            "--width", "96", "--height", "64"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(f"wrote {p}" in out for p in (png, ours, comfy, code))
    canvas = parse_answer(SAMPLE_PATH.read_text(encoding="utf-8")).canvas
    assert canvas_from_json(json.loads(ours.read_text(encoding="utf-8"))) == canvas
    comfy_items = json.loads(comfy.read_text(encoding="utf-8"))
    assert [item["rect"] for item in comfy_items] == [[0, 90, 0, 90], [0, 45, 0, 90], [10, 80, 10, 80],
                                                      [15, 75, 0, 60], [45, 90, 0, 90]]  # global, far → near
    assert parse_answer(code.read_text(encoding="utf-8")).canvas == canvas
    sheet = Image.open(png)
    assert sheet.size == (2 * 96 + 8, 64)
    assert np.array_equal(np.asarray(sheet.convert("RGB"))[:, :96], np.asarray(color_preview(canvas, 96, 64)))
    # the JSON we wrote is itself valid INPUT
    assert main([str(ours)]) == 0 and main([str(comfy)]) == 0


def test_stdin_input(monkeypatch, capsys):
    text = json.dumps(canvas_to_json(example_canvas()))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))
    assert main(["-"]) == 0
    assert "canvas from stdin" in capsys.readouterr().out


def test_errors_are_one_line_with_what_and_where(tmp_path, capsys):
    bad = tmp_path / "bad.md"
    bad.write_text("```python\ncanvas = Canvas()\nimport os\n```\n", encoding="utf-8")
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {bad}: line 3: imports are not allowed; only canvas = Canvas(), " \
                  "canvas.set_global_description(...) and canvas.add_local_description(...)\n"
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "omost-canvas",\n "global": {"color": "red"},\n "regions": [1]}', encoding="utf-8")
    assert main([str(broken)]) == 1
    assert capsys.readouterr().err == f"error: {broken}: regions[0]: must be an object with rect, distance, " \
                                      "color, ..., got int\n"
    assert main([str(tmp_path / "missing.md")]) == 1
    assert capsys.readouterr().err == f"error: cannot read {tmp_path / 'missing.md'}: No such file or directory\n"
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main([str(binary)]) == 1
    assert "not UTF-8 text" in capsys.readouterr().err
    assert main([str(SAMPLE_PATH), "--png", str(tmp_path / "no" / "dir.png")]) == 1
    assert "error: cannot write" in capsys.readouterr().err


def test_truncated_answer_is_shown_with_a_note(tmp_path, capsys):
    cut = tmp_path / "cut.md"
    text = SAMPLE_PATH.read_text(encoding="utf-8")
    cut.write_text(text[:text.index("location='in the center'")], encoding="utf-8")
    assert main([str(cut)]) == 0
    out = capsys.readouterr().out
    assert "note: the answer was cut inside the statement starting at line 45" in out


def test_module_entry_point_runs_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "lib_omost", "layout"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "A golden retriever lying down." in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "lib_omost", "layout", "-"], cwd=tmp_path, env=env,
                         input="canvas = Canvas()\nexec('1')\n", capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr == "error: stdin: line 2: calling exec() is not allowed; only canvas = Canvas(), " \
                         "canvas.set_global_description(...) and canvas.add_local_description(...)\n"


def test_write_canvas_outputs_returns_only_what_it_wrote(tmp_path):
    assert write_canvas_outputs(example_canvas()) == []
    path = str(tmp_path / "only.json")
    assert write_canvas_outputs(example_canvas(), json_path=path) == [path]
