"""sd-forge-omost core library.

Importable without the WebUI: outside ``lib_omost.forge`` only the standard library, torch, numpy
and PIL are imported (``lib_omost.llm`` imports transformers / httpx lazily, where used).
"""

__version__ = "0.1.0"
