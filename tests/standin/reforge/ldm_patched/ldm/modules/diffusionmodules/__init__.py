# Stand-in package mirroring reForge ldm_patched/ldm/modules/diffusionmodules @ 3b56b268.
