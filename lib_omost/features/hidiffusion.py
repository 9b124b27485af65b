"""HiDiffusion: RAU-Net (resolution-aware down/up sampling, and its CA variant) and MSW-MSA.

Block patches, all per generation (the WebUI restores its UNet before every pass, so nothing stays):
* RAU-Net at Downsample input block k: ``input_block_patch_after_skip`` of block k - 1 keeps the even rows
  and columns (after that block's skip is stored), so the stock stride-2 Downsample of block k computes
  exactly the dilated stride-4 conv. The paired Upsample resizes to its skip's size by itself (nearest,
  the original's mode); another mode resizes just before the Upsample (Forge main's block inner
  modifiers; reForge has no hook there, so it keeps nearest and says so).
* CA at attention input block k: ``input_block_patch`` pools the hidden state before its skip is stored;
  ``output_block_patch`` of the paired output block resizes back to its skip's size before the concat.
* MSW-MSA: an attn1 stage (2 x 2 shifted windows) on the family's layers, shifts drawn from a generator
  seeded from the image seed. It takes precedence over Slothful / Near-sighted on a layer while active.

Time windows are in percent of sampling (0 = start), converted by the model's own percent -> sigma and
inclusive at both ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lib_omost.attention.mswmsa import LAYERS as MSW_LAYERS
from lib_omost.attention.mswmsa import draw_shift, msw_msa_attention
from lib_omost.attention.plan import ATTN1, AttnCall, HostSigma, LayerKey
from lib_omost.features.slothful import MSW_MSA_PRECEDENCE, PATTERN_GROUP, layer_seed
from lib_omost.model_info import ModelInfo
from lib_omost.params import BOOL, CHOICE, FLOAT, INT, Feature, Param
from lib_omost.unet.raunet import (
    CA_DOWNSCALE_MODES,
    RESOLUTION_MODES,
    UPSCALE_MODES,
    Window,
    ca_downsample,
    ca_upsample,
    in_sigma_window,
    keep_even,
    preset,
    resize_to,
    sigma_window,
    validate_pair,
)

SIMPLE, ADVANCED = "Simple", "Advanced"
PERCENT, STEP_FRACTION = "percent", "step fraction"
AUTO = "auto"
NATIVE_SIDE = {"sd15": 512, "sdxl": 1024}
# Advanced mode's defaults are SD1.5 block numbers; an SDXL model left on them gets its own pairs.
SD15_ADVANCED_PAIRS = {"raunet": (3, 8), "ca": (4, 8)}
SDXL_ADVANCED_PAIRS = {"raunet": (3, 5), "ca": (4, 5)}

SIMPLE_ONLY, ADVANCED_ONLY = (("mode", (SIMPLE,)),), (("mode", (ADVANCED,)),)
MSW_ON = (("msw_msa", (True,)),)
RAUNET_ON, CA_ON = ADVANCED_ONLY + (("raunet", (True,)),), ADVANCED_ONLY + (("ca", (True,)),)

FEATURE = Feature("hidiffusion", "HiDiffusion", (
    Param("mode", "Mode", CHOICE, SIMPLE, choices=(SIMPLE, ADVANCED)),
    Param("resolution", "Resolution mode", CHOICE, AUTO, choices=(AUTO, *RESOLUTION_MODES), when=SIMPLE_ONLY,
          help="Simple mode: the preset for the image size (auto: from width x height vs the model's native size)."),
    Param("msw_msa", "MSW-MSA", BOOL, True, help="Shifted-window self-attention on the high-resolution layers."),
    Param("msw_start", "MSW-MSA start", FLOAT, 0.2, 0.0, 1.0, 0.01, when=MSW_ON),
    Param("msw_end", "MSW-MSA end", FLOAT, 1.0, 0.0, 1.0, 0.01, when=MSW_ON),
    Param("hires_pass", "Apply in hires pass", BOOL, True,
          help="Also patch the hires-fix second pass (it runs at the high resolution HiDiffusion is for)."),
    Param("raunet", "RAU-Net", BOOL, True, when=ADVANCED_ONLY,
          help="Advanced mode: resolution-aware Downsample/Upsample pair."),
    Param("raunet_in", "RAU-Net input block", INT, 3, 0, 11, 1, when=RAUNET_ON),
    Param("raunet_out", "RAU-Net output block", INT, 8, 0, 11, 1, when=RAUNET_ON),
    Param("raunet_start", "RAU-Net start", FLOAT, 0.0, 0.0, 1.0, 0.01, when=RAUNET_ON),
    Param("raunet_end", "RAU-Net end", FLOAT, 0.45, 0.0, 1.0, 0.01, when=RAUNET_ON),
    Param("upscale_mode", "Upscale mode", CHOICE, "bicubic", choices=UPSCALE_MODES, when=RAUNET_ON),
    Param("ca", "CA", BOOL, True, when=ADVANCED_ONLY,
          help="Advanced mode: pool after an attention input block, resize back later."),
    Param("ca_in", "CA input block", INT, 4, 0, 11, 1, when=CA_ON),
    Param("ca_out", "CA output block", INT, 8, 0, 11, 1, when=CA_ON),
    Param("ca_start", "CA start", FLOAT, 0.0, 0.0, 1.0, 0.01, when=CA_ON),
    Param("ca_end", "CA end", FLOAT, 0.3, 0.0, 1.0, 0.01, when=CA_ON),
    Param("ca_downscale_mode", "CA downscale mode", CHOICE, "avg_pool", choices=CA_DOWNSCALE_MODES, when=CA_ON),
    Param("ca_factor", "CA downscale factor", FLOAT, 2.0, 1.0, 4.0, 0.5, when=CA_ON),
    Param("ca_upscale_mode", "CA upscale mode", CHOICE, "bicubic", choices=UPSCALE_MODES, when=CA_ON),
    Param("time_mode", "Time windows in", CHOICE, PERCENT, choices=(PERCENT, STEP_FRACTION),
          help="percent: of the noise schedule, through the model's percent->sigma; step fraction: of the "
               "sampling steps, as the original HiDiffusion counts them."),
))


@dataclass
class Settings:
    """What will run on one pass, resolved from the values and the model (block numbers validated)."""
    raunet: tuple[int, int] | None
    raunet_window: Window | None
    upscale_mode: str
    ca: tuple[int, int] | None
    ca_window: Window | None
    ca_downscale_mode: str
    ca_factor: float
    ca_upscale_mode: str
    msw_window: Window | None
    notes: list[str] = field(default_factory=list)
    off_reason: str = "this preset is off for this model and size"     # said when nothing applies

    def describe(self) -> str:
        parts = []
        if self.raunet:
            parts.append(f"RAU-Net input {self.raunet[0]}/output {self.raunet[1]} "
                         f"{self.raunet_window.start:g}-{self.raunet_window.end:g} ({self.upscale_mode})")
        if self.ca:
            parts.append(f"CA input {self.ca[0]}/output {self.ca[1]} {self.ca_window.start:g}-{self.ca_window.end:g}")
        if self.msw_window:
            parts.append(f"MSW-MSA {self.msw_window.start:g}-{self.msw_window.end:g}")
        return "; ".join(parts) or f"nothing ({self.off_reason})"


def auto_resolution(family: str, width: int, height: int) -> str:
    """Preset for an image size: up to 1.5x the native side -> low, up to 3x -> high, beyond -> ultra."""
    ratio = (width * height) / NATIVE_SIDE[family] ** 2
    return "low" if ratio <= 2.25 else "high" if ratio <= 9 else "ultra"


def checked_window(values: dict, prefix: str, label: str) -> Window:
    """The ``<prefix>_start`` .. ``<prefix>_end`` window; ValueError when it starts after it ends."""
    start, end = values[f"{prefix}_start"], values[f"{prefix}_end"]
    if start > end:
        raise ValueError(f"{label} start {start:g} is after its end {end:g} (fractions of sampling, 0 = start)")
    return Window(start, end)


def resolve(values: dict, family: str, width: int, height: int) -> Settings:
    """The blocks and windows to apply; ValueError naming the valid pairs for a wrong advanced pair, or the
    window that starts after it ends."""
    msw = checked_window(values, "msw", "MSW-MSA") if values["msw_msa"] else None
    if values["mode"] == SIMPLE:
        mode = values["resolution"]
        mode = auto_resolution(family, width, height) if mode == AUTO else mode
        chosen = preset(family, mode)
        return Settings(chosen.raunet, chosen.raunet_window, "nearest", chosen.ca, chosen.ca_window,
                        "avg_pool", 2.0, "bicubic", msw, [f"preset {family} {mode}"])
    notes = []
    if family == "sdxl":
        values = dict(values)
        for kind, sdxl_pair in SDXL_ADVANCED_PAIRS.items():
            if (values[f"{kind}_in"], values[f"{kind}_out"]) == SD15_ADVANCED_PAIRS[kind]:
                values[f"{kind}_in"], values[f"{kind}_out"] = sdxl_pair
                notes.append(f"{kind} blocks: SDXL defaults {sdxl_pair} used in place of the SD1.5 ones")
    raunet = validate_pair(family, "raunet", (values["raunet_in"], values["raunet_out"])) if values["raunet"] else None
    ca = validate_pair(family, "ca", (values["ca_in"], values["ca_out"])) if values["ca"] else None
    return Settings(raunet, checked_window(values, "raunet", "RAU-Net") if raunet else None,
                    values["upscale_mode"], ca, checked_window(values, "ca", "CA") if ca else None,
                    values["ca_downscale_mode"], values["ca_factor"], values["ca_upscale_mode"], msw, notes,
                    "RAU-Net, CA and MSW-MSA are all off")


def _active(transformer_options: dict, window: tuple[float, float], sigma_of: HostSigma) -> bool:
    sigma = sigma_of(transformer_options.get("sigmas"))
    return sigma is not None and in_sigma_window(sigma, *window)


def _block_is(transformer_options: dict, block: str, number: int) -> bool:
    current = transformer_options.get("block")
    return current is not None and current[0] == block and int(current[1]) == number


@dataclass
class BlockPatches:
    """Block-level functions to install, by the WebUI's patch names (plus "upsample_before" for the
    inner modifier that resizes before a paired Upsample)."""
    input_block_patch: list = field(default_factory=list)
    input_block_patch_after_skip: list = field(default_factory=list)
    output_block_patch: list = field(default_factory=list)
    upsample_before: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.input_block_patch or self.input_block_patch_after_skip or self.output_block_patch
                    or self.upsample_before)


# transformer_options key (per UNet call): the size of the skip stored by RAU-Net's input block - 1, which
# is the skip the paired Upsample's output is concatenated with (whatever CA pooled before it)
SKIP_HW = "omost_hidiffusion_skip_hw"


def percent_windows(info: ModelInfo):
    """Window -> (start sigma, end sigma) through the model's percent -> sigma (the default time mode)."""
    return lambda window: sigma_window(window, info.percent_to_sigma)


