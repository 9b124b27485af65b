# Mirrors Forge main backend/patcher/lora.py @ dfdcbab685e57677014f05a3309b48cc87383167 (through
# packages_3rdparty/comfyui_lora_collection/lora.py, which it calls): load_lora(lora, to_load) ->
# (patch_dict {model key: ("lora", (up, down, alpha, mid, dora_scale))}, remaining {file key: tensor});
# model_lora_keys_unet(model) / model_lora_keys_clip(model) -> key maps. File reading: standin_core.lora_files.
from standin_core import lora_files


def load_lora(lora, to_load):
    found, loaded = lora_files.read_lora(lora, to_load)
    patch_dict = {key: ("lora", factors) for key, factors in found.items()}
    return patch_dict, {k: v for k, v in lora.items() if k not in loaded}


def model_lora_keys_unet(model, key_map={}):
    return lora_files.model_lora_keys_unet(model, key_map)


def model_lora_keys_clip(model, key_map={}):
    return lora_files.model_lora_keys_clip(model, key_map)
