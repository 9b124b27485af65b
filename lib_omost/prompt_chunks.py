"""Omost's prompt encoding, tokenizer-agnostic: the greedy sub-prompt bags that turn each region's prompt
tree (``lib_omost.canvas.prompt_tree``) into 75-token chunks.

Bags: each chunk holds the region's prefixes followed by one bag of whole suffixes, so every chunk is
self-contained and at most 75 tokens (Omost's code; its README's example implies under 75). Suffixes are
packed greedily in order; a suffix longer than the room left stands alone, cut to fit. A region's
conditioning is its chunks concatenated. Token counts come from a pluggable counter (the WebUI's CLIP
tokenizer; ``count_words`` here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from lib_omost.canvas.model import Canvas
from lib_omost.canvas.prompt_tree import RegionPrompt, canvas_prompts

TokenCounter = Callable[[str], int]
Cutter = Callable[[str, int, TokenCounter], str]

CHUNK_TOKENS = 75  # CLIP's 77 minus the start and end tokens
MAX_PREFIX_TOKENS = 50  # longer prefixes are cut, so every chunk keeps room for its suffixes

_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")


# ---- token counting and cutting ----------------------------------------------------------------------

def count_words(text: str) -> int:
    """A tokenizer-free stand-in: words and punctuation marks each count one token."""
    return len(_WORD_OR_MARK.findall(text))


def _longest_fitting(n: int, fits: Callable[[int], bool]) -> int:
    """Largest k in [0, n] with fits(k), for a monotone fits with fits(0) true (binary search)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def cut_to_tokens(text: str, limit: int, count_tokens: TokenCounter) -> str:
    """The longest run of whole leading words of ``text`` counting at most ``limit`` tokens (the leading
    characters of the first word when even that word alone is too long)."""
    if count_tokens(text) <= limit:
        return text
    if limit <= 0:
        return ""
    words = text.split()
    k = _longest_fitting(len(words), lambda k: count_tokens(" ".join(words[:k])) <= limit)
    if k > 0:
        return " ".join(words[:k])
    first = words[0]
    return first[:_longest_fitting(len(first), lambda k: count_tokens(first[:k]) <= limit)]


# ---- greedy bags -------------------------------------------------------------------------------------

def pack_bags(lengths: Sequence[int], room: int) -> list[list[int]]:
    """Greedy bags of item indices, in order: an item joins the current bag while the bag stays at most
    ``room`` tokens, else it starts a new bag; an item that alone exceeds that stands alone (the caller
    cuts it). This is Omost's code (a new bag only when the sum would exceed the room), so a chunk may hold
    exactly 75 tokens: room 75 with 25, 35, 5, 60, 15, 25 gives [0, 1, 2], [3, 4], [5] (the worked example
    in Omost's README, whose [0, 1, 2], [3], [4, 5] would need "under 75", follows its text, not its code)."""
    bags: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if bags and total + n <= room:
            bags[-1].append(i)
            total += n
        else:
            bags.append([i])
            total = n
    return bags


def fit_prefixes(prefixes: Sequence[str], limit: int, count_tokens: TokenCounter,
                 cut: Cutter = cut_to_tokens) -> list[str]:
    """Prefixes cut to at most ``limit`` tokens in all, shortening the longest ones first: each keeps
    min(its length, cap) tokens with the largest cap that fits."""
    lengths = [count_tokens(p) for p in prefixes]
    if sum(lengths) <= limit:
        return list(prefixes)
    cap = max(lengths)
    while cap > 0 and sum(min(n, cap) for n in lengths) > limit:
        cap -= 1
    return [p if n <= cap else cut(p, cap, count_tokens) for p, n in zip(prefixes, lengths)]


def region_chunks(prompt: RegionPrompt, count_tokens: TokenCounter = count_words, *,
                  chunk_tokens: int = CHUNK_TOKENS, max_prefix_tokens: int = MAX_PREFIX_TOKENS,
                  cut: Cutter = cut_to_tokens) -> list[str]:
    """The chunk texts of one region: prefixes + one bag each (at least one chunk), at most chunk_tokens."""
    prefixes = fit_prefixes(prompt.prefixes, min(max_prefix_tokens, chunk_tokens - 1), count_tokens, cut)
    room = chunk_tokens - sum(count_tokens(p) for p in prefixes)
    lengths = [count_tokens(s) for s in prompt.suffixes]
    suffixes = [s if n <= room else cut(s, room, count_tokens) for s, n in zip(prompt.suffixes, lengths)]
    lengths = [n if n <= room else count_tokens(s) for s, n in zip(suffixes, lengths)]
    bags = pack_bags(lengths, room)
    return [" ".join([*prefixes, *(suffixes[i] for i in bag)]) for bag in bags] or [" ".join(prefixes)]


def canvas_chunks(canvas: Canvas, count_tokens: TokenCounter = count_words, **options) -> list[list[str]]:
    """Chunk texts of every region, global first then far to near (options as for region_chunks)."""
    return [region_chunks(p, count_tokens, **options) for p in canvas_prompts(canvas)]
