"""RefDrop reference files that are empty, cut, random, crafted or inconsistent: every one is refused at load
with a ReferenceFileError naming the file and what is wrong (never another exception, never a tensor that
could abort sampling later); writing into a folder that cannot be written is a ReferenceSaveError."""

import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_omost.attention.refdrop_file import (
    ReferenceFileError,
    ReferenceSaveError,
    load_reference,
    read_reference_info,
    save_reference,
)
from lib_omost.attention.refdrop_store import (
    COND,
    UNCOND,
    KVEntry,
    ReferenceBudgetError,
    ReferenceStore,
)

C = 8
META = {"format": "sd-forge-omost.refdrop.v1", "model_family": "sd15", "steps": "2", "resolution": "64x64",
        "kv_width": json.dumps({"input:1:0": C})}
META_V2 = {**META, "format": "sd-forge-omost.refdrop.v2"}
FORMS = ("kv", "input", "input8")        # format v1 (K and V), v2 16-bit and 8-bit attention input


def entry(step=0, layer="input:1:0", branch="cond", which="k"):
    return f"step{step:04d}/{layer}/{branch}/{which}"


def good_tensors(rows=1, tokens=4, width=C, dtype=torch.float16):
    return {entry(s, which=w): torch.randn(rows, tokens, width, generator=torch.Generator().manual_seed(s)).to(dtype)
            for s in (0, 1) for w in ("k", "v")}


def valid_file(path, form="kv") -> str:
    """A reference of format v1 (K/V entries, as the code before format v2 wrote them) or v2 (16/8-bit inputs)."""
    store = ReferenceStore(keep_uncond=True, compact=form == "input8")
    for step in (0, 1):
        if form == "kv":
            for branch in (COND, UNCOND):
                store.put(step, "input:1:0", branch, KVEntry(torch.randn(1, 4, C).half(), torch.randn(1, 4, C).half()))
        else:
            store.record(step, "input:1:0", torch.randn(2, 4, C), cond_rows=[0], uncond_rows=[1])
    save_reference(store, str(path), model_family="sd15", resolution=(64, 64), steps=2)
    return str(path)


def write(path, tensors=None, metadata=None) -> str:
    from safetensors.torch import save_file
    save_file(good_tensors() if tensors is None else tensors, str(path), metadata=META if metadata is None else metadata)
    return str(path)


def raw(path, header: dict, data: bytes = b"") -> str:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


def refused(path, match: str):
    with pytest.raises(ReferenceFileError) as e:
        load_reference(path)
    message = str(e.value)
    assert os.path.basename(path) in message and match in message, message
    assert "invalid literal" not in message and len(message) < 400
    return message


# --- bytes ---------------------------------------------------------------------------------------------------

