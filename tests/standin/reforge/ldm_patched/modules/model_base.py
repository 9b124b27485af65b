# Mirrors reForge ldm_patched/modules/model_base.py @ 3b56b268: BaseModel with model_config (unet_config
# dict), diffusion_model (UNetModel built from unet_config), model_sampling, apply_model(x, t=sigma, ...).
import torch

from ldm_patched.ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm_patched.modules.model_sampling import ModelSamplingDiscrete
from standin_core import memory
from standin_core.batching import apply_eps_model


class ModelConfig:
    """The fields of reForge's supported_models_base.BASE that extensions read."""

    def __init__(self, unet_config, sampling_settings=None, latent_format=None):
        self.unet_config = dict(unet_config)
        self.sampling_settings = dict(sampling_settings or {})
        self.latent_format = latent_format      # latent_formats.SD15 / SDXL: process_in = latent * scale_factor
        self.manual_cast_dtype = None


class BaseModel(torch.nn.Module):
    def __init__(self, model_config, device=None, unet_model=UNetModel):
        super().__init__()
        self.model_config = model_config
        self.manual_cast_dtype = None
        self.device = device
        self.current_patcher = None
        self.diffusion_model = unet_model(**model_config.unet_config)
        self.model_sampling = ModelSamplingDiscrete(model_config)
        self.adm_channels = model_config.unet_config.get("adm_in_channels") or 0

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return apply_eps_model(self.model_sampling, self.diffusion_model, x, t, c_concat, c_crossattn, control,
                               transformer_options, **kwargs)

    def get_dtype(self):
        return torch.float32

    def memory_required(self, input_shape, cond_shapes={}):
        return memory.rows_required(input_shape)
