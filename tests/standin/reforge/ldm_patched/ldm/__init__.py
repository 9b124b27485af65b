# Stand-in package mirroring reForge ldm_patched/ldm @ 3b56b268.
