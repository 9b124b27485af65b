# Stand-in package mirroring Forge main backend/modules @ dfdcbab6.
