# Stand-in package mirroring modules/api (Forge main @ dfdcbab6, reForge @ 3b56b268).
