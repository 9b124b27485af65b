"""Text from an LLM or a canvas, made safe to print to a terminal.

Control characters (C0, DEL, C1: escape sequences can retitle, clear or hijack a terminal), bidirectional
overrides (they reorder what is shown) and lone surrogates (they cannot be encoded: printing one raises) are
written visibly as Python escapes (``\\x1b``, ``\\u202e``, ``\\ud800``). Newlines and tabs are kept where they
are layout.
"""

from __future__ import annotations

import re

_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_KEEPING_LAYOUT = re.compile(f"[{_UNSAFE}]")
_UNSAFE_ON_ONE_LINE = re.compile(f"[\t\n{_UNSAFE}]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, one_line: bool = False) -> str:
    """`text` with every unsafe character escaped; `one_line` escapes newlines and tabs too."""
    return (_UNSAFE_ON_ONE_LINE if one_line else _UNSAFE_KEEPING_LAYOUT).sub(_escape, text)