def test_empty_cut_random_and_absurd_header_files(tmp_path):
    whole = open(valid_file(tmp_path / "v.safetensors"), "rb").read()
    cases = {
        "empty": b"",
        "cut_in_the_data": whole[:-10],
        "cut_in_the_header": whole[:40],
        "cut_in_the_length": whole[:5],
        "random": os.urandom(2000),
        "huge_header_length": struct.pack("<Q", 2 ** 62) + b"{}",
        "header_longer_than_the_file": struct.pack("<Q", 50_000_000) + b"{",
        "header_not_json": struct.pack("<Q", 5) + b"nope!",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        refused(str(path), "is not a readable safetensors file")
        with pytest.raises(ReferenceFileError):
            read_reference_info(str(path))


def test_a_folder_in_place_of_the_file(tmp_path):
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    refused(str(folder), "cannot be read")


# --- metadata --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["model_family", "steps", "resolution", "kv_width"])
def test_metadata_lacking_a_key(tmp_path, key):
    path = write(tmp_path / "m.safetensors", metadata={k: v for k, v in META.items() if k != key})
    refused(path, f"its metadata lacks '{key}'")


def test_metadata_of_another_format(tmp_path):
    refused(write(tmp_path / "f.safetensors", metadata={**META, "format": "x" * 5000}), "not a RefDrop reference")
    refused(write(tmp_path / "n.safetensors", metadata={}), "not a RefDrop reference")


BAD_METADATA = [
    ("model_family", "flux", "sd15 or sd2 or sdxl"),
    ("model_family", "", "sd15 or sd2 or sdxl"),
    ("steps", "abc", "a whole number from 1 to 10000"),
    ("steps", "0", "a whole number from 1 to 10000"),
    ("steps", "-3", "a whole number from 1 to 10000"),
    ("steps", "1e3", "a whole number from 1 to 10000"),
    ("steps", "9" * 5000, "a whole number from 1 to 10000"),
    ("steps", "\u0663", "a whole number from 1 to 10000"),          # a digit, but not 0-9
    ("resolution", "512", "WIDTHxHEIGHT"),
    ("resolution", "0x512", "WIDTHxHEIGHT"),
    ("resolution", "axb", "WIDTHxHEIGHT"),
    ("resolution", "512x512x3", "WIDTHxHEIGHT"),
    ("resolution", "9999999x1", "WIDTHxHEIGHT"),
    ("kv_width", "not json", "a JSON object"),
    ("kv_width", "[]", "a JSON object"),
    ("kv_width", "{}", "a JSON object"),
    ("kv_width", '{"input:1:0": "8"}', "a JSON object"),
    ("kv_width", '{"input:1:0": 8.5}', "a JSON object"),
    ("kv_width", '{"input:1:0": true}', "a JSON object"),
    ("kv_width", '{"input:1:0": -8}', "a JSON object"),
    ("kv_width", '{"somewhere": 8}', "a JSON object"),
    ("kv_width", "[" * 100_000, "a JSON object"),
]


@pytest.mark.parametrize("key, value, expected", BAD_METADATA, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD_METADATA)])
def test_metadata_of_the_wrong_type_or_range(tmp_path, key, value, expected):
    path = write(tmp_path / "m.safetensors", metadata={**META, key: value})
    message = refused(path, f"its metadata '{key}' is ")
    assert f"must be {expected}" in message


# --- tensors -------------------------------------------------------------------------------------------------------

def with_entry(name, tensor):
    return {**good_tensors(), name: tensor}


