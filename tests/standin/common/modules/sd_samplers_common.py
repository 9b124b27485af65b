# Mirrors modules/sd_samplers_common.py (Forge main @ dfdcbab6, reForge @ 3b56b268): setup_img2img_steps,
# approximation_indexes (reForge adds "Approx PCA": 4; standin_flavour.APPROXIMATION_INDEXES) and
# images_tensor_to_samples (image [B, 3, H, W] in [0, 1] -> latent; approximation None = opts.sd_vae_encode_method;
# 3 = TAESD, not modelled here; any other index encodes with the full model: image * 2 - 1, then
# model.get_first_stage_encoding(model.encode_first_stage(...)), one image at a time when B > 1).
# The stand-in models' encoder is the toy VAE of standin_core/vae.py.
import torch

import standin_flavour
from modules import shared
from modules.shared import opts

approximation_indexes = dict(standin_flavour.APPROXIMATION_INDEXES)
TAESD = 3


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def images_tensor_to_samples(image, approximation=None, model=None):
    """image [B, 3, H, W] in [0, 1] -> latent [B, 4, H / 8, W / 8]."""
    if approximation is None:
        approximation = approximation_indexes.get(opts.sd_vae_encode_method, 0)
    if approximation == TAESD:
        raise NotImplementedError("the stand-in has no TAESD encoder; use sd_vae_encode_method 'Full'")
    if model is None:
        model = shared.sd_model
    image = image.to(shared.device, dtype=torch.float32) * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))
