"""Omost's initial latent: the blurred canvas colours as the start, at the first sigma its strength maps to."""

import contextlib
import math
import os

import numpy as np
import pytest
import torch

from lib_omost.canvas import GRID, Canvas, GlobalRegion, Region, color_preview, example_canvas
from lib_omost.canvas.colors import color_rgb
from lib_omost.canvas.render import omost_initial_colours
from lib_omost.features import omost
from lib_omost.features.omost_start import (blurred_canvas_colours, keep_through_discard, schedule_length,
                                            schedule_tail, start_noise)
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANVAS = omost.FEATURE.by_name["canvas"].default


@pytest.fixture(params=harness.FLAVOURS)
def flavour(request):
    with harness.use_flavour(request.param):
        yield request.param


# --- pure pieces ------------------------------------------------------------------------------------

def test_schedule_length_is_the_ceiling_and_any_strength_moves_the_start():
    assert [schedule_length(20, c) for c in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)] == [20, 22, 23, 25, 29, 40]
    assert schedule_length(25, 0.01) == 26                # the original's rounding made this a no-op
    assert all(schedule_length(steps, c) > steps for steps in (1, 7, 30) for c in (0.001, 0.3, 0.9))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        schedule_length(20, 1.0)


def test_tail_discard_padding_and_start_noise():
    sigmas = torch.tensor([9.0, 5.0, 3.0, 1.0, 0.5, 0.0])
    tail = schedule_tail(sigmas, 3)
    assert tail.tolist() == [3.0, 1.0, 0.5, 0.0]
    padded = keep_through_discard(tail)
    assert torch.equal(torch.cat([padded[:-2], padded[-1:]]), tail)       # what the WebUI's discard rule does
    noise = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    latent = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    assert torch.allclose(start_noise(noise, latent, 2.5) * 2.5, latent + 2.5 * noise, atol=1e-12)


def _box_mean(rgb: np.ndarray, i: int, j: int, radius: int = 40) -> np.ndarray:
    """Mean of the (2r+1)^2 window around (i, j) of a reflect-padded image, written out by hand."""
    def reflect(k, n):
        return -k if k < 0 else (2 * (n - 1) - k if k >= n else k)
    n = rgb.shape[0]
    window = [rgb[reflect(a, n), reflect(b, n)] for a in range(i - radius, i + radius + 1)
              for b in range(j - radius, j + radius + 1)]
    return np.mean(window, axis=0)


def _omost_app_colours(canvas) -> np.ndarray:
    """The original app's colour image, restated operation by operation: a float32 image; per region far ->
    near, 0.7 * (uint8 colour as an array) + 0.3 * (float32 slice) assigned back; clip; astype(uint8)."""
    image = np.zeros((GRID, GRID, 3), np.float32) + np.array([[color_rgb(canvas.global_region.color)]], np.uint8)
    for region in sorted(canvas.regions, key=lambda r: r.distance, reverse=True):
        a, b, c, d = (int(v) for v in region.rect)
        image[a:b, c:d] = 0.7 * np.array([[color_rgb(region.color)]], np.uint8) + 0.3 * image[a:b, c:d]
    return image.clip(0, 255).astype(np.uint8)


def test_initial_colours_are_the_original_apps_truncated_float32_composite():
    canvas = example_canvas()
    assert np.array_equal(omost_initial_colours(canvas), _omost_app_colours(canvas))
    # one level below the rounded preview where a channel's fraction is >= .5, never above it
    diff = np.asarray(color_preview(canvas, GRID, GRID), np.int64) - omost_initial_colours(canvas)
    assert diff.min() == 0 and diff.max() == 1
    # violet (238, 130, 238) over black: 166.6 truncates to 166 (the preview rounds to 167); 0.7 * 130 is
    # 90.99999999999999 in float64 but 91.0 once stored in float32, so it stays 91
    one = Canvas(GlobalRegion("night", [], [], "black"),
                 [Region(rect=(10, 50, 20, 70), distance=1.0, description="lamp", color="violet")])
    assert omost_initial_colours(one)[20, 30].tolist() == [166, 91, 166]
    assert list(color_preview(one, GRID, GRID).getpixel((30, 20))) == [167, 91, 167]
    assert omost_initial_colours(one)[0, 0].tolist() == [0, 0, 0]
    rng = np.random.default_rng(5)
    for _ in range(20):
        regions = []
        for _ in range(int(rng.integers(1, 6))):
            top, left = int(rng.integers(0, 80)), int(rng.integers(0, 80))
            regions.append(Region(rect=(top, top + int(rng.integers(1, 90 - top)), left,
                                        left + int(rng.integers(1, 90 - left))),
                                  distance=float(rng.integers(1, 4)), description="r",
                                  color=tuple(int(v) for v in rng.integers(0, 256, 3))))
        canvas = Canvas(GlobalRegion("g", [], [], tuple(int(v) for v in rng.integers(0, 256, 3))), regions)
        assert np.array_equal(omost_initial_colours(canvas), _omost_app_colours(canvas))


