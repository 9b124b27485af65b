# Mirrors Forge main backend/diffusion_engine/base.py @ dfdcbab6: ForgeObjects(unet, clip, vae, clipvision)
# with shallow_copy() (new holder, same objects), the legacy flags of ForgeDiffusionEngine, and its
# get_first_stage_encoding (the identity) / encode_first_stage (overridden by the engines).
class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    matched_guesses = []

    def __init__(self):
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.current_lora_hash = str([])
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = False
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False
        self.is_inpaint = False

    def get_first_stage_encoding(self, x):
        return x            # the engines' encode_first_stage already returns the scaled latent

    def encode_first_stage(self, x):
        pass

    def is_webui_legacy_model(self):
        return self.is_sd1 or self.is_sd2 or self.is_sdxl or self.is_sd3