def block_patches(settings: Settings, info: ModelInfo, to_sigma=None) -> BlockPatches:
    to_sigma = to_sigma or percent_windows(info)
    patches = BlockPatches()
    sigma_of = HostSigma()          # one device read per UNet forward, shared by the patches
    if settings.raunet:
        block_in, block_out = settings.raunet
        window = to_sigma(settings.raunet_window)

        def keep_even_before_downsample(h, transformer_options):
            if not _block_is(transformer_options, "input", block_in - 1):
                return h
            transformer_options[SKIP_HW] = tuple(h.shape[-2:])
            return keep_even(h) if _active(transformer_options, window, sigma_of) else h
        patches.input_block_patch_after_skip.append(keep_even_before_downsample)

        if settings.upscale_mode != "nearest":
            def resize_before_upsample(h, transformer_options):
                if _block_is(transformer_options, "output", block_out) and _active(transformer_options, window, sigma_of):
                    return resize_to(h, transformer_options[SKIP_HW], settings.upscale_mode)
                return h
            patches.upsample_before.append(resize_before_upsample)

    if settings.ca:
        ca_in, ca_out = settings.ca
        ca_window = to_sigma(settings.ca_window)

        def ca_pool(h, transformer_options):
            if _block_is(transformer_options, "input", ca_in) and _active(transformer_options, ca_window, sigma_of):
                return ca_downsample(h, settings.ca_factor, settings.ca_downscale_mode)
            return h

        def ca_restore(h, hsp, transformer_options):
            if _block_is(transformer_options, "output", ca_out) and tuple(h.shape[-2:]) != tuple(hsp.shape[-2:]):
                return ca_upsample(h, tuple(hsp.shape[-2:]), settings.ca_upscale_mode), hsp
            return h, hsp
        patches.input_block_patch.append(ca_pool)
        patches.output_block_patch.append(ca_restore)
    return patches


