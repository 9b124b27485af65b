# Stand-in package mirroring Forge main backend/sampling @ dfdcbab6.