BAD_TENSORS = {
    "two rows": (with_entry(entry(0), torch.zeros(2, 4, C, dtype=torch.float16)), "has shape [2, 4, 8]"),
    "two dims": (with_entry(entry(0), torch.zeros(4, C, dtype=torch.float16)), "has shape [4, 8]"),
    "four dims": (with_entry(entry(0), torch.zeros(1, 1, 4, C, dtype=torch.float16)), "has shape [1, 1, 4, 8]"),
    "no tokens": ({entry(0, which=w): torch.zeros(1, 0, C, dtype=torch.float16) for w in "kv"}, "has shape [1, 0, 8]"),
    "other width": (with_entry(entry(0), torch.zeros(1, 4, 16, dtype=torch.float16)), "has shape [1, 4, 16]"),
    "integers": ({entry(0, which=w): torch.zeros(1, 4, C, dtype=torch.int32) for w in "kv"}, "has dtype I32"),
    "not an entry": (with_entry("weights", torch.zeros(1)), "tensor 'weights' is not a RefDrop entry"),
    "not k or v": (with_entry(entry(0, which="q"), torch.zeros(1, 4, C, dtype=torch.float16)), "is not a RefDrop entry"),
    "k without v": ({entry(0): torch.zeros(1, 4, C, dtype=torch.float16)}, "holds k, not k+v with one token"),
    "k and v differ": (with_entry(entry(0, which="v"), torch.zeros(1, 5, C, dtype=torch.float16)),
                       "holds k+v, not k+v with one token count"),
    "step past the end": (with_entry(entry(7), torch.zeros(1, 4, C, dtype=torch.float16)), "is for step 7"),
    "unlisted layer": (with_entry(entry(0, "output:9:0"), torch.zeros(1, 4, C, dtype=torch.float16)),
                       "does not list"),
    "not a finite number": (with_entry(entry(1, which="v"), torch.full((1, 4, C), float("nan"), dtype=torch.float16)),
                            "holds NaN or infinite values"),
    "infinite": (with_entry(entry(0), torch.full((1, 4, C), float("inf"), dtype=torch.float16)),
                 "holds NaN or infinite values"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_crafted_tensors_are_refused_before_sampling(tmp_path, case):
    tensors, match = BAD_TENSORS[case]
    refused(write(tmp_path / "t.safetensors", tensors), match)


def test_a_listed_layer_without_tensors_is_refused(tmp_path):
    metadata = {**META, "kv_width": json.dumps({"input:1:0": C, "output:9:0": C})}
    refused(write(tmp_path / "l.safetensors", metadata=metadata), "its tensors cover 1 layers but its kv_width")


def test_the_budget_is_checked_from_the_header_before_any_tensor_is_read(tmp_path):
    nan = with_entry(entry(1, which="v"), torch.full((1, 4, C), float("nan"), dtype=torch.float16))
    path = write(tmp_path / "b.safetensors", nan)
    with pytest.raises(ReferenceBudgetError, match="above the memory budget"):    # not the NaN, read later
        load_reference(path, budget_bytes=100)
    promised = raw(tmp_path / "big.safetensors",
                   {"__metadata__": META, entry(0): {"dtype": "F16", "shape": [1, 10 ** 6, C],
                                                      "data_offsets": [0, 16 * 10 ** 6]}})
    refused(promised, "is not a readable safetensors file")        # the header promises data the file lacks


@pytest.mark.parametrize("form", FORMS)
def test_a_valid_file_loads(tmp_path, form):
    store, info = load_reference(valid_file(tmp_path / "ok.safetensors", form))
    assert info.steps == 2 and len(store.entries) == 4
    assert all(entry[0].shape == (1, 4, C) and entry.width == C for entry in store.entries.values())
    assert {type(entry).__name__ for entry in store.entries.values()} == \
        {"kv": {"KVEntry"}, "input": {"InputEntry"}, "input8": {"QuantizedInput"}}[form]


def v2_tensors(parts: dict, step=0):
    """A v2 file's tensors: step 0 and 1 of input:1:0 (cond), with ``parts`` of step ``step`` replaced."""
    good = {entry(s, which="n"): torch.randn(1, 4, C).half() for s in (0, 1)}
    good = {k: v for k, v in good.items() if not k.startswith(f"step{step:04d}/")}
    return {**good, **{entry(step, which=part): tensor for part, tensor in parts.items()}}


U8 = torch.zeros(1, 4, C, dtype=torch.uint8)
SIDE = torch.ones(1, 1, C, dtype=torch.float16)
BAD_V2 = {
    "k and v in a v2 file": (v2_tensors({"k": torch.zeros(1, 4, C).half(), "v": torch.zeros(1, 4, C).half()}),
                             "holds k+v, not n or codes+low+scale"),
    "n and k": (v2_tensors({"n": torch.zeros(1, 4, C).half(), "k": torch.zeros(1, 4, C).half()}), "holds k+n"),
    "codes without scale": (v2_tensors({"codes": U8, "low": SIDE}), "holds codes+low, not n or codes+low+scale"),
    "codes and n": (v2_tensors({"codes": U8, "low": SIDE, "scale": SIDE.clone(), "n": torch.zeros(1, 4, C).half()}),
                    "holds codes+low+n+scale"),
    "codes as floats": (v2_tensors({"codes": U8.half(), "low": SIDE, "scale": SIDE.clone()}), "has dtype F16, not one of U8"),
    "n as bytes": (v2_tensors({"n": U8}), "has dtype U8, not one of F16, BF16, F32"),
    "scale per token": (v2_tensors({"codes": U8, "low": SIDE, "scale": torch.ones(1, 4, C).half()}),
                        "has shape [1, 4, 8], not [1, 1, 8] (one value per channel)"),
    "low of another width": (v2_tensors({"codes": U8, "low": torch.ones(1, 1, 3).half(), "scale": SIDE}),
                             "has shape [1, 1, 3]"),
    "codes of two rows": (v2_tensors({"codes": U8.repeat(2, 1, 1), "low": SIDE, "scale": SIDE.clone()}), "has shape [2, 4, 8]"),
    "scale as bf16": (v2_tensors({"codes": U8, "low": SIDE, "scale": SIDE.bfloat16()}), "has dtype BF16, not one of F16, F32"),
    "nan scale": (v2_tensors({"codes": U8, "low": SIDE, "scale": SIDE * float("nan")}, step=1), "holds NaN or infinite"),
    "infinite n": (v2_tensors({"n": torch.full((1, 4, C), float("inf")).half()}), "holds NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_V2))
def test_crafted_v2_entries_are_refused(tmp_path, case):
    tensors, match = BAD_V2[case]
    refused(write(tmp_path / "t.safetensors", tensors, META_V2), match)


def test_an_input_entry_in_a_v1_file_is_refused(tmp_path):
    refused(write(tmp_path / "t.safetensors", v2_tensors({})), "holds n, not k+v")


def test_the_budget_counts_each_parts_bytes_from_the_header(tmp_path):
    path = valid_file(tmp_path / "q.safetensors", "input8")
    needed = 4 * (4 * C + 2 * 2 * C)        # four entries: uint8 codes, fp16 offset and step per channel
    store, _ = load_reference(path, budget_bytes=needed)
    assert store.nbytes == needed
    with pytest.raises(ReferenceBudgetError, match="above the memory budget"):
        load_reference(path, budget_bytes=needed - 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_to_a_valid_file_is_refused_or_loads_usable_entries(tmp_path, data):
    form = data.draw(st.sampled_from(FORMS), label="form")
    whole = bytearray(open(valid_file(tmp_path / "fuzz.safetensors", form), "rb").read())
    cut = data.draw(st.integers(0, len(whole)), label="length")
    damaged = whole[:cut]
    for _ in range(data.draw(st.integers(0, 6), label="edits")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(damaged))
    try:
        store, info = load_reference(str(path), budget_bytes=1 << 20)
    except (ReferenceFileError, ReferenceBudgetError) as e:
        assert len(str(e)) < 400
        return
    for (step, layer, _), found in store.entries.items():
        first = found[0]                            # k, n or codes: [1, tokens, width]
        assert first.dim() == 3 and first.shape[0] == 1 and first.shape[1] >= 1
        assert first.shape[2] == found.width == info.widths[layer] and 0 <= step < info.steps
        assert all(t.shape in (first.shape, (1, 1, first.shape[2])) for t in found)
        assert all(torch.isfinite(t.float()).all() for t in found)
        k, v = found.kv("cpu", torch.float32, lambda n: (n, n))     # usable: K/V of the layer's shape
        assert k.shape == v.shape == first.shape


# --- writing ----------------------------------------------------------------------------------------------------

def test_a_folder_that_cannot_be_written_is_a_save_error_and_leaves_nothing(tmp_path):
    store = ReferenceStore()
    store.record(0, "input:1:0", torch.randn(1, 4, C), [0])
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    for path in (blocker / "refs" / "r.safetensors", blocker / "r.safetensors"):
        with pytest.raises(ReferenceSaveError) as e:
            save_reference(store, str(path), model_family="sd15", resolution=(64, 64), steps=1)
        assert e.value.reason and str(path) in str(e.value)
    taken = tmp_path / "taken.safetensors"
    taken.mkdir()                                                 # a folder where the file should go
    with pytest.raises(ReferenceSaveError):
        save_reference(store, str(taken), model_family="sd15", resolution=(64, 64), steps=1)
    assert sorted(os.listdir(tmp_path)) == ["a file", "taken.safetensors"] and not os.listdir(taken)
