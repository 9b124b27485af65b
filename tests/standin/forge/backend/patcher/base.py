# Mirrors Forge main backend/patcher/base.py @ dfdcbab685e57677014f05a3309b48cc87383167:
# ModelPatcher(model, load_device, offload_device, size, current_device) with
# model_options = {"transformer_options": {}} and clone() deep-copying model_options; forge_patch_model /
# forge_unpatch_model set and restore the object patches (utils.get_attr / set_attr_raw). The setters and
# storage keys (shared with reForge) come from standin_core.patcher.
import copy

from backend import utils

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

    def forge_patch_model(self, target_device=None):
        for k, item in self.object_patches.items():
            old = utils.get_attr(self.model, k)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
            utils.set_attr_raw(self.model, k, item)
        return self.model

    def forge_unpatch_model(self, target_device=None):
        for k in list(self.object_patches_backup.keys()):
            utils.set_attr_raw(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup = {}

    def model_dtype(self):
        return self.model.computation_dtype
