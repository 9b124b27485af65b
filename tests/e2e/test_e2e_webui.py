"""End to end against an already running WebUI (Forge main / Neo, reForge / Classic) through its HTTP API.

Builds and starts nothing. Environment:
  OMOST_E2E_URL   base URL of the WebUI API, e.g. http://127.0.0.1:7861 (unset: every test is skipped)
  OMOST_E2E_LOG   path of the server's console log (checked for tracebacks and stage lines; optional)
  OMOST_E2E_REFS  folder of reference images made by the same WebUI WITHOUT this extension
  OMOST_E2E_RECORD=1  record those references (run once with the extension removed), then compare later

Requests are 2 steps at small sizes, so a CPU-only WebUI with a random-weight checkpoint works.
"""

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request

import pytest

URL = os.environ.get("OMOST_E2E_URL", "").rstrip("/")
LOG = os.environ.get("OMOST_E2E_LOG")
REFS = os.environ.get("OMOST_E2E_REFS")
RECORD = os.environ.get("OMOST_E2E_RECORD") == "1"

pytestmark = pytest.mark.skipif(not URL, reason="OMOST_E2E_URL is not set (no running WebUI to test against)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TITLES = {"omost": "Omost", "refdrop": "RefDrop", "slothful": "Slothful / Near-sighted attention",
          "hidiffusion": "HiDiffusion"}
BASE = {"prompt": "a cat on a sofa", "negative_prompt": "blurry", "steps": 2, "width": 128, "height": 128,
        "seed": 7, "cfg_scale": 5, "sampler_name": "Euler"}
ODD = {"width": 200, "height": 136}


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=1800) as response:
        return json.loads(response.read())


def generate(**extra):
    """(png bytes, infotext) of one txt2img request."""
    out = call("/sdapi/v1/txt2img", {**BASE, **extra})
    return base64.b64decode(out["images"][0]), json.loads(out["info"])["infotexts"][0]


def log_text():
    if not LOG:
        return ""
    with open(LOG, encoding="utf8", errors="replace") as f:
        return f.read()


@pytest.fixture
def log_mark():
    """The log length before a test: what the test adds is checked for tracebacks from the extension."""
    start = len(log_text())
    yield lambda: log_text()[start:]


def assert_no_extension_error(new_log: str):
    for block in new_log.split("Traceback (most recent call last):")[1:]:
        assert "lib_omost" not in block and "sd-forge-omost/scripts" not in block, block[:2000]
    assert "did not run" not in new_log, new_log[-2000:]


def features():
    from lib_omost.features import hidiffusion, omost, refdrop, slothful
    return {"omost": omost.FEATURE, "refdrop": refdrop.FEATURE, "slothful": slothful.FEATURE,
            "hidiffusion": hidiffusion.FEATURE}


def example_canvas_json():
    from lib_omost.canvas import canvas_to_json, example_canvas
    return json.dumps(canvas_to_json(example_canvas()))


def test_extension_loaded_with_documented_argument_order():
    info = {s["name"]: s for s in call("/sdapi/v1/script-info") if not s["is_img2img"]}
    for key, feature in features().items():
        script = info.get(feature.title.lower())
        assert script is not None and script["is_alwayson"], f"{feature.title} is not listed"
        labels = [a["label"] for a in script["args"]]
        assert labels[0] == feature.title
        assert labels[1:] == [p.label for p in feature.params]
    assert "Traceback" not in log_text() or "lib_omost" not in log_text()


def _ref_path(name):
    return os.path.join(REFS, f"{name}.png")


@pytest.mark.parametrize("name,extra", [("off", {}), ("off_odd", ODD)])
def test_everything_off_is_bit_identical_to_the_webui_without_the_extension(name, extra):
    if not REFS:
        pytest.skip("OMOST_E2E_REFS is not set (reference images from the WebUI without the extension)")
    image, _ = generate(**extra)
    if RECORD:
        os.makedirs(REFS, exist_ok=True)
        with open(_ref_path(name), "wb") as f:
            f.write(image)
        pytest.skip(f"recorded {name}")
    with open(_ref_path(name), "rb") as f:
        assert hashlib.sha256(image).hexdigest() == hashlib.sha256(f.read()).hexdigest()


