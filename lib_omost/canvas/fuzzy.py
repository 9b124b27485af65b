"""Correcting near-miss values (enum phrases, colour names) only when the intended value is unambiguous.

The original Omost app fuzzy-matched silently ("top left" became "on the left"). Here a value is corrected
only when it is clearly one allowed value, and the caller always reports the correction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[\s\-_/,.]+")


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance; stops early (returning limit + 1) once it must exceed ``limit``."""
    if len(a) < len(b):
        a, b = b, a
    if limit is not None and len(a) - len(b) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if limit is not None and min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def unique_closest(value: str, candidates: Iterable[str], max_distance: int) -> str | None:
    """The one candidate within ``max_distance`` edits of ``value`` that is also at least 2 edits closer
    than any other candidate; None when there is no such clear winner."""
    scored = sorted((edit_distance(value, c, max_distance + 1), c) for c in candidates)
    if not scored or scored[0][0] > max_distance:
        return None
    if len(scored) > 1 and scored[1][0] < scored[0][0] + 2:
        return None
    return scored[0][1]


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, splitting on spaces, hyphens, underscores, slashes, commas, periods."""
    return [w for w in _SEPARATORS.split(text.lower()) if w]


def phrase_key(text: str, synonyms: dict[str, str], stopwords: frozenset[str]) -> frozenset[str]:
    """The content words of a phrase (synonyms mapped, stopwords dropped), order-free:
    "top left", "left-top" and "on the top-left" share one key."""
    return frozenset(synonyms.get(w, w) for w in words(text)) - stopwords


def correct_phrase(value: str, allowed: Iterable[str], synonyms: dict[str, str],
                   stopwords: frozenset[str]) -> str | None:
    """The allowed phrase ``value`` clearly means, or None. Exact → itself; same content words → that
    phrase; else a unique close spelling (at most 2 edits, and 2 closer than the runner-up)."""
    allowed = list(allowed)
    if value in allowed:
        return value
    key = phrase_key(value, synonyms, stopwords)
    same = [a for a in allowed if phrase_key(a, synonyms, stopwords) == key]
    if len(same) == 1:
        return same[0]
    if same:
        return None
    spelled = {" ".join(words(a)): a for a in allowed}
    close = unique_closest(" ".join(words(value)), spelled, 2)
    return None if close is None else spelled[close]
