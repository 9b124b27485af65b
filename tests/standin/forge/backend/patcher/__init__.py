# Stand-in package mirroring Forge main backend/patcher @ dfdcbab6.
