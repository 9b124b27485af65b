# Mirrors reForge ldm_patched/modules/model_patcher.py @ 3b56b268ad9158ee8b30900973b6ccda4ec22241:
# ModelPatcher(model, load_device, offload_device, size, weight_inplace_update) whose clone() deep-copies
# model_options; patch_model / unpatch_model set and restore the object patches (the weight patches and
# lowvram parts are not modelled). Setters and storage keys shared with Forge main come from standin_core.patcher; the
# reForge-only setters are here: set_model_emb_patch ("emb_patch"), set_model_forward_timestep_embed_patch
# ("forward_timestep_embed_patch", a list of (layer class, handler)), set_model_sampler_calc_cond_batch_function.
import copy

import ldm_patched.modules.utils

from standin_core.patcher import (PatcherSetters, set_model_options_patch_replace,  # noqa: F401 (real names)
                                  set_model_options_post_cfg_function, set_model_options_pre_cfg_function)


class ModelPatcher(PatcherSetters):
    def __init__(self, model, load_device=None, offload_device=None, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.load_device, self.offload_device = load_device, offload_device
        self.weight_inplace_update = weight_inplace_update
        self.parent = None

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size,
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        return n

    def set_model_sampler_calc_cond_batch_function(self, sampler_calc_cond_batch_function):
        self.model_options["sampler_calc_cond_batch_function"] = sampler_calc_cond_batch_function

    def set_model_emb_patch(self, patch):
        self.set_model_patch(patch, "emb_patch")

    def set_model_forward_timestep_embed_patch(self, patch):
        self.set_model_patch(patch, "forward_timestep_embed_patch")

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k in self.object_patches:
            old = ldm_patched.modules.utils.set_attr(self.model, k, self.object_patches[k])
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        for k in list(self.object_patches_backup.keys()):
            ldm_patched.modules.utils.set_attr(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup.clear()

    def model_dtype(self):
        return self.model.get_dtype()
