"""HiDiffusion's step-fraction time windows (the original's semantics) and their use in a generation."""

import math
import os

import pytest
import torch

from lib_omost.features import hidiffusion
from lib_omost.unet.raunet import Window, in_sigma_window, step_sigma_window
from tests.standin import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]          # 4 steps


@pytest.mark.parametrize("window,active_steps", [
    (Window(0.0, 0.5), {0, 1}), (Window(0.25, 1.0), {1, 2, 3}), (Window(0.0, 1.0), {0, 1, 2, 3}),
    (Window(0.5, 0.5), set()), (Window(0.0, 0.2), set()),
])
def test_step_window_matches_int_steps_times_ratio(window, active_steps):
    start, end = step_sigma_window(window, SIGMAS)
    seen = {i for i, sigma in enumerate(SIGMAS[:-1]) if in_sigma_window(sigma, start, end)}
    expected = {i for i in range(4) if int(4 * window.start) <= i < int(4 * window.end)}
    assert seen == expected == active_steps
    for i in active_steps:                     # a second-order midpoint call belongs to its step
        assert in_sigma_window(math.sqrt(SIGMAS[i] * max(SIGMAS[i + 1], 1e-3)), start, end)
    with pytest.raises(ValueError):
        step_sigma_window(Window(0.6, 0.5), SIGMAS)


def _args(ui, values):
    args = ui.ui_defaults()
    script = ui.script("HiDiffusion")
    full = {**hidiffusion.FEATURE.defaults(), "enabled": True, **values}
    args[script.args_from:script.args_to] = [full[name] for name in hidiffusion.FEATURE.arg_names]
    return args


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_step_fraction_windows_in_a_generation(flavour):
    with harness.use_flavour(flavour):
        ui = harness.start_webui([ROOT])
        kw = dict(prompt="a cat", cfg_scale=5, steps=4, width=136, height=72)
        off = ui.txt2img(**kw).latents
        common = {"mode": "Advanced", "msw_msa": False, "ca": False, "raunet_start": 0.0, "raunet_end": 0.2}
        # int(4 * 0.2) = 0: no step is active, whatever percent 0.2 would mean
        empty = ui.txt2img(script_args=_args(ui, {**common, "time_mode": "step fraction"}), **kw)
        assert torch.equal(empty.latents, off)
        assert "HiDiffusion Time windows in: step fraction" in empty.infotexts[0]
        percent = ui.txt2img(script_args=_args(ui, {**common, "time_mode": "percent"}), **kw)
        assert not torch.equal(percent.latents, off)
        half = ui.txt2img(script_args=_args(ui, {**common, "raunet_end": 0.5, "time_mode": "step fraction"}), **kw)
        assert not torch.equal(half.latents, off)
        assert harness.reported_errors() == []
