"""The secrets of an LLM endpoint (the API key, credentials in the server URL) and the one function that masks
them, `redact`, applied wherever text from a server or an endpoint leaves the client: error messages (the
backend's boundary), the answer text itself (`StreamRedactor`, so a server that echoes the key into its
answer cannot put it into the chat, the canvas, the infotext or a saved file), the WebUI status line and the
CLI's stderr.

A secret is masked in each form it can take in a message: as it is, JSON- or repr-escaped (a server that
quotes it, our own repr of a server's text), percent-encoded (a URL), and, for URL credentials, as the
`Authorization: Basic` token httpx makes of them.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Iterable
from urllib.parse import quote, quote_plus, unquote

MASK = "***"

# scheme:// (optional), then everything up to the last '@' of the URL: the userinfo (user:password)
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<userinfo>[^@]*)@")


class Secret:
    """A string that never shows itself: repr/str print '***'; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str):
            raise TypeError("a secret must be a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def shown_url(url: str) -> str:
    """The URL as messages show it: credentials (user:password@) replaced by '***@'."""
    return _USERINFO.sub(lambda m: (m.group("scheme") or "") + MASK + "@", url, count=1)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(the URL without its user:password@, the (user, password) it held, percent-decoded, or None): requests
    go to the bare URL with the credentials as Basic auth, so no log line of the HTTP client shows them."""
    match = _USERINFO.match(url)
    if match is None or not match.group("userinfo"):
        return url, None
    user, _, password = match.group("userinfo").partition(":")
    return (match.group("scheme") or "") + url[match.end():], (unquote(user), unquote(password))


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials in a URL such as http://user:password@host/v1: the userinfo, the password (as typed
    and percent-decoded) and the Basic token httpx sends for them. A lone user name (http://token@host) is
    the credential itself; next to a password it is not secret."""
    match = _USERINFO.match(url or "")
    if match is None or not match.group("userinfo"):
        return ()
    userinfo = match.group("userinfo")
    user, colon, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode("utf-8")).decode("ascii")
    return tuple(s for s in (userinfo, password if colon else user, unquote(password if colon else user), token)
                 if s)


def secret_forms(secret: str) -> set[str]:
    """The ways `secret` can be written in a message: as is, JSON- or repr-escaped, percent-encoded."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
             ascii(secret)[1:-1], quote(secret, safe=""), quote_plus(secret, safe=""), unquote(secret)}
    return {form for form in forms if form}


def _all_forms(secrets: Iterable[str]) -> list[str]:
    """Every form of every secret, longest first (so a secret that contains another is masked whole)."""
    forms = set()
    for secret in secrets:
        if secret:
            forms |= secret_forms(secret)
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced by '***'."""
    return _mask(text, _all_forms(secrets))


def _mask(text: str, forms: list[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


class StreamRedactor:
    """`redact` for text that arrives in pieces (an answer's tokens): a secret split over several pieces is
    masked too. `feed` returns what is safe to show now and holds back the shortest tail that could still
    grow into a secret; `close` returns that tail at the end."""

    def __init__(self, secrets: Iterable[str]):
        self.forms = _all_forms(secrets)
        self._firsts = {form[0] for form in self.forms}
        self._longest = len(self.forms[0]) if self.forms else 0
        self._held = ""

    def feed(self, text: str) -> str:
        if not self.forms:
            return text
        text = _mask(self._held + text, self.forms)
        cut = self._tail_start(text)
        self._held = text[cut:]
        return text[:cut]

    def close(self) -> str:
        held, self._held = self._held, ""
        return held

    def _tail_start(self, text: str) -> int:
        """Where the tail that is a proper prefix of a secret form starts (len(text) when there is none)."""
        for i in range(max(0, len(text) - self._longest + 1), len(text)):
            if text[i] in self._firsts:
                tail = text[i:]
                if any(form.startswith(tail) for form in self.forms):
                    return i
        return len(text)
