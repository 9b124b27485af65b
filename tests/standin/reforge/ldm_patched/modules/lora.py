# Mirrors reForge ldm_patched/modules/lora.py @ 3b56b268ad9158ee8b30900973b6ccda4ec22241: load_lora(lora,
# to_load, log_missing=True) -> {model key: adapter}, a plain LoRA being weight_adapter.lora.LoRAAdapter
# (name "lora", weights = (up, down, alpha, mid, dora_scale, reshape)); model_lora_keys_unet /
# model_lora_keys_clip (with the generic "text_encoders.<path>" names). File reading: standin_core.lora_files.
from standin_core import lora_files


class LoRAAdapter:
    """weight_adapter/lora.py LoRAAdapter: what load_lora returns for a plain LoRA."""
    name = "lora"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys, self.weights = loaded_keys, weights


def load_lora(lora, to_load, log_missing=True):
    found, loaded = lora_files.read_lora(lora, to_load)
    return {key: LoRAAdapter(loaded, (*factors, None)) for key, factors in found.items()}


def model_lora_keys_unet(model, key_map={}):
    return lora_files.model_lora_keys_unet(model, key_map)


def model_lora_keys_clip(model, key_map={}):
    return lora_files.model_lora_keys_clip(model, key_map, generic=True)
