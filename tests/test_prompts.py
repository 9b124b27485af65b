"""Prompt tree and greedy sub-prompt bags."""

from pathlib import Path

import pytest

from lib_omost.canvas import Canvas, GlobalRegion, Region, ordered_regions, parse_answer
from lib_omost.canvas.prompt_tree import RegionPrompt, canvas_prompts, global_prompt, local_prompt, normalize_prompt
from lib_omost.prompt_chunks import (
    CHUNK_TOKENS,
    canvas_chunks,
    count_words,
    cut_to_tokens,
    fit_prefixes,
    pack_bags,
    region_chunks,
)

SAMPLE = (Path(__file__).parent / "data" / "dragon_battle.response.md").read_text(encoding="utf-8")


def word_tokens(text):
    """Test counter: one token per whitespace-separated word."""
    return len(text.split())


def words(n, tag="w"):
    return " ".join(f"{tag}{i}" for i in range(n))


@pytest.mark.parametrize("text, expected", [
    ("A cat", "A cat."), ("A cat.", "A cat."), (" , A cat... ,", "A cat."), ("cat, dog,", "cat, dog."),
    ("", ""), (" ,. ", ""), ("\n A cat.\n", "A cat."), ("e.g. this", "e.g. this."),
])
def test_normalisation(text, expected):
    assert normalize_prompt(text) == expected
    assert normalize_prompt(normalize_prompt(text)) == expected


def test_prompt_tree_of_the_sample():
    canvas = parse_answer(SAMPLE).canvas
    g = canvas.global_region
    prompts = canvas_prompts(canvas)
    assert len(prompts) == 5
    assert prompts[0] == RegionPrompt((g.description,), tuple(map(normalize_prompt, g.detailed_descriptions + [g.tags])))
    assert prompts[0].suffixes[-1].startswith("battle, warriors") and prompts[0].suffixes[-1].endswith("illuminated.")
    for prompt, region in zip(prompts[1:], ordered_regions(canvas)):
        assert prompt.prefixes == (g.description, region.description)
        assert prompt.suffixes == tuple(map(normalize_prompt, region.detailed_descriptions + [
            region.tags, region.atmosphere, region.style, region.quality_meta]))
    assert prompts[1].prefixes[1] == "A stormy sky with flashes of lightning."  # farthest first


def test_empty_strings_are_dropped_from_the_tree():
    g = GlobalRegion(description="", tags="a, b")
    r = Region(rect=(0, 90, 0, 90), distance=1, description="Box", style=" . ")
    assert global_prompt(g) == RegionPrompt((), ("a, b.",))
    assert local_prompt(g, r) == RegionPrompt(("Box.",), ())


def test_worked_example_bags():
    # Omost's code: a new bag only when the sum would exceed the room (a bag of exactly 75 is allowed; its
    # README's example [[0, 1, 2], [3], [4, 5]] would need "under 75")
    assert pack_bags([25, 35, 5, 60, 15, 25], 75) == [[0, 1, 2], [3, 4], [5]]
    assert pack_bags([75, 1, 74, 1, 1], 75) == [[0], [1, 2], [3, 4]]
    assert pack_bags([], 75) == []
    assert pack_bags([80, 3], 75) == [[0], [1]]  # too long: alone


def test_region_chunks_follow_the_worked_example_with_a_word_counter():
    sizes = [25, 35, 5, 60, 15, 25]
    prompt = RegionPrompt((), tuple(words(n, f"s{k}_") for k, n in enumerate(sizes)))
    chunks = region_chunks(prompt, word_tokens)
    assert [word_tokens(c) for c in chunks] == [65, 75, 25]
    assert chunks[1] == prompt.suffixes[3] + " " + prompt.suffixes[4] and chunks[2] == prompt.suffixes[5]


def test_prefixes_start_every_chunk_and_bags_stay_under_the_room():
    prefixes = ("Global scene.", "A red boat.")  # 5 words: room 70, so bags hold at most 70
    suffixes = tuple(words(n, f"s{k}_") for k, n in enumerate([30, 30, 20, 71, 5]))
    chunks = region_chunks(RegionPrompt(prefixes, suffixes), word_tokens)
    for chunk in chunks:
        assert chunk.startswith("Global scene. A red boat. ")
        assert word_tokens(chunk) <= CHUNK_TOKENS
    bags = [chunk[len("Global scene. A red boat. "):].split(" ") for chunk in chunks]
    assert [len(b) for b in bags] == [60, 20, 70, 5]  # {30, 30}, {20}, {71 cut to 70}, {5}
    assert bags[2] == words(70, "s3_").split(" ")  # the over-long suffix keeps its leading words


def test_long_prefixes_are_cut_fairly_and_a_region_without_suffixes_has_one_chunk():
    long_global, local = words(60, "g"), words(20, "l")
    cut = fit_prefixes([long_global, local], 50, word_tokens)
    assert [word_tokens(p) for p in cut] == [30, 20]  # the longest is shortened first
    assert cut[0] == words(30, "g")
    chunks = region_chunks(RegionPrompt((long_global, local), ("tail words here",)), word_tokens)
    assert chunks == [words(30, "g") + " " + local + " tail words here"]
    assert region_chunks(RegionPrompt(("Only.",), ()), word_tokens) == ["Only."]
    assert region_chunks(RegionPrompt((), ()), word_tokens) == [""]


def test_cut_to_tokens():
    text = "one two three four five"
    assert cut_to_tokens(text, 3, word_tokens) == "one two three"
    assert cut_to_tokens(text, 10, word_tokens) == text
    assert cut_to_tokens(text, 0, word_tokens) == ""
    assert cut_to_tokens("abcdefghij", 4, len) == "abcd"  # one word longer than the limit: by characters
    assert count_words("A cat, sleeping.") == 5 and count_words("") == 0


def test_canvas_chunks_of_the_sample_with_the_default_counter():
    canvas = parse_answer(SAMPLE).canvas
    chunks = canvas_chunks(canvas)
    prompts = canvas_prompts(canvas)
    assert len(chunks) == 5
    for region_chunk_texts, prompt in zip(chunks, prompts):
        head = " ".join(prompt.prefixes)
        assert all(c.startswith(head) for c in region_chunk_texts)
        assert all(count_words(c) <= CHUNK_TOKENS for c in region_chunk_texts)
        # every suffix appears in exactly one chunk, in order
        joined = " ".join(c[len(head):].strip() for c in region_chunk_texts)
        assert joined == " ".join(prompt.suffixes)
    assert canvas_chunks(Canvas()) == [[""]]
