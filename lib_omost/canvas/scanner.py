"""Grouping lines of Python source into top-level statements, one line at a time.

The scanner looks only at what decides where a statement ends: brackets, string quotes (single and triple,
with backslash escapes), comments and backslash continuations. Its state survives between lines, so a
stream is scanned once in total, however it is chunked. It evaluates nothing; the statements it returns
still go through ``ast.parse`` and the parser's allow-list.
"""

from __future__ import annotations

import re

# text that cannot change the scanner's state: no bracket, comment, backslash or quote, except whole
# one-line strings without escapes (not the start of a triple quote); skipped in one regex step
_NEUTRAL = re.compile(r"""(?:[^'"#()\[\]{}\\]+|'(?!'')[^'\\]*'|"(?!"")[^"\\]*")*""")
# inside a string: an escape (backslash + any char, or a backslash ending the line) or the closing quote
_STRING_END = {q: re.compile(r"\\(?:.|$)|" + re.escape(q)) for q in ("'", '"', "'''", '"""')}
_OPENING = frozenset("([{")


class StatementScanner:
    """Feed complete lines (no newline) with ``push``; it returns a statement's text once a line ends it."""

    def __init__(self) -> None:
        self.depth = 0  # open brackets
        self.quote: str | None = None  # the quote that closes the string we are in, if any
        self.lines: list[str] = []  # lines of the statement in progress
        self.start_line: int | None = None  # its first line number

    @property
    def is_open(self) -> bool:
        """Whether a statement has started and not ended."""
        return bool(self.lines)

    def pending(self) -> tuple[str, int] | None:
        """The unfinished statement's text and first line number, if any."""
        return ("\n".join(self.lines), self.start_line) if self.lines else None

    def push(self, line: str, line_no: int, final: bool = False) -> tuple[str, int] | None:
        """Add one line; returns (statement text, first line number) when this line ends a statement.
        A line that ends inside a one-line string (a syntax error) ends the statement too, so the error
        is reported at once rather than waiting for brackets that may never close -- unless ``final``
        (the text stops mid-line, so the string was cut, not broken)."""
        if not self.lines:
            stripped = line.lstrip()
            if not stripped or stripped[0] == "#":
                return None  # blank or comment-only line between statements
            self.start_line = line_no
        self.lines.append(line)
        continued, open_string = self._scan(line)
        if open_string:
            if final:
                self.quote = open_string
                return None
            return self._take()
        if not (continued or self.quote or self.depth > 0):
            return self._take()
        return None

    def _take(self) -> tuple[str, int]:
        statement = ("\n".join(self.lines), self.start_line)
        self.lines, self.depth, self.quote, self.start_line = [], 0, None, None
        return statement

    def _scan(self, line: str) -> tuple[bool, str | None]:
        """Update depth/quote over one line; returns (continues on the next line, the quote of a one-line
        string left open at the end of the line, if any)."""
        pos, depth, quote = 0, self.depth, self.quote
        while True:
            if quote is not None:
                m = _STRING_END[quote].search(line, pos)
                if m is None:
                    if len(quote) == 1:  # a one-line string left open at the end of the line
                        self.depth, self.quote = depth, None
                        return False, quote
                    break  # a triple-quoted string goes on
                pos = m.end()
                token = m.group()
                if token[0] == "\\":
                    if len(token) == 1:  # backslash at the end of the line: the string goes on
                        break
                    continue
                quote = None
                continue
            start = _NEUTRAL.match(line, pos).end()
            if start == len(line):
                self.depth, self.quote = depth, None
                return line.endswith("\\"), None
            c = line[start]
            pos = start + 1
            if c == "#":
                self.depth, self.quote = depth, None
                return False, None
            if c in _OPENING:
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "\\":
                continue  # a stray backslash mid-line: a syntax error that ast.parse reports
            elif line.startswith(c * 3, start):
                quote, pos = c * 3, start + 3
            else:
                quote = c
        self.depth, self.quote = depth, quote
        return True, None