def msw_blocks(family: str) -> set[tuple[str, int]]:
    """(block, number) of the attention blocks MSW-MSA runs on (every transformer depth inside them)."""
    return {(block, number) for block, numbers in MSW_LAYERS[family].items() for number in numbers}


@dataclass
class MswMsaStage:
    info: ModelInfo
    window: tuple[float, float]        # (start sigma, end sigma)
    seed: int
    name: str = "MSW-MSA"
    target: str = ATTN1
    order: int = 20
    exclusive: str = PATTERN_GROUP
    precedence: int = MSW_MSA_PRECEDENCE

    def __post_init__(self):
        self.blocks = msw_blocks(self.info.unet_family)
        self.generators: dict[LayerKey, torch.Generator] = {}
        self.previous: dict[LayerKey, int] = {}

    def applies(self, layer: LayerKey) -> bool:
        return (layer.block, layer.number) in self.blocks

    def active(self, call: AttnCall) -> bool:
        return call.sigma is not None and in_sigma_window(call.sigma, *self.window)

    def __call__(self, q, k, v, call: AttnCall, inner):
        if k.shape[1] != q.shape[1]:      # keys already changed by a stage inside us: windows do not apply
            return inner(q, k, v, call)
        layer = call.layer
        if layer not in self.generators:
            self.generators[layer] = torch.Generator().manual_seed(layer_seed(self.seed, layer))
        shift = draw_shift(self.generators[layer], self.previous.get(layer))
        self.previous[layer] = shift
        return msw_msa_attention(q, k, v, call.heads, call.hw, shift)


def stages(settings: Settings, info: ModelInfo, seed: int, to_sigma=None) -> list:
    if settings.msw_window is None:
        return []
    return [MswMsaStage(info, (to_sigma or percent_windows(info))(settings.msw_window), seed)]

