"""Slothful / Near-sighted attention: the accordion's parameters and its AttentionPlan stage.

One attn1 stage, in the "self-attention pattern" group (MSW-MSA takes precedence on a layer while both
are active; see ``lib_omost.attention.plan``). It works on the projected q, k, v: for the strided sample
and average pooling this is exactly the reduction of the hidden states before projection (the K/V
projections are linear without bias); max pooling takes the maximum of each projected channel.

Modes:
* Slothful attention — K and V shortened by a time- and depth-dependent stride (input and output blocks;
  the middle block is never reduced).
* Near-sighted tile — queries tiled; each tile attends its own tokens plus a global sample, on levels with
  depth <= 2 ** (tiling max depth - 1).
* Near-sighted attention — both: tiles whose local keys are Slothful-reduced, tile size and global ratio
  interpolated between base and peak by the Slothful time ratio.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from lib_omost.attention.nearsighted import (
    draw_offset,
    near_sighted_schedule,
    tile_grid,
    tiled_attention,
    tiling_applies,
)
from lib_omost.attention.plan import ATTN1, AttnCall, LayerKey
from lib_omost.attention.slothful import (
    MODES,
    SlothfulSide,
    reduce_tokens,
    side_for_block,
    slothful_stride,
    time_ratio,
)
from lib_omost.model_info import ModelInfo
from lib_omost.params import CHOICE, FLOAT, INT, Feature, Param

SLOTHFUL, TILE, NEAR_SIGHTED = "Slothful attention", "Near-sighted tile", "Near-sighted attention"
PATTERN_GROUP = "self-attention pattern"
# precedence in that group (lower runs first while active): MSW-MSA's windows over Near-sighted's tiles over
# Slothful's reduction (one accordion has Near-sighted or Slothful, never both)
MSW_MSA_PRECEDENCE, NEARSIGHTED_PRECEDENCE, SLOTHFUL_PRECEDENCE = 0, 1, 2


REDUCING = (("mode", (SLOTHFUL, NEAR_SIGHTED)),)     # the modes that shorten K/V over time
TILING = (("mode", (TILE, NEAR_SIGHTED)),)
TILE_ONLY = (("mode", (TILE,)),)
NEAR_SIGHTED_ONLY = (("mode", (NEAR_SIGHTED,)),)


def _side_params(side: str, label: str, slothful: float) -> tuple[Param, ...]:
    return (
        Param(f"{side}_mode", f"{label} mode", CHOICE, "2D_AVG", choices=MODES, when=REDUCING,
              help="1D: along the token sequence; 2D: on the image grid. AVG or MAX pooling."),
        Param(f"{side}_slothful", f"{label} slothful", FLOAT, slothful, 0.0, 50.0, 0.1, when=REDUCING,
              help="Reduction strength: K/V are shortened by up to this factor (<= 1: untouched)."),
        Param(f"{side}_depth_decay", f"{label} depth decay", FLOAT, 2.0, 0.0, 10.0, 0.1, when=REDUCING),
        Param(f"{side}_k_blend", f"{label} K blend", FLOAT, 0.0, 0.0, 1.0, 0.01, when=REDUCING,
              help="0 = strided sample, 1 = pooled."),
        Param(f"{side}_v_blend", f"{label} V blend", FLOAT, 0.0, 0.0, 1.0, 0.01, when=REDUCING),
    )


FEATURE = Feature("slothful", "Slothful / Near-sighted attention", (
    Param("mode", "Mode", CHOICE, SLOTHFUL, choices=(SLOTHFUL, TILE, NEAR_SIGHTED)),
    Param("peak_time", "Peak time", FLOAT, 0.4, 0.0, 1.0, 0.01, when=REDUCING,
          help="Denoising progress (0 = start, 1 = end) where the reduction is strongest."),
    Param("time_decay", "Time decay", FLOAT, 2.0, 0.0, 10.0, 0.1, when=REDUCING,
          help="0 = the same reduction at every step."),
    *_side_params("in", "Input", 6.0),
    *_side_params("out", "Output", 4.0),
    Param("tiling_max_depth", "Tiling max depth", INT, 2, 1, 3, 1, when=TILING,
          help="Tile levels with channels/model channels <= 2^(depth - 1)."),
    Param("tile_size", "Tile size", INT, 32, 16, 64, 1, when=TILE_ONLY,
          help="Near-sighted tile: tile edge in latent tokens."),
    Param("global_ratio", "Global ratio", FLOAT, 0.5, 0.0, 2.0, 0.05, when=TILE_ONLY,
          help="Near-sighted tile: global sample size relative to a tile's own keys (0 = none)."),
    Param("base_tile", "Base tile", INT, 24, 16, 64, 1, when=NEAR_SIGHTED_ONLY,
          help="Near-sighted attention: tile size off-peak."),
    Param("peak_tile", "Peak tile", INT, 32, 16, 64, 1, when=NEAR_SIGHTED_ONLY,
          help="Near-sighted attention: tile size at the peak."),
    Param("base_global", "Base global ratio", FLOAT, 0.2, 0.0, 2.0, 0.05, when=NEAR_SIGHTED_ONLY),
    Param("peak_global", "Peak global ratio", FLOAT, 0.8, 0.0, 2.0, 0.05, when=NEAR_SIGHTED_ONLY),
))


def sides(values: dict) -> tuple[SlothfulSide, SlothfulSide]:
    def side(prefix: str) -> SlothfulSide:
        return SlothfulSide(mode=values[f"{prefix}_mode"], depth_decay=values[f"{prefix}_depth_decay"],
                            slothful=values[f"{prefix}_slothful"], k_blend=values[f"{prefix}_k_blend"],
                            v_blend=values[f"{prefix}_v_blend"])
    return side("in"), side("out")


def layer_seed(seed: int, layer: LayerKey) -> int:
    """A per-layer seed: padding offsets are reproducible from the image seed, independent per layer."""
    return (int(seed) * 1_000_003 + zlib.crc32(layer.label().encode())) % (2 ** 63)


@dataclass
class SlothfulStage:
    """The accordion's stage on one generation. Holds per-layer generators for the padding offsets."""
    values: dict
    info: ModelInfo
    seed: int
    target: str = ATTN1
    order: int = 20
    exclusive: str = PATTERN_GROUP

    def __post_init__(self):
        self.mode = self.values["mode"]
        self.name = "Slothful" if self.mode == SLOTHFUL else "Near-sighted"
        self.precedence = SLOTHFUL_PRECEDENCE if self.mode == SLOTHFUL else NEARSIGHTED_PRECEDENCE
        self.input_side, self.output_side = sides(self.values)
        self.generators: dict[LayerKey, torch.Generator] = {}

    def applies(self, layer: LayerKey) -> bool:
        if side_for_block(layer.block, self.input_side, self.output_side) is None:
            return False
        if self.mode == TILE:
            return self._tiles(layer)
        return True

    def active(self, call: AttnCall) -> bool:
        return True

    def _tiles(self, layer: LayerKey) -> bool:
        return tiling_applies(self.info.depth(layer), self.values["tiling_max_depth"])

    def _offset(self, layer: LayerKey, hw, grid) -> tuple[int, int]:
        if layer not in self.generators:
            self.generators[layer] = torch.Generator().manual_seed(layer_seed(self.seed, layer))
        return draw_offset(hw, grid, self.generators[layer])

    def __call__(self, q, k, v, call: AttnCall, inner):
        layer, hw = call.layer, call.hw
        side = side_for_block(layer.block, self.input_side, self.output_side)
        ratio = stride = 0.0
        if self.mode != TILE:
            timestep = self.info.timestep(call.sigma) if call.sigma is not None else 999.0
            ratio = time_ratio(timestep, self.values["peak_time"], self.values["time_decay"])
            stride = slothful_stride(side.slothful, timestep, self.info.layers[layer], self.info.model_channels,
                                     sdxl=self.info.is_sdxl, depth_decay=side.depth_decay,
                                     peak_time=self.values["peak_time"], time_decay=self.values["time_decay"])
        grid = None
        if self.mode != SLOTHFUL and self._tiles(layer):
            if self.mode == TILE:
                size, global_ratio = self.values["tile_size"], self.values["global_ratio"]
            else:
                size, global_ratio = near_sighted_schedule(ratio, self.values["base_tile"], self.values["peak_tile"],
                                                           self.values["base_global"], self.values["peak_global"])
            grid = tile_grid(hw, size)
        if grid is None:
            # no tiles on this call: the (possibly) reduced K/V go to the inner attention, like Slothful
            if stride <= 1:
                return inner(q, k, v, call)
            return inner(q, reduce_tokens(k, hw, stride, side.mode, side.k_blend),
                         reduce_tokens(v, hw, stride, side.mode, side.v_blend), call)
        return tiled_attention(q, k, v, call.heads, hw, size, global_ratio=global_ratio,
                               offset=self._offset(layer, hw, grid), stride=stride, mode=side.mode,
                               k_blend=side.k_blend, v_blend=side.v_blend)


def stages(values: dict, info: ModelInfo, seed: int) -> list:
    return [SlothfulStage(values, info, seed)]

