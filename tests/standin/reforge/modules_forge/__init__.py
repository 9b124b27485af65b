# Stand-in package mirroring reForge modules_forge @ 3b56b268.
