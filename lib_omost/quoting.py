"""User input quoted in messages (notes, console lines, errors): always short, never failing.

Every message that repeats what a user, a file or a request gave quotes it with ``quoted``: a 200,000-character
name becomes its first characters and its length, an integer too long to print becomes its digit count, and a
deep or huge list is cut by ``reprlib``. ``shortened`` caps a whole message (the last line of defence for text
from elsewhere, e.g. a library's exception).
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

QUOTE_CHARS = 60          # about how much of a value a message repeats
NOTE_CHARS = 2_000        # the longest message one note may add

_LOG10_2 = math.log10(2)
_SHORT_INT_BITS = 128     # about 39 digits: longer integers are described, not printed


class _Quoter(reprlib.Repr):
    def __init__(self, limit: int):
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 6
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        # repr() itself raises ValueError beyond 4300 digits (Python's int conversion limit)
        if x.bit_length() > _SHORT_INT_BITS:
            return f"<an integer of about {int(x.bit_length() * _LOG10_2) + 1} digits>"
        return super().repr_int(x, level)


def quoted(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for a message, about ``limit`` characters at most; a cut string says how long it was."""
    text = _Quoter(limit).repr(value)
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value)} characters)"
    return text


def shortened(text: str, limit: int = NOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
