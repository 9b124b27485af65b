# Mirrors Forge main backend/patcher/unet.py @ dfdcbab685e57677014f05a3309b48cc87383167:
# UnetPatcher.clone() (deep copy of model_options; controlnet list and extra fields carried over) and the
# UnetPatcher setters (block_modifiers, block_inner_modifiers, conditioning_modifiers, ...; shared with
# reForge's modules_forge UnetPatcher in standin_core.patcher) plus Forge-only set_group_norm_wrapper.
import copy

from backend.patcher.base import ModelPatcher
from standin_core.patcher import UnetPatcherOptions


class UnetPatcher(UnetPatcherOptions, ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def set_group_norm_wrapper(self, wrapper):
        self.set_transformer_option("group_norm_wrapper", wrapper)
