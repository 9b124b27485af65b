"""The only code that touches WebUI internals (Forge main / Neo ``backend``, reForge / Classic ``ldm_patched``)."""
