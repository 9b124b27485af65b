"""The only code that touches WebUI internals (Forge main / Neo ``backend``, reForge / Classic ``ldm_patched``)."""

import logging

_log = logging.getLogger("sd-forge-omost")
if not _log.handlers:      # the WebUI's console shows what each accordion installed and every problem
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[sd-forge-omost] %(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False
