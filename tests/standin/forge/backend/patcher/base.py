# Mirrors Forge main backend/patcher/base.py @ dfdcbab685e57677014f05a3309b48cc87383167:
# ModelPatcher(model, load_device, offload_device, size, current_device) with
# model_options = {"transformer_options": {}} and clone() deep-copying model_options. The setters and
# storage keys (shared with reForge) come from standin_core.patcher.
import copy

from standin_core.patcher import (PatcherSetters, set_model_options_patch_replace,  # noqa: F401 (real names)
                                  set_model_options_post_cfg_function, set_model_options_pre_cfg_function)


class ModelPatcher(PatcherSetters):
    def __init__(self, model, load_device=None, offload_device=None, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device, self.offload_device = load_device, offload_device
        self.current_device = offload_device if current_device is None else current_device

    def clone(self):
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def set_model_vae_encode_wrapper(self, wrapper_function):
        self.model_options["model_vae_encode_wrapper"] = wrapper_function

    def set_model_vae_decode_wrapper(self, wrapper_function):
        self.model_options["model_vae_decode_wrapper"] = wrapper_function

    def model_dtype(self):
        return self.model.computation_dtype
