# Mirrors Forge main backend/modules/k_model.py @ dfdcbab6: KModel wraps the diffusion model with its
# predictor; apply_model(x, t=sigma, c_crossattn=..., transformer_options=..., **extra_conds).
import torch

from standin_core import memory
from standin_core.batching import apply_eps_model


class KModel(torch.nn.Module):
    def __init__(self, model, predictor, config=None):
        super().__init__()
        self.config = config
        self.diffusion_model = model
        self.predictor = predictor
        self.storage_dtype = self.computation_dtype = torch.float32

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        return apply_eps_model(self.predictor, self.diffusion_model, x, t, c_concat, c_crossattn, control,
                               transformer_options, **kwargs)

    def memory_required(self, input_shape):
        return memory.rows_required(input_shape)
