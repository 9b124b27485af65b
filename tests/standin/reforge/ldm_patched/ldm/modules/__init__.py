# Stand-in package mirroring reForge ldm_patched/ldm/modules @ 3b56b268.
