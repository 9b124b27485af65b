# Mirrors reForge modules_forge/unet_patcher.py @ 3b56b268ad9158ee8b30900973b6ccda4ec22241: the class of
# p.sd_model.forge_objects.unet in reForge. Same UnetPatcher setters as Forge main (standin_core.patcher),
# including add_block_modifier / add_block_inner_modifier, whose lists reForge's UNet never reads.
import copy

from ldm_patched.modules.model_patcher import ModelPatcher
from standin_core.patcher import UnetPatcherOptions


class UnetPatcher(UnetPatcherOptions, ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None
        self.compiled = False

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.compiled = self.compiled
        n.parent = self
        return n
