"""MSW-MSA: window layout, shifts, partition/reverse, equality with masked full attention, seeded shifts."""

import itertools

import pytest
import torch

from lib_omost.attention import mswmsa as M
from lib_omost.attention.core import attention

SIZES = [(8, 8), (12, 10), (9, 13), (7, 7), (2, 5), (1, 6)]


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_window_grid_and_shift_table():
    grid = M.window_grid((96, 96))
    assert tuple(grid) == (2, 2, 48, 48)
    assert [M.shift_for(grid, k) for k in range(4)] == [(0, 0), (12, 12), (24, 24), (36, 36)]
    odd = M.window_grid((17, 25))
    assert tuple(odd) == (2, 2, 9, 13) and odd.padding((17, 25)) == (1, 1)
    assert [M.shift_for(odd, k) for k in range(4)] == [(0, 0), (2, 3), (4, 6), (6, 9)]
    assert tuple(M.window_grid((1, 6))) == (1, 2, 1, 3)          # a length-1 axis is not split
    with pytest.raises(ValueError, match="0..3"):
        M.shift_for(grid, 4)


@pytest.mark.parametrize("hw", SIZES)
def test_partition_reverse_identity_for_every_shift(hw):
    x = rand(2, hw[0] * hw[1], 3)
    for k in range(4):
        parts = M.partition(x, hw, k)
        grid = M.window_grid(hw)
        assert parts.shape == (2 * grid.count, grid.tokens, 3)
        assert torch.equal(M.reverse(parts, hw, k), x)


def window_ids(hw, k):
    """Window of every token from first principles: roll by -shift, then 2 x 2 windows of ceil(h/2) x ceil(w/2)."""
    h, w = hw
    ny, nx = (2 if h > 1 else 1), (2 if w > 1 else 1)
    wh, ww = -(-h // ny), -(-w // nx)
    sy, sx = k * (wh // 4), k * (ww // 4)
    rows = (torch.arange(h) - sy) % h // wh
    cols = (torch.arange(w) - sx) % w // ww
    return (rows[:, None] * nx + cols[None, :]).reshape(-1)


@pytest.mark.parametrize("hw", SIZES)
def test_window_contents_match_the_rolled_grid(hw):
    x = torch.arange(hw[0] * hw[1], dtype=torch.float64).view(1, -1, 1)
    for k in range(4):
        parts = M.partition(x, hw, k)
        grid = M.window_grid(hw)
        valid = torch.ones(hw[0] * hw[1], 1, dtype=torch.float64).view(1, -1, 1)
        mask = M.partition(valid, hw, k)[..., 0].bool()
        ids = window_ids(hw, k)
        for win in range(grid.count):
            got = sorted(parts[win, mask[win], 0].long().tolist())
            assert got == (ids == win).nonzero().flatten().tolist()


@pytest.mark.parametrize("hw", SIZES)
def test_equals_block_diagonal_masked_full_attention(hw):
    n = hw[0] * hw[1]
    q, k, v = rand(2, n, 8, seed=1), rand(2, n, 8, seed=2), rand(2, n, 8, seed=3)
    for shift in range(4):
        ids = window_ids(hw, shift)
        expected = attention(q, k, v, 2, mask=(ids[:, None] == ids[None, :])[None, None])
        out = M.msw_msa_attention(q, k, v, 2, hw, shift)
        assert torch.allclose(out, expected, rtol=0, atol=1e-12), (hw, shift)


def test_each_window_is_plain_attention_on_its_tokens():
    hw, heads = (9, 13), 2
    q, k, v = rand(1, 117, 8, seed=4), rand(1, 117, 8, seed=5), rand(1, 117, 8, seed=6)
    for shift in range(4):
        out = M.msw_msa_attention(q, k, v, heads, hw, shift)
        ids = window_ids(hw, shift)
        for win in range(4):
            sel = (ids == win).nonzero().flatten()
            plain = attention(q[:, sel], k[:, sel], v[:, sel], heads)
            assert torch.allclose(out[:, sel], plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("hw", [(8, 8), (9, 13)])
def test_one_window_is_plain_attention(hw):
    n = hw[0] * hw[1]
    q, k, v = rand(2, n, 8, seed=7), rand(2, n, 8, seed=8), rand(2, n, 8, seed=9)
    for shift in range(4):
        out = M.msw_msa_attention(q, k, v, 2, hw, shift, windows=(1, 1))
        assert torch.allclose(out, attention(q, k, v, 2), rtol=0, atol=1e-12)


def test_windows_reduce_the_score_entries_fourfold():
    grid = M.window_grid((96, 96))
    assert grid.count * grid.tokens ** 2 * 4 == (96 * 96) ** 2


def shifts(seed, count=30):
    g = torch.Generator().manual_seed(seed)
    out, prev = [], None
    for _ in range(count):
        prev = M.draw_shift(g, prev)
        out.append(prev)
    return out


def test_shifts_are_reproducible_from_the_seed_and_change_every_call():
    a = shifts(42)
    assert a == shifts(42)
    assert a != shifts(43)
    assert set(a) == {0, 1, 2, 3}
    assert all(x != y for x, y in itertools.pairwise(a))
    with pytest.raises(ValueError, match="0..3"):
        M.draw_shift(torch.Generator().manual_seed(0), previous=7)


def test_layer_tables():
    assert M.LAYERS["sd15"] == {"input": (1, 2), "output": (9, 10, 11)}
    assert M.LAYERS["sdxl"] == {"input": (4, 5), "output": (3, 4, 5)}
    from lib_omost.features.hidiffusion import FEATURE
    assert (FEATURE.by_name["msw_start"].default, FEATURE.by_name["msw_end"].default) == (0.2, 1.0)


def test_windows_run_unmasked_in_one_call_per_window_size(unmasked_sdpa):
    seen = unmasked_sdpa
    for hw, calls in (((12, 10), 1), ((9, 13), 4), ((9, 12), 2)):
        seen.clear()
        q, k, v = rand(2, hw[0] * hw[1], 8, seed=10), rand(2, hw[0] * hw[1], 8, seed=11), rand(2, hw[0] * hw[1], 8)
        M.msw_msa_attention(q, k, v, 2, hw, 1)
        assert len(seen) == calls, (hw, seen)
        assert sum(shape[0] * shape[2] for shape in seen) == 2 * hw[0] * hw[1]    # every token queried once


def test_window_layouts_are_cached_per_size_and_shift():
    a = M.msw_layout((9, 13), 2, (2, 2), torch.device("cpu"))
    assert M.msw_layout((9, 13), 2, (2, 2), torch.device("cpu")) is a
    assert M.msw_layout((9, 13), 3, (2, 2), torch.device("cpu")) is not a
