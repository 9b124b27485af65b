# A toy first-stage model (VAE encoder) for both flavours; no weights to download. Mirrors what the WebUI
# sees of the real encode path:
#   Forge main  backend/patcher/vae.py VAE.encode / encode_inner (input [B, H, W, 3] in [0, 1], 2 * p - 1,
#               latent [B, 4, H // 8, W // 8], unscaled), backend/nn/vae.py IntegratedAutoencoderKL.process_in
#               ((latent - shift_factor) * scaling_factor), backend/diffusion_engine/sd15.py / sd20.py /
#               sdxl.py encode_first_stage (inference mode)                                        @ dfdcbab6
#   reForge     ldm_patched/modules/sd.py VAE.encode (same contract), ldm_patched/modules/latent_formats.py
#               SD15 / SDXL process_in (latent * scale_factor), modules_forge/forge_loader.py
#               patched_encode_first_stage (inference mode)                                        @ 3b56b268
# Simplified: the encoder is 8x8 average pooling of the [-1, 1] image and a fixed, seeded 4x3 matrix plus
# bias (one per model seed); deterministic (the real one samples the posterior's mean as well: Forge's
# regulation=None). No tiling, no memory checks, no decoder. Height and width must be multiples of 8.
import torch

DOWNSCALE = 8
LATENT_CHANNELS = 4
SCALE_FACTORS = {"sd15": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def latent_scale_factor(family):
    if family not in SCALE_FACTORS:
        raise ValueError(f"no latent scale factor for model family {family!r}; the stand-in has {sorted(SCALE_FACTORS)}")
    return SCALE_FACTORS[family]


def toy_encoder_weights(seed):
    """The fixed 4x3 matrix and 4-bias of the toy encoder for a model seed (float32)."""
    generator = torch.Generator().manual_seed(int(seed) + 201)
    weight = torch.randn(LATENT_CHANNELS, 3, generator=generator) * 0.5
    bias = torch.randn(LATENT_CHANNELS, generator=generator) * 0.1
    return weight, bias


class LatentScaling:
    """Forge's first_stage_model.process_in ((latent - shift_factor) * scaling_factor) / reForge's latent_format."""

    def __init__(self, scale_factor, shift_factor=0.0):
        self.scale_factor, self.shift_factor = scale_factor, shift_factor

    @property
    def scaling_factor(self):     # the Forge name
        return self.scale_factor

    def process_in(self, latent):
        return (latent - self.shift_factor) * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor + self.shift_factor


class ToyVAE:
    """forge_objects.vae: encode(pixels [B, H, W, 3] in [0, 1]) -> unscaled latent [B, 4, H/8, W/8]."""

    def __init__(self, seed, first_stage_model=None):
        self.weight, self.bias = toy_encoder_weights(seed)
        self.first_stage_model = first_stage_model
        self.latent_channels = LATENT_CHANNELS
        self.downscale_ratio = DOWNSCALE

    def encode(self, pixel_samples):
        if pixel_samples.ndim != 4 or pixel_samples.shape[-1] != 3:
            raise ValueError(f"VAE.encode takes [B, H, W, 3] pixels in [0, 1]; got shape {list(pixel_samples.shape)}")
        height, width = pixel_samples.shape[1:3]
        if height % DOWNSCALE or width % DOWNSCALE:
            raise ValueError(f"image size {width}x{height} is not a multiple of {DOWNSCALE} (the WebUI requires it)")
        pixels = 2.0 * pixel_samples.movedim(-1, 1).float() - 1.0
        pooled = torch.nn.functional.avg_pool2d(pixels, DOWNSCALE)
        return torch.einsum("oc,bchw->bohw", self.weight, pooled) + self.bias[None, :, None, None]


@torch.inference_mode()
def encode_first_stage(vae, latent_scaling, x):
    """sd_model.encode_first_stage: x in [-1, 1], [B, 3, H, W] -> the scaled latent (an inference tensor)."""
    sample = vae.encode(x.movedim(1, -1) * 0.5 + 0.5)
    return latent_scaling.process_in(sample).to(x)
