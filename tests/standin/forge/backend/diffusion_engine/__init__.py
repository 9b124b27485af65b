# Stand-in package mirroring Forge main backend/diffusion_engine @ dfdcbab6.
