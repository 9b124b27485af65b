# Stand-in package mirroring reForge ldm_patched/modules @ 3b56b268.