def _alone_cases():
    canvas = "__CANVAS__"
    cases = [(f"omost {m}", "omost", [True, canvas, m], ODD) for m in
             ("Omost score manipulation", "Attention couple", "Attention couple (overlay)", "DenseDiffusion",
              "Prediction blending")]
    # 200x136 is a 25x17 latent: a 16-token tile really tiles it (the default 32 would be one tile)
    cases += [(f"slothful {m}", "slothful", [True, m, "__TILE16__"], ODD) for m in
              ("Slothful attention", "Near-sighted tile", "Near-sighted attention")]
    cases += [(f"hidiffusion {r}", "hidiffusion", [True, "Simple", r], ODD) for r in ("low", "high", "ultra")]
    return cases


@pytest.mark.parametrize("name,key,args,extra", _alone_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_each_accordion_alone_changes_the_image_and_writes_its_infotext(name, key, args, extra, log_mark):
    if RECORD:
        pytest.skip("recording references")
    args = [example_canvas_json() if a == "__CANVAS__" else a for a in args]
    if "__TILE16__" in args:
        feature = features()["slothful"]
        values = {**feature.defaults(), "enabled": True, "mode": args[1], "tile_size": 16}
        args = [values[name] for name in feature.arg_names]
    off, _ = generate(**extra)
    image, infotext = generate(**extra, alwayson_scripts={TITLES[key]: {"args": args}})
    assert image != off
    feature = features()[key]
    for param in feature.params:
        assert f"{feature.infotext_key(param)}:" in infotext, f"{param.label} missing from the infotext"
    assert_no_extension_error(log_mark())


@pytest.mark.parametrize("sampler", ["Euler", "DPM2"])        # DPM2 discards the penultimate sigma
def test_omost_initial_latent_starts_at_the_documented_sigma(sampler, log_mark):
    """strength 0.5 at 2 steps: the last 2 steps of a ceil(2 / 0.5) = 4-step schedule of the WebUI's own."""
    if RECORD:
        pytest.skip("recording references")
    args = [True, example_canvas_json(), "Prediction blending", 1.0, 1.0, "append to global region", True]
    off, _ = generate(sampler_name=sampler, alwayson_scripts={"Omost": {"args": args + [0.0]}})
    image, infotext = generate(sampler_name=sampler, alwayson_scripts={"Omost": {"args": args + [0.5]}})
    assert image != off and "Omost Initial latent strength: 0.5" in infotext
    new_log = log_mark()
    assert "sampling starts from the canvas colours" in new_log and "the last 2 steps of a 4-step schedule" in new_log
    assert_no_extension_error(new_log)


def test_refdrop_save_then_use_both_directions(log_mark):
    if RECORD:
        pytest.skip("recording references")
    title = TITLES["refdrop"]
    generate(alwayson_scripts={title: {"args": [True, "Save", 0.0, "e2e_suite"]}})
    off, _ = generate(seed=8)
    towards, info = generate(seed=8, alwayson_scripts={title: {"args": [True, "Use", 0.5, "e2e_suite"]}})
    away, _ = generate(seed=8, alwayson_scripts={title: {"args": [True, "Use", -0.3, "e2e_suite"]}})
    assert len({off, towards, away}) == 3
    assert "RefDrop Coefficient: 0.5" in info
    assert_no_extension_error(log_mark())


def test_all_four_in_one_request_and_every_stage_ran(log_mark):
    if RECORD:
        pytest.skip("recording references")
    generate(alwayson_scripts={TITLES["refdrop"]: {"args": [True, "Save", 0.0, "e2e_suite_all"]}})
    image, info = generate(**ODD, alwayson_scripts={
        TITLES["omost"]: {"args": [True, example_canvas_json()]},
        TITLES["hidiffusion"]: {"args": [True]},
        TITLES["slothful"]: {"args": [True, "Near-sighted attention"]},
        TITLES["refdrop"]: {"args": [True, "Use", 0.4, "e2e_suite_all"]}})
    for title in TITLES.values():
        assert f"{title}: True" in info
    new_log = log_mark()
    assert_no_extension_error(new_log)
    if LOG:
        for stage in ("Omost (attn2)", "MSW-MSA (attn1)", "RefDrop (attn1)", "Near-sighted (attn1)"):
            assert f"AttentionPlan: {stage}" in new_log, stage


def test_infotext_round_trip_through_png_info():
    if RECORD:
        pytest.skip("recording references")
    args = [True, "Near-sighted tile", 0.5, 1.5]
    image, infotext = generate(alwayson_scripts={TITLES["slothful"]: {"args": args}})
    parsed = call("/sdapi/v1/png-info", {"image": "data:image/png;base64," + base64.b64encode(image).decode()})
    params = parsed["parameters"]
    feature = features()["slothful"]
    restored = feature.from_infotext({k: str(v) for k, v in params.items()})
    assert restored["enabled"] and restored["mode"] == "Near-sighted tile"
    assert restored["peak_time"] == 0.5 and restored["time_decay"] == 1.5
    canvas_json = example_canvas_json()
    image, _ = generate(alwayson_scripts={TITLES["omost"]: {"args": [True, canvas_json]}})
    params = call("/sdapi/v1/png-info", {"image": "data:image/png;base64," + base64.b64encode(image).decode()})
    from lib_omost.canvas import load_canvas_text, canvas_to_json
    pasted = load_canvas_text(params["parameters"]["Omost Canvas"]).canvas
    assert canvas_to_json(pasted) == json.loads(canvas_json)


def test_xyz_plot_over_the_api_with_our_axes(log_mark):
    if RECORD:
        pytest.skip("recording references")
    scripts = call("/sdapi/v1/script-info")
    xyz = next(s for s in scripts if s["name"] == "x/y/z plot" and not s["is_img2img"])
    # the plot's arguments differ between forks: start from its own defaults and set ours by label
    names = [a["label"] for a in xyz["args"]]
    args = [a.get("value") for a in xyz["args"]]
    labels = xyz["args"][names.index("X type")]["choices"]
    x, y = names.index("X type"), names.index("Y type")
    args[x:x + 3] = [labels.index("[Slothful / Near-sighted attention] Input slothful"), "0, 8", []]
    args[y:y + 3] = [labels.index("[HiDiffusion] MSW-MSA start"), "0, 1", []]
    args[names.index("Z type")] = 0
    args[names.index("Include Sub Images")] = True        # the API then returns every cell after the grid
    out = call("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot", "script_args": args})
    cells = [base64.b64decode(i) for i in out["images"][1:]]           # first image is the grid
    infos = json.loads(out["info"])["infotexts"][1:]
    assert len(cells) == 4 and len(set(cells)) == 4
    assert any("Input slothful: 8" in i and "MSW-MSA start: 0" in i for i in infos)
    assert_no_extension_error(log_mark())


def test_hires_fix_with_omost_and_hidiffusion(log_mark):
    if RECORD:
        pytest.skip("recording references")
    image, info = generate(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_cfg=5, denoising_strength=0.5,
                           hr_upscaler="Latent", hr_additional_modules=["Use same choices"],
                           alwayson_scripts={TITLES["omost"]: {"args": [True, example_canvas_json()]},
                                             TITLES["hidiffusion"]: {"args": [True]}})
    assert "Hires upscale: 1.5" in info and "Omost: True" in info and "HiDiffusion applied" in info
    assert_no_extension_error(log_mark())
