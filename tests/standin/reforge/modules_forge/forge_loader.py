# Mirrors reForge modules_forge/forge_loader.py @ 3b56b268: ForgeSD(unet, clip, vae, clipvision) with
# shallow_copy(), the holder behind p.sd_model.forge_objects in reForge.
class ForgeSD:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet, self.clip, self.vae, self.clipvision = unet, clip, vae, clipvision

    def shallow_copy(self):
        return ForgeSD(self.unet, self.clip, self.vae, self.clipvision)
