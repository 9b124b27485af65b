"""End to end against an already running WebUI (Forge main / Neo, reForge / Classic) through its HTTP API.

Builds and starts nothing. Environment:
  OMOST_E2E_URL   base URL of the WebUI API, e.g. http://127.0.0.1:7861 (unset: every test is skipped)
  OMOST_E2E_LOG   path of the server's console log (checked for tracebacks and stage lines; optional)
  OMOST_E2E_REFS  folder of reference images made by the same WebUI WITHOUT this extension
  OMOST_E2E_RECORD=1  record those references (run once with the extension removed), then compare later

Requests are 2 steps at small sizes, so a CPU-only WebUI with a random-weight checkpoint works. Images are
compared as decoded pixels (never PNG bytes: the infotext alone makes bytes differ), and every image a test
looks at must be sound: not one flat value, and no NaN warning in the server log (Forge Neo replaces NaN
latents with zeros and returns a black image with HTTP 200).
"""

import base64
import functools
import io
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

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
ROUNDED = {"width": 192, "height": 128}      # the nearest multiples of 64, for WebUIs that round (Forge Neo)
MIN_CHANGE = 0.1        # mean absolute change (0-255 levels) that counts as "the accordion changed the image"
NAN_MARKERS = ("Encountered NaN", "NaN encountered", "contains NaN", "NansException",
               "invalid value encountered in cast")      # Forge/reForge: NaN pixels cast to uint8


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=1800) as response:
        return json.loads(response.read())


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def assert_sound(pixels: np.ndarray, what: str = "image"):
    assert np.isfinite(pixels).all(), f"{what}: non-finite pixels"
    assert pixels.max() > pixels.min(), f"{what} is one flat value ({pixels.min():g}): a NaN or broken latent"


def generate(**extra):
    """(decoded pixels, infotext) of one txt2img request; the image must be sound."""
    out = call("/sdapi/v1/txt2img", {**BASE, **extra})
    pixels = decode(base64.b64decode(out["images"][0]))
    assert_sound(pixels, f"txt2img {json.dumps(extra)[:200]}")
    return pixels, json.loads(out["info"])["infotexts"][0]


