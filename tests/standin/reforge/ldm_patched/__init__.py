# Stand-in for reForge's ldm_patched package (Panchovix/stable-diffusion-webui-reForge @ 3b56b268).