def test_blurred_colours_are_the_reflect_padded_81_box_mean_resized_by_nearest_neighbour():
    canvas = example_canvas()
    rgb = omost_initial_colours(canvas).astype(np.float64) / 255.0
    blurred = blurred_canvas_colours(canvas, GRID, GRID)[0].permute(1, 2, 0).double().numpy()
    for i, j in [(0, 0), (10, 80), (45, 45), (89, 3), (60, 61)]:
        assert np.allclose(blurred[i, j], _box_mean(rgb, i, j), atol=1e-6)
    # any size: pixel (i, j) is the 90 x 90 blur at (floor(i * 90 / h), floor(j * 90 / w)), as torch's "nearest"
    big = blurred_canvas_colours(canvas, 200, 136)[0].permute(1, 2, 0).numpy()
    small = blurred.astype(np.float32)
    for i, j in [(0, 0), (135, 199), (67, 100), (3, 150), (120, 7)]:
        assert np.array_equal(big[i, j], small[i * 90 // 136, j * 90 // 200])
    plain = Canvas(GlobalRegion("a field", [], [], (10, 200, 30)), [])
    flat = blurred_canvas_colours(plain, 72, 40)
    assert flat.shape == (1, 3, 40, 72)
    assert torch.allclose(flat[0, :, 0, 0], torch.tensor([10, 200, 30]) / 255.0, atol=1e-6)
    assert float((flat - flat[..., :1, :1]).abs().max()) < 1e-6


# --- in the stand-in ----------------------------------------------------------------------------------

@contextlib.contextmanager
def first_inputs():
    """(sampler x, sigma) of every UNet call: x recovered from the eps model's scaled input x / sqrt(s^2+1)."""
    from modules import shared
    model = shared.sd_model.forge_objects_original.unet.model.diffusion_model
    seen, original = [], model.forward

    def forward(x, timesteps=None, context=None, *args, transformer_options={}, **kwargs):
        sigma = transformer_options["sigmas"].to(torch.float64)
        rows = x.shape[0] // sigma.shape[0]
        scale = torch.sqrt(sigma ** 2 + 1).repeat(rows)[:, None, None, None]
        seen.append((x.to(torch.float64) * scale, float(sigma[0])))
        return original(x, timesteps, context, *args, transformer_options=transformer_options, **kwargs)
    model.forward = forward
    try:
        yield seen
    finally:
        del model.forward


def omost_args(ui, strength, tab="txt2img"):
    return ui.script_args({"Omost": [True, CANVAS, omost.OMOST, 1.0, 1.0, omost.APPEND, True, strength]}, tab)


def webui_sigmas(steps, scheduler="Automatic"):
    from modules import sd_samplers, shared
    from modules.processing import StableDiffusionProcessingTxt2Img
    p = StableDiffusionProcessingTxt2Img(steps=steps, scheduler=scheduler)
    return sd_samplers.create_sampler("Euler", shared.sd_model).get_sigmas(p, steps).to(torch.float64)


def canvas_latent(width, height):
    from modules import sd_samplers_common, shared
    image = blurred_canvas_colours(example_canvas(), width, height)
    return sd_samplers_common.images_tensor_to_samples(image, 0, shared.sd_model).to(torch.float64)


@pytest.mark.parametrize("scheduler,sgm,discard", [("Automatic", False, False), ("Karras", False, False),
                                                   ("Automatic", True, False), ("Karras", False, True)])
def test_sampling_starts_at_the_canvas_latent_plus_noise_at_the_mapped_sigma(flavour, scheduler, sgm, discard):
    from modules.shared import opts
    ui = harness.start_webui([ROOT])
    opts.sgm_noise_multiplier, opts.always_discard_next_to_last_sigma = sgm, discard
    try:
        steps, strength, size = 3, 0.5, dict(width=72, height=56)
        with first_inputs() as plain:
            ui.txt2img(script_args=omost_args(ui, 0.0), prompt="a cat", cfg_scale=5, steps=steps,
                       scheduler=scheduler, batch_size=2, **size)
        with first_inputs() as started:
            result = ui.txt2img(script_args=omost_args(ui, strength), prompt="a cat", cfg_scale=5, steps=steps,
                                scheduler=scheduler, batch_size=2, **size)
        full = webui_sigmas(schedule_length(steps, strength), scheduler)         # 6 steps (discard applied inside)
    finally:
        opts.sgm_noise_multiplier = opts.always_discard_next_to_last_sigma = False
    assert harness.reported_errors() == []
    expected = full[-(steps + 1):-1].tolist()                           # the sigmas the steps are taken at
    assert sorted({s for _, s in started}, reverse=True) == pytest.approx(expected, rel=1e-6)
    assert len(started) == steps                                        # cond + uncond batched: a call a step
    sigma_max, sigma = plain[0][1], started[0][1]
    scale = (lambda s: math.sqrt(1 + s * s)) if sgm else (lambda s: s)
    noise = plain[0][0] / scale(sigma_max)
    latent = canvas_latent(72, 56)
    assert torch.allclose(started[0][0], latent + scale(sigma) * noise, atol=1e-4)
    assert "Omost Initial latent strength: 0.5" in result.infotexts[0]


def test_hires_pass_and_later_batches_keep_their_own_schedules(flavour):
    ui = harness.start_webui([ROOT])
    hires = dict(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, hr_cfg=5,
                 hr_additional_modules=["Use same choices"])
    runs = {}
    for strength in (0.0, 0.5):
        with harness.record_unet_calls() as calls:
            ui.txt2img(script_args=omost_args(ui, strength), prompt="a cat", cfg_scale=5, steps=2, n_iter=2,
                       **hires)
        runs[strength] = [(c.x_shape[-1], round(float(c.transformer_options["sigmas"][0]), 6)) for c in calls]
    assert harness.reported_errors() == []
    first_pass = [s for w, s in runs[0.5] if w == 8]
    start = float(webui_sigmas(4)[2])
    assert first_pass.count(round(start, 6)) == 2 and len(first_pass) == 4          # both batches, 2 steps each
    assert [c for c in runs[0.5] if c[0] == 12] == [c for c in runs[0.0] if c[0] == 12]   # hires: untouched


def test_img2img_reports_that_the_option_is_for_txt2img(flavour):
    ui = harness.start_webui([ROOT])
    result = ui.img2img(script_args=omost_args(ui, 0.3, "img2img"), prompt="a cat", cfg_scale=5)
    assert "initial latent is for txt2img" in result.extra_generation_params["Omost note"]


def test_initial_latent_is_an_xyz_axis(flavour):
    ui = harness.start_webui([ROOT])
    xyz = ui.runner().selectable_scripts[0]
    assert "[Omost] Initial latent strength" in [o.label for o in xyz.current_axis_options]


def test_an_encoder_that_cannot_run_is_reported_and_sampling_starts_from_noise(flavour):
    from modules.shared import opts
    ui = harness.start_webui([ROOT])
    plain = ui.txt2img(script_args=omost_args(ui, 0.0), prompt="a cat", cfg_scale=5)
    opts.sd_vae_encode_method = "TAESD"                  # the stand-in has no TAESD: its encode raises
    try:
        result = ui.txt2img(script_args=omost_args(ui, 0.3), prompt="a cat", cfg_scale=5)
    finally:
        opts.sd_vae_encode_method = "Full"
    assert "the initial latent failed" in result.extra_generation_params["Omost note"]
    assert torch.equal(result.latents, plain.latents)
