"""Omost's initial latent: start txt2img sampling from the blurred canvas colours instead of pure noise.

Omost's colour image (90 x 90, ``omost_initial_colours``: the colour preview truncated to uint8 as the
original app does) is reflect-padded by 40, box-blurred with an 81 x 81 kernel and resized to the image
with nearest-neighbour sampling (the original app's numbers and modes, so the start matches it), then
VAE-encoded by the WebUI. A strength c in (0, 1) then works like
img2img with denoising d = 1 - c, without losing steps: the WebUI's own schedule is built for
T = ceil(steps / d) steps and sampling runs its last ``steps`` steps, so it starts at sigma_T[T - steps]
from latent + noise * (the sampler's own noise scale at that sigma). Any c > 0 moves the start (the
original's integer rounding made its suggested 0.99 at 25 steps a no-op).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lib_omost.canvas import Canvas
from lib_omost.canvas.render import omost_initial_colours

BLUR_RADIUS = 40          # reflect padding; the box is 2 * 40 + 1 = 81 pixels of the 90 x 90 preview


def blurred_canvas_colours(canvas: Canvas, width: int, height: int) -> torch.Tensor:
    """[1, 3, height, width] float32 in [0, 1]: Omost's colour image, box-blurred, resized by nearest
    neighbour (torch's "nearest", as the original app's default interpolate)."""
    rgb = omost_initial_colours(canvas).astype(np.float64) / 255.0
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    padded = torch.nn.functional.pad(image, (BLUR_RADIUS,) * 4, mode="reflect")
    blurred = torch.nn.functional.avg_pool2d(padded, 2 * BLUR_RADIUS + 1, stride=1)
    resized = torch.nn.functional.interpolate(blurred, size=(height, width), mode="nearest")
    return resized.clamp(0.0, 1.0).float()


def schedule_length(steps: int, strength: float) -> int:
    """T = ceil(steps / (1 - strength)): the schedule whose last ``steps`` steps are sampled."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"initial latent strength must be in [0, 1), got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return math.ceil(steps / (1.0 - strength) - 1e-9)


def schedule_tail(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The last ``steps`` steps of a schedule (steps + 1 sigmas)."""
    if len(sigmas) < steps + 1:
        raise ValueError(f"a schedule of {len(sigmas) - 1} steps has no tail of {steps} steps")
    return sigmas[-(steps + 1):]


def keep_through_discard(sigmas: torch.Tensor) -> torch.Tensor:
    """A schedule that the WebUI's 'discard penultimate sigma' rule turns back into ``sigmas``
    (it drops the second to last entry of what an override returns)."""
    return torch.cat([sigmas[:-1], sigmas[-1:], sigmas[-1:]])


def start_noise(noise: torch.Tensor, latent: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """The noise to hand the sampler so that it starts at latent + noise * noise_scale: the sampler itself
    multiplies what it gets by noise_scale (sigma, or sqrt(1 + sigma^2) with the SGM noise multiplier)."""
    return noise + latent.to(noise) / noise_scale