def changed(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute pixel change between two images of one size."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).mean())


@functools.lru_cache(maxsize=None)
def odd_size() -> dict:
    """ODD where this WebUI honours sizes that are not multiples of 64, else the rounded size it makes."""
    pixels, _ = generate(**ODD)
    return ODD if pixels.shape[:2] == (ODD["height"], ODD["width"]) else ROUNDED


def require_odd_sizes():
    if odd_size() is not ODD:
        pytest.skip("this WebUI rounds width and height to multiples of 64 (Forge Neo does): a 200x136 request "
                    "makes 192x128, so odd latent sizes cannot be exercised here")


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
    for marker in NAN_MARKERS:
        assert marker not in new_log, f"the server log reports NaN ({marker!r}): the image is broken"


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
    if extra is ODD:
        require_odd_sizes()
    out = call("/sdapi/v1/txt2img", {**BASE, **extra})
    image = base64.b64decode(out["images"][0])
    assert_sound(decode(image))
    if RECORD:
        os.makedirs(REFS, exist_ok=True)
        with open(_ref_path(name), "wb") as f:
            f.write(image)
        pytest.skip(f"recorded {name}")
    with open(_ref_path(name), "rb") as f:
        reference = decode(f.read())
    assert np.array_equal(decode(image), reference), f"max difference {np.abs(decode(image) - reference).max()}"


def _alone_cases():
    canvas = "__CANVAS__"
    cases = [(f"omost {m}", "omost", [True, canvas, m]) for m in
             ("Omost score manipulation", "Attention couple", "Attention couple (overlay)", "DenseDiffusion",
              "Prediction blending")]
    # 200x136 is a 25x17 latent (192x128: 24x16): a 16-token tile really tiles it (the default 32 would not)
    cases += [(f"slothful {m}", "slothful", [True, m, "__TILE16__"]) for m in
              ("Slothful attention", "Near-sighted tile", "Near-sighted attention")]
    cases += [(f"hidiffusion {r}", "hidiffusion", [True, "Simple", r]) for r in ("low", "high", "ultra")]
    return cases


def test_odd_sizes_are_honoured():
    """The cases below run at 200x136 where the WebUI makes that size; this says when it does not."""
    require_odd_sizes()
    assert odd_size() == ODD


@pytest.mark.parametrize("name,key,args", _alone_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_each_accordion_alone_changes_the_image_and_writes_its_infotext(name, key, args, log_mark):
    if RECORD:
        pytest.skip("recording references")
    args = [example_canvas_json() if a == "__CANVAS__" else a for a in args]
    feature = features()[key]
    if "__TILE16__" in args:
        values = {**feature.defaults(), "enabled": True, "mode": args[1], "tile_size": 16}
        args = [values[name] for name in feature.arg_names]
    off, _ = generate(**odd_size())
    image, infotext = generate(**odd_size(), alwayson_scripts={TITLES[key]: {"args": args}})
    assert changed(image, off) > MIN_CHANGE, f"{name} changed the image by {changed(image, off):.3f} levels only"
    # the infotext holds what ran: the values that differ from the defaults (the round trip is tested below)
    assert f"{feature.enabled_key}: True" in infotext
    written = feature.to_infotext(feature.values(args))
    for key_, value in written.items():
        if key_ != feature.enabled_key:
            assert f"{key_}: " in infotext, f"{key_} missing from the infotext"
    assert_no_extension_error(log_mark())


@pytest.mark.parametrize("sampler", ["Euler", "DPM2"])        # DPM2 discards the penultimate sigma
def test_omost_initial_latent_starts_at_the_documented_sigma(sampler, log_mark):
    """strength 0.5 at 2 steps: the last 2 steps of a ceil(2 / 0.5) = 4-step schedule of the WebUI's own."""
    if RECORD:
        pytest.skip("recording references")
    args = [True, example_canvas_json(), "Prediction blending", 1.0, 1.0, "append to global region", True]
    off, _ = generate(sampler_name=sampler, alwayson_scripts={"Omost": {"args": args + [0.0]}})
    image, infotext = generate(sampler_name=sampler, alwayson_scripts={"Omost": {"args": args + [0.5]}})
    assert changed(image, off) > MIN_CHANGE and "Omost Initial latent strength: 0.5" in infotext
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
    assert min(changed(off, towards), changed(off, away), changed(towards, away)) > MIN_CHANGE
    assert "RefDrop Coefficient: 0.5" in info
    assert_no_extension_error(log_mark())


def test_all_four_in_one_request_and_every_stage_ran(log_mark):
    if RECORD:
        pytest.skip("recording references")
    generate(alwayson_scripts={TITLES["refdrop"]: {"args": [True, "Save", 0.0, "e2e_suite_all"]}})
    image, info = generate(**odd_size(), alwayson_scripts={
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


def png_info(infotext: str) -> dict:
    """The WebUI's own parse of an infotext (png-info reads the text of a PNG; the API returns it)."""
    image = Image.new("RGB", (8, 8))
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    data = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return call("/sdapi/v1/png-info", {"image": data})["parameters"]


def test_infotext_round_trip_through_png_info(log_mark):
    if RECORD:
        pytest.skip("recording references")
    feature = features()["slothful"]
    args = [True, "Near-sighted attention", 0.5, 1.5]
    _, infotext = generate(alwayson_scripts={TITLES["slothful"]: {"args": args}})
    restored = feature.from_infotext({k: str(v) for k, v in png_info(infotext).items()})
    assert restored == feature.values(args)
    canvas = json.loads(example_canvas_json())
    # not the default canvas; the texts stay those of the example, which give finite images with random weights
    # (with them, some other texts make NaN latents: a black image)
    canvas["regions"][0]["color"] = "gold"
    _, infotext = generate(alwayson_scripts={TITLES["omost"]: {"args": [True, json.dumps(canvas)]}})
    from lib_omost.canvas import load_canvas_text, canvas_to_json
    params = png_info(infotext)
    assert canvas_to_json(load_canvas_text(params["Omost Canvas"]).canvas) == canvas
    # empty values (RefDrop's disabled layers) are never written, so the WebUI's parser reports no error
    _, infotext = generate(alwayson_scripts={TITLES["refdrop"]: {"args": [True, "Save", 0.0, "e2e_round_trip"]}})
    assert features()["refdrop"].from_infotext(png_info(infotext))["mode"] == "Save"
    new_log = log_mark()
    assert "Error parsing" not in new_log
    assert_no_extension_error(new_log)


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
    cells = [decode(base64.b64decode(i)) for i in out["images"][1:]]           # first image is the grid
    infos = json.loads(out["info"])["infotexts"][1:]
    assert len(cells) == 4
    for i, cell in enumerate(cells):
        assert_sound(cell, f"cell {i}")
        assert all(changed(cell, other) > 0 for other in cells[i + 1:]), "two cells are the same image"
    assert any("Input slothful: 8" in i and "MSW-MSA start: 0" in i for i in infos)
    assert_no_extension_error(log_mark())


def hires_upscaler() -> str:
    """"Latent" where the WebUI has latent upscalers, else the first upscaler it lists (Forge Neo has none)."""
    latent = [m["name"] for m in call("/sdapi/v1/latent-upscale-modes")]
    if "Latent" in latent:
        return "Latent"
    if latent:
        return latent[0]
    listed = [u["name"] for u in call("/sdapi/v1/upscalers") if u["name"] not in ("None", None)]
    assert listed, "the WebUI lists no upscaler for hires fix"
    return listed[0]


def test_hires_fix_with_omost_and_hidiffusion(log_mark):
    if RECORD:
        pytest.skip("recording references")
    image, info = generate(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1, hr_cfg=5, denoising_strength=0.5,
                           hr_upscaler=hires_upscaler(), hr_additional_modules=["Use same choices"],
                           alwayson_scripts={TITLES["omost"]: {"args": [True, example_canvas_json()]},
                                             TITLES["hidiffusion"]: {"args": [True]}})
    assert "Hires upscale: 1.5" in info and "Omost: True" in info and "HiDiffusion applied" in info
    assert_no_extension_error(log_mark())


def canvas_with_negatives_json():
    """The example canvas with a global negative and the nearest region's own (texts of the example, which
    give finite images with random weights)."""
    from lib_omost.canvas import canvas_to_json, example_canvas, ordered_regions
    canvas = example_canvas()
    canvas.global_region.negative = "lowres, watermark"
    ordered_regions(canvas)[-1].negative = "blurry, extra legs"
    return json.dumps(canvas_to_json(canvas))


@pytest.mark.parametrize("method", ["Omost score manipulation", "Attention couple", "Attention couple (overlay)",
                                    "DenseDiffusion", "Prediction blending"])
def test_region_negatives_change_the_image_and_round_trip(method, log_mark):
    if RECORD:
        pytest.skip("recording references")
    plain, _ = generate(alwayson_scripts={TITLES["omost"]: {"args": [True, example_canvas_json(), method]}})
    image, infotext = generate(alwayson_scripts={TITLES["omost"]: {"args": [True, canvas_with_negatives_json(),
                                                                             method]}})
    assert changed(plain, image) > MIN_CHANGE, f"{method}: the region negatives changed nothing"
    from lib_omost.canvas import canvas_to_json, load_canvas_text
    restored = load_canvas_text(png_info(infotext)["Omost Canvas"]).canvas
    assert canvas_to_json(restored) == json.loads(canvas_with_negatives_json())
    assert "Omost note" not in infotext
    at_one, infotext = generate(cfg_scale=1, alwayson_scripts={TITLES["omost"]: {
        "args": [True, canvas_with_negatives_json(), method]}})
    assert "negative prompts had no effect" in infotext
    new_log = log_mark()
    assert "Error parsing" not in new_log
    assert_no_extension_error(new_log)
