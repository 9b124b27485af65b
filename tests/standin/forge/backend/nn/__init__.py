# Stand-in package mirroring Forge main backend/nn @ dfdcbab6.
