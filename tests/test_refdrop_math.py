"""RefDrop math, step counting, reference store and reference files (pure torch)."""

import math
from itertools import pairwise

import pytest
import torch

from lib_omost.attention.core import attention
from lib_omost.attention.plan import LayerKey
from lib_omost.attention.refdrop import (
    MissingReferenceError,
    ReferenceMismatchError,
    broadcast_reference,
    refdrop_attention,
    step_index,
)
from lib_omost.attention.refdrop_file import (
    check_reference_family,
    load_reference,
    read_reference_info,
    save_reference,
)
from lib_omost.attention.refdrop_store import (
    COND,
    INPUT8,
    INPUT16,
    UNCOND,
    KVEntry,
    ReferenceBudgetError,
    ReferenceStore,
    attn1_layers,
    entry_bytes,
    layer_label,
    public_layout_bytes,
    quantize_input,
    reference_bytes,
)

HEADS, DIM = 2, 4
C = HEADS * DIM
L1, L2 = LayerKey("input", 1, 0), LayerKey("output", 9, 0)


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def qkv(batch=2, n=12, seed=0):
    return rand(batch, n, C, seed=seed), rand(batch, n, C, seed=seed + 1), rand(batch, n, C, seed=seed + 2)


def close(a, b):
    return torch.allclose(a, b, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------------ math

def test_c_zero_is_exactly_plain_attention_and_ignores_the_reference():
    q, k, v = qkv()
    assert torch.equal(refdrop_attention(q, k, v, None, None, HEADS, 0.0), attention(q, k, v, HEADS))
    k_ref, v_ref = rand(1, 5, C, seed=9), rand(1, 5, C, seed=10)
    assert torch.equal(refdrop_attention(q, k, v, k_ref, v_ref, HEADS, 0.0), attention(q, k, v, HEADS))


def test_c_zero_returns_the_inner_result_itself():
    q, k, v = qkv()
    sentinel = torch.full_like(q, 7.0)
    assert refdrop_attention(q, k, v, None, None, HEADS, 0.0, inner=lambda *_: sentinel) is sentinel


def test_c_one_is_attention_on_the_reference():
    q, k, v = qkv()
    k_ref, v_ref = rand(2, 7, C, seed=3), rand(2, 7, C, seed=4)
    assert torch.equal(refdrop_attention(q, k, v, k_ref, v_ref, HEADS, 1.0), attention(q, k_ref, v_ref, HEADS))


@pytest.mark.parametrize("c", [-1.0, -0.3, 0.25, 0.55, 1.0])
def test_reference_equal_to_own_kv_is_the_identity(c):
    q, k, v = qkv(seed=5)
    assert close(refdrop_attention(q, k, v, k.clone(), v.clone(), HEADS, c), attention(q, k, v, HEADS))


@pytest.mark.parametrize("c", [-0.25, 0.4])
def test_blend_formula_with_a_reference_of_another_resolution(c):
    q, k, v = qkv(n=12, seed=6)
    k_ref, v_ref = rand(2, 20, C, seed=7), rand(2, 20, C, seed=8)     # other token count
    expected = (1 - c) * attention(q, k, v, HEADS) + c * attention(q, k_ref, v_ref, HEADS)
    out = refdrop_attention(q, k, v, k_ref, v_ref, HEADS, c)
    assert close(out, expected)
    assert not torch.allclose(out, attention(q, k, v, HEADS), atol=1e-3)


def test_one_reference_row_is_broadcast_to_every_row():
    q, k, v = qkv(batch=3, seed=11)
    k_ref, v_ref = rand(1, 9, C, seed=12), rand(1, 9, C, seed=13)
    out = refdrop_attention(q, k, v, k_ref, v_ref, HEADS, 0.5)
    for row in range(3):
        one = slice(row, row + 1)
        assert close(out[one], refdrop_attention(q[one], k[one], v[one], k_ref, v_ref, HEADS, 0.5))
    expanded = broadcast_reference(k_ref, 3)
    assert expanded.shape == (3, 9, C) and expanded.stride(0) == 0      # a view, no copy


def test_a_reference_with_another_row_count_is_refused():
    q, k, v = qkv(batch=3)
    with pytest.raises(ValueError, match="holds 2 rows but this call has 3"):
        refdrop_attention(q, k, v, rand(2, 4, C), rand(2, 4, C), HEADS, 0.5)


def test_width_mismatch_raises_a_specific_error():
    q, k, v = qkv()
    with pytest.raises(ReferenceMismatchError, match="another model family"):
        refdrop_attention(q, k, v, rand(1, 4, 2 * C), rand(1, 4, 2 * C), HEADS, 0.5)


def test_coefficient_range_and_missing_reference():
    q, k, v = qkv()
    for bad in (1.5, -1.01, math.nan):
        with pytest.raises(ValueError, match="between -1 and 1"):
            refdrop_attention(q, k, v, k, v, HEADS, bad)
    with pytest.raises(MissingReferenceError):
        refdrop_attention(q, k, v, None, None, HEADS, 0.3)


def test_stored_fp16_reference_is_used_in_the_call_dtype():
    q, k, v = (x.float() for x in qkv(seed=14))
    k_ref, v_ref = rand(1, 6, C, seed=15).half(), rand(1, 6, C, seed=16).half()
    out = refdrop_attention(q, k, v, k_ref, v_ref, HEADS, 0.5)
    assert out.dtype == torch.float32
    expected = 0.5 * attention(q, k, v, HEADS) + 0.5 * attention(q, k_ref.float().expand(2, -1, -1),
                                                               v_ref.float().expand(2, -1, -1), HEADS)
    assert torch.allclose(out, expected, atol=1e-6)


# ---------------------------------------------------------------------------------- step counting

SIGMAS = [14.6, 7.0, 3.1, 1.2, 0.0]      # 4 steps


def test_step_index_of_the_schedule_sigmas():
    assert [step_index(SIGMAS, s) for s in SIGMAS[:4]] == [0, 1, 2, 3]
    assert step_index(torch.tensor(SIGMAS), torch.tensor(7.0, dtype=torch.float32).item()) == 1


def test_step_index_tolerates_float32_rounding():
    for i, s in enumerate(SIGMAS[:4]):
        assert step_index(SIGMAS, s * (1 + 3e-7)) == i
        assert step_index(SIGMAS, s * (1 - 3e-7)) == i


def test_midpoint_calls_map_to_their_step_and_heun_correctors_to_the_next():
    # DPM2 / DPM++ 2S evaluate strictly between sigma_i and sigma_i+1: same step
    assert [step_index(SIGMAS, math.sqrt(a * b)) for a, b in pairwise(SIGMAS[:4])] == [0, 1, 2]
    # Heun's corrector of step i runs at sigma_i+1: it belongs to step i+1 (the noise level it sees)
    assert step_index(SIGMAS, SIGMAS[2]) == 2
    # a call at or below the last step's sigma is the last step
    assert step_index(SIGMAS, 0.5) == 3 and step_index(SIGMAS, 0.0) == 3


def test_step_index_errors():
    with pytest.raises(ValueError, match="above the schedule"):
        step_index(SIGMAS, 20.0)
    with pytest.raises(ValueError, match="descending"):
        step_index([1.0, 2.0, 0.0], 1.0)


# ------------------------------------------------------------------------------------------ store

W_K, W_V = rand(C, C, seed=900), rand(C, C, seed=901)


def project(n):
    """A layer's to_k / to_v (bias-free linear maps, like SD's)."""
    return n @ W_K.to(n.dtype), n @ W_V.to(n.dtype)


def kv_of(entry):
    return entry.kv("cpu", torch.float64, project)


def run_save(store, split_calls, steps=4, layers=(L1, L2), n=12, batch_images=1):
    """A 4-step generation's attn1 inputs: cond + uncond in one call ([uncond, cond] rows), or split calls."""
    recorded = []
    for step in range(steps):
        for call in range(2 if split_calls else 1):
            for layer in layers:
                seed = 100 * step + 10 * call + layers.index(layer)
                if split_calls:
                    x = rand(batch_images, n, C, seed=seed)
                    rows = list(range(batch_images))
                    cond_rows, uncond_rows = (rows, []) if call == 0 else ([], rows)
                else:
                    x = rand(2 * batch_images, n, C, seed=seed)
                    uncond_rows = list(range(batch_images))
                    cond_rows = list(range(batch_images, 2 * batch_images))
                sigma = SIGMAS[step]
                stored = store.record(step_index(SIGMAS, sigma), layer, x, cond_rows, uncond_rows)
                recorded.append((step, layer, stored, x, cond_rows, uncond_rows))
    return recorded


@pytest.mark.parametrize("split_calls", [False, True])
@pytest.mark.parametrize("keep_uncond", [False, True])
def test_keys_by_step_layer_and_branch(split_calls, keep_uncond):
    store = ReferenceStore(keep_uncond=keep_uncond)
    recorded = run_save(store, split_calls)
    branches = [COND, UNCOND] if keep_uncond else [COND]
    assert set(store.entries) == {(s, layer.label(), b) for s in range(4) for layer in (L1, L2) for b in branches}
    for step, layer, _, x, cond_rows, uncond_rows in recorded:
        if cond_rows:
            (n,) = store.get(step, layer, COND)
            assert n.dtype == torch.float16 and n.device.type == "cpu" and n.shape == (1, 12, C)
            assert torch.equal(n, x[cond_rows[0]:cond_rows[0] + 1].half())
        if uncond_rows and keep_uncond:
            assert torch.equal(store.get(step, layer, UNCOND).n, x[uncond_rows[0]:uncond_rows[0] + 1].half())


def test_first_call_of_a_key_wins_and_bytes_are_counted():
    store = ReferenceStore()
    x = rand(2, 10, C, seed=1)
    assert store.record(0, L1, x, cond_rows=[1], uncond_rows=[0]) == [COND]
    assert store.record(0, L1, x * 2, cond_rows=[1], uncond_rows=[0]) == []   # second call, same step
    assert torch.equal(store.get(0, L1, COND).n, x[1:2].half())
    assert store.nbytes == 10 * C * 2 == entry_bytes(INPUT16, 10, C)
    store.record(1, L1, x, cond_rows=[0, 1], uncond_rows=[])     # batch of two images: the first is kept
    assert store.nbytes == 2 * (10 * C * 2)
    assert torch.equal(store.get(1, L1, COND).n, x[0:1].half())
    compact = ReferenceStore(compact=True)
    compact.record(0, L1, x, cond_rows=[1])
    assert compact.nbytes == 10 * C + 2 * 2 * C == entry_bytes(INPUT8, 10, C)


def test_the_store_keeps_private_copies():
    store = ReferenceStore()
    x = rand(2, 5, C).half()
    store.record(0, L1, x, cond_rows=[1])                           # a slice of the batch
    (stored,) = store.get(0, L1, COND)
    assert stored.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert stored.untyped_storage().nbytes() == 5 * C * 2
    expected = x[1:2].clone()
    x.zero_()
    assert torch.equal(stored, expected)


def test_budget_error_names_the_budget_and_what_to_change():
    one = 10 * C * 2
    store = ReferenceStore(budget_bytes=2 * one)
    x = rand(1, 10, C)
    store.record(0, L1, x, [0])
    store.record(1, L1, x, [0])                                     # exactly at the budget
    with pytest.raises(ReferenceBudgetError, match="memory budget") as info:
        store.record(2, L1, x, [0])
    assert "save percentage" in str(info.value) and "step 2" in str(info.value)
    assert store.nbytes == 2 * one and len(store.entries) == 2


def test_uncond_rows_fall_back_to_the_cond_entry_and_missing_keys_are_named():
    store = ReferenceStore()
    store.record(0, L1, rand(2, 6, C), cond_rows=[1], uncond_rows=[0])
    assert store.reference(0, L1, UNCOND) is store.reference(0, L1, COND)
    with pytest.raises(MissingReferenceError, match="step 3, layer input:1:0"):
        store.reference(3, L1, COND)


def test_for_rows_broadcasts_one_entry_or_assembles_per_row():
    store = ReferenceStore(keep_uncond=True)
    x = rand(2, 6, C, seed=3)
    store.record(0, L1, x, cond_rows=[1], uncond_rows=[0])
    k_all, v_all = store.for_rows(0, L1, cond_rows=[2, 3], uncond_rows=[0, 1], batch=4, kv_of=kv_of)
    assert k_all.shape == (4, 6, C)
    for row, src in enumerate([0, 0, 1, 1]):
        k, v = project(x[src].half().double())
        assert torch.equal(k_all[row], k) and torch.equal(v_all[row], v)
    k_c, _ = store.for_rows(0, L1, cond_rows=[0, 1, 2], uncond_rows=[], batch=3, kv_of=kv_of)
    assert k_c.shape == (1, 6, C)
    cond_only = ReferenceStore()
    cond_only.record(0, L1, x, cond_rows=[1], uncond_rows=[0])
    k_b, _ = cond_only.for_rows(0, L1, cond_rows=[1], uncond_rows=[0], batch=2, kv_of=kv_of)
    assert k_b.shape == (1, 6, C)                                     # one entry: broadcast, not copied


def test_batch_one_save_used_with_batch_three():
    store = ReferenceStore()
    run_save(store, split_calls=False, batch_images=1)
    q, k, v = qkv(batch=6, seed=20)                                   # 3 images x (uncond, cond)
    k_ref, v_ref = store.for_rows(2, L1, cond_rows=[3, 4, 5], uncond_rows=[0, 1, 2], batch=6, kv_of=kv_of)
    out = refdrop_attention(q, k, v, k_ref, v_ref, HEADS, 0.5)
    ks, vs = project(store.get(2, L1, COND).n.double())
    for row in range(6):
        one = slice(row, row + 1)
        expected = 0.5 * attention(q[one], k[one], v[one], HEADS) + 0.5 * attention(q[one], ks, vs, HEADS)
        assert close(out[one], expected)


@pytest.mark.parametrize("compact", [False, True])
def test_save_then_use_through_a_file(tmp_path, compact):
    store = ReferenceStore(keep_uncond=True, compact=compact)
    run_save(store, split_calls=True)
    path = str(tmp_path / "ref.safetensors")
    size = save_reference(store, path, model_family="sd15", resolution=(512, 768), steps=4)
    assert size > store.nbytes
    info = read_reference_info(path)
    assert (info.model_family, info.steps, info.resolution) == ("sd15", 4, (512, 768))
    assert info.widths == {"input:1:0": C, "output:9:0": C}
    loaded, info2 = load_reference(path)
    assert info2 == info and loaded.nbytes == store.nbytes
    assert set(loaded.entries) == set(store.entries)
    for key, entry in store.entries.items():
        assert type(loaded.entries[key]) is type(entry)
        assert all(torch.equal(a, b) for a, b in zip(loaded.entries[key], entry))
    q, k, v = qkv(batch=2, seed=30)
    a = refdrop_attention(q, k, v, *store.for_rows(3, L2, [1], [0], 2, kv_of), HEADS, 0.4)
    b = refdrop_attention(q, k, v, *loaded.for_rows(3, L2, [1], [0], 2, kv_of), HEADS, 0.4)
    assert torch.equal(a, b)
    with pytest.raises(ReferenceBudgetError, match="memory budget"):
        load_reference(path, budget_bytes=store.nbytes // 2)


def test_reference_files_are_checked(tmp_path):
    from safetensors.torch import save_file

    other = str(tmp_path / "other.safetensors")
    save_file({"x": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a RefDrop reference file"):
        read_reference_info(other)
    with pytest.raises(ValueError, match="empty"):
        save_reference(ReferenceStore(), str(tmp_path / "e.safetensors"), model_family="sd15",
                       resolution=(512, 512), steps=4)
    store = ReferenceStore()
    store.record(0, L1, rand(1, 4, C), [0])
    path = str(tmp_path / "r.safetensors")
    save_reference(store, path, model_family="sdxl", resolution=(1024, 1024), steps=20)
    check_reference_family(read_reference_info(path), "sdxl")
    with pytest.raises(ReferenceMismatchError, match="saved with a sdxl model"):
        check_reference_family(read_reference_info(path), "sd15")
    store.put(1, L1, COND, KVEntry(rand(1, 4, C), rand(1, 4, C)))
    with pytest.raises(ValueError, match="either K/V entries or attention inputs"):
        save_reference(store, path, model_family="sdxl", resolution=(1024, 1024), steps=20)


# ------------------------------------------------------------------- the attention input instead of K and V

def test_the_input_gives_exactly_the_output_of_its_k_and_v_in_float64():
    """Storing n and projecting at use is the same computation as storing to_k(n), to_v(n) (float64)."""
    x = rand(2, 12, C, seed=40)
    as_input = ReferenceStore(dtype=torch.float64)
    as_input.record(0, L1, x, cond_rows=[1], uncond_rows=[0])
    as_kv = ReferenceStore()
    as_kv.put(0, L1, COND, KVEntry(*project(x[1:2])))
    q, k, v = qkv(batch=2, seed=41)
    for c in (0.3, -0.3, 1.0):
        a = refdrop_attention(q, k, v, *as_input.for_rows(0, L1, [1], [0], 2, kv_of), HEADS, c)
        b = refdrop_attention(q, k, v, *as_kv.for_rows(0, L1, [1], [0], 2, kv_of), HEADS, c)
        assert torch.equal(a, b)


def test_fp16_input_and_fp16_k_v_agree_within_the_stated_tolerance():
    """fp16 storage: n rounded to fp16 then projected in fp32, vs K and V projected in fp32 then rounded
    (the format v1 layout). Both round once to fp16; the outputs agree to 2e-3 of their magnitude."""
    layer_norm = torch.nn.LayerNorm(C, dtype=torch.float32)
    x = layer_norm(rand(2, 64, C, seed=42, dtype=torch.float32)).detach()
    w_k, w_v = W_K.float(), W_V.float()
    fp32_project = lambda n: (n @ w_k, n @ w_v)           # noqa: E731
    as_input = ReferenceStore()
    as_input.record(0, L1, x, cond_rows=[1])
    as_kv = ReferenceStore()
    as_kv.put(0, L1, COND, KVEntry(*(t.half() for t in fp32_project(x[1:2]))))
    q, k, v = (t.float() for t in qkv(batch=2, n=64, seed=43))
    for c in (0.3, 1.0):
        a = refdrop_attention(q, k, v, *as_input.get(0, L1, COND).kv("cpu", torch.float32, fp32_project), HEADS, c)
        b = refdrop_attention(q, k, v, *as_kv.get(0, L1, COND).kv("cpu", torch.float32), HEADS, c)
        assert (a - b).abs().max() <= 2e-3 * b.abs().max()


def test_8_bit_codes_are_within_half_a_step_of_the_input():
    cases = {"layer-normed": torch.nn.LayerNorm(C)(rand(1, 50, C, seed=44, dtype=torch.float32)).detach(),
             "a constant channel": rand(1, 50, C, seed=45, dtype=torch.float32).index_fill_(2, torch.tensor([3]), 7.0),
             "beyond fp16": rand(1, 50, C, seed=46, dtype=torch.float32) * 1e6,
             "one token": rand(1, 1, C, seed=47, dtype=torch.float32)}
    for case, n in cases.items():
        q = quantize_input(n)
        assert q.codes.dtype == torch.uint8 and q.low.shape == q.scale.shape == (1, 1, C), case
        assert q.low.dtype == (torch.float32 if case == "beyond fp16" else torch.float16), case
        error = (q.dequantized("cpu", torch.float64) - n.double()).abs()
        bound = q.scale.double() / 2 * (1 + 1e-6)
        assert (error <= bound).all(), case


def test_8_bit_reference_attention_error_is_bounded():
    """The error of the blended output with an 8-bit reference (c = 1: the reference attention alone, the
    worst case) on layer-normed inputs: below 1% of the output's magnitude (bench_refdrop prints the figure
    at real SDXL widths)."""
    width, heads = 64, 4
    layer_norm = torch.nn.LayerNorm(width)
    x = layer_norm(torch.randn(2, 256, width, generator=torch.Generator().manual_seed(48))).detach()
    to_k, to_v = (torch.nn.Linear(width, width, bias=False) for _ in range(2))
    projection = lambda n: (to_k(n), to_v(n))             # noqa: E731
    exact, compact = ReferenceStore(dtype=torch.float32), ReferenceStore(compact=True)
    for store in (exact, compact):
        store.record(0, L1, x, cond_rows=[1])
    q, k, v = (torch.randn(2, 256, width, generator=torch.Generator().manual_seed(s)) for s in (49, 50, 51))
    with torch.no_grad():
        a = refdrop_attention(q, k, v, *exact.get(0, L1, COND).kv("cpu", torch.float32, projection), heads, 1.0)
        b = refdrop_attention(q, k, v, *compact.get(0, L1, COND).kv("cpu", torch.float32, projection), heads, 1.0)
    assert 0 < (a - b).abs().max() <= 1e-2 * a.abs().max()


def test_an_input_entry_without_the_layers_projection_is_a_mismatch():
    store = ReferenceStore()
    store.record(0, L1, rand(1, 4, C), [0])
    with pytest.raises(ReferenceMismatchError, match="projections are unknown"):
        store.get(0, L1, COND).kv("cpu", torch.float32, None)


# --------------------------------------------------------------------------------- layers and bytes

def test_attn1_layer_tables_and_the_documented_memory_figures():
    sdxl = attn1_layers("sdxl", (128, 128))
    assert len(sdxl) == 70 and len({layer for layer, _, _ in sdxl}) == 70
    assert sorted({(t, w) for _, t, w in sdxl}) == [(1024, 1280), (4096, 640)]
    assert sum(1 for _, t, _ in sdxl if t == 4096) == 10
    gib = 1024 ** 3
    assert round(reference_bytes(sdxl, steps=20) / gib, 2) == 7.81          # PATCHES.md, SDXL 1024^2
    sd15 = attn1_layers("sd15", (64, 64))
    assert len(sd15) == 16
    assert round(reference_bytes(sd15, steps=20) / gib, 2) == 0.86          # SD1.5 at 512^2
    assert round(reference_bytes(attn1_layers("sd15", (128, 128)), steps=20) / gib, 2) == 3.44
    assert reference_bytes(sdxl, steps=20, rows=2) == 2 * reference_bytes(sdxl, steps=20)
    public = public_layout_bytes(sdxl, steps=20)
    assert round(public / gib, 2) == 15.62
    assert reference_bytes(sdxl, steps=20, form=INPUT16) / public == 0.25                   # 3.91 GiB
    assert 0.125 < reference_bytes(sdxl, steps=20, form=INPUT8) / public < 0.1255           # + offsets and steps


def test_attn1_layers_use_ceil_halving_on_odd_latents():
    tokens = {layer.label(): t for layer, t, _ in attn1_layers("sd15", (17, 25))}
    assert tokens["input:1:0"] == 17 * 25 and tokens["input:4:0"] == 9 * 13
    assert tokens["input:7:0"] == 5 * 7 and tokens["middle:0:0"] == 3 * 4
    with pytest.raises(ValueError, match="unknown model family"):
        attn1_layers("flux", (64, 64))


def test_layer_labels():
    assert layer_label(L1) == "input:1:0" == layer_label(("input", 1, 0)) == layer_label("input:1:0")
    with pytest.raises(ValueError, match="block:number:index"):
        layer_label("input-1-0")
