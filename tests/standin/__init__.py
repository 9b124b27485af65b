# The WebUI stand-in for tests (see harness.py for the entry points and TESTING.md for the purpose).
# tests/standin/common  -> `modules`, `launch`, built-in scripts/xyz_grid.py, shared `standin_core`
# tests/standin/forge   -> Forge main's `backend` (lllyasviel/stable-diffusion-webui-forge @ dfdcbab6)
# tests/standin/reforge -> reForge's `ldm_patched` + `modules_forge` (Panchovix/...-reForge @ 3b56b268)
