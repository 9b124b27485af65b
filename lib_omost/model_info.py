"""Facts about the loaded model that the techniques need, independent of the WebUI flavour.

Built by ``lib_omost.forge.webui.model_info`` once per sampling pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lib_omost.attention.plan import LayerKey


@dataclass
class ModelInfo:
    family: str                                  # "sd15", "sd2" or "sdxl"
    model_channels: int
    layers: dict[LayerKey, int]                  # every transformer block, forward order -> its channels
    percent_to_sigma: Callable[[float], float]
    sigma_to_timestep: Callable                  # tensor of sigmas -> tensor of model timesteps (0..999)
    attention: Callable = field(repr=False)      # the WebUI's attention: f(q, k, v, heads, options)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def unet_family(self) -> str:
        """The block-layout family: SD2 has SD1.5's layout."""
        return "sdxl" if self.is_sdxl else "sd15"

    def depth(self, layer: LayerKey) -> float:
        """channels / model_channels of a layer (1, 2, 4 ...)."""
        return self.layers[layer] / self.model_channels

    _timesteps: dict = field(default_factory=dict, repr=False, compare=False)

    def timestep(self, sigma: float) -> float:
        """The model timestep of a sigma, computed once per sigma (the model's tables may be on the GPU,
        and attention stages ask on every call)."""
        sigma = float(sigma)
        if sigma not in self._timesteps:
            import torch
            self._timesteps[sigma] = float(self.sigma_to_timestep(torch.tensor([sigma])).reshape(-1)[0])
        return self._timesteps[sigma]
