"""Near-sighted tile / attention: tile geometry, padding offsets, tile/untile, masked tiled attention."""

import math

import pytest
import torch

from lib_omost.attention import nearsighted as N
from lib_omost.attention import slothful as S
from lib_omost.attention.core import attention


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- geometry --------------------------------------------------------------------------------------

# (h, w, tile): (ty, tx, th, tw) or None
GRIDS = {
    (64, 64, 32): (2, 2, 32, 32),
    (96, 96, 32): (3, 3, 32, 32),
    (48, 48, 32): (2, 2, 24, 24),
    (17, 25, 8): (3, 4, 6, 7),
    (13, 11, 5): (3, 3, 5, 4),
    (40, 20, 32): (2, 1, 20, 20),
    (32, 32, 32): None,
    (20, 30, 32): None,
}


@pytest.mark.parametrize("case", sorted(GRIDS))
def test_tile_grid_table(case):
    h, w, t = case
    grid = N.tile_grid((h, w), t)
    assert (None if grid is None else tuple(grid)) == GRIDS[case]


def test_tile_grid_formula_and_no_padding_only_tiles():
    for h in range(1, 41):
        for w in (1, 7, 16, 33):
            for t in (1, 3, 8, 16, 32):
                grid = N.tile_grid((h, w), t)
                ty, tx = math.ceil(h / t), math.ceil(w / t)
                if ty * tx <= 1:
                    assert grid is None
                    continue
                assert tuple(grid) == (ty, tx, math.ceil(h / ty), math.ceil(w / tx))
                assert (grid.ty - 1) * grid.th < h and (grid.tx - 1) * grid.tw < w
                assert grid.ty * grid.th >= h and grid.tx * grid.tw >= w


def test_tile_size_must_be_a_whole_number():
    with pytest.raises(ValueError, match="whole number"):
        N.tile_grid((32, 32), 12.5)
    with pytest.raises(ValueError, match="at least 1"):
        N.tile_grid((32, 32), 0)


def test_padding_offset_is_reproducible_and_in_range():
    hw = (17, 25)
    grid = N.tile_grid(hw, 8)
    pad_h, pad_w = grid.padding(hw)
    assert (pad_h, pad_w) == (1, 3)
    draws = lambda seed: [N.draw_offset(hw, grid, g) for g in [torch.Generator().manual_seed(seed)] for _ in range(40)]
    a, b = draws(123), draws(123)
    assert a == b
    assert all(0 <= oy <= pad_h and 0 <= ox <= pad_w for oy, ox in a)
    assert {ox for _, ox in a} == set(range(pad_w + 1))          # every offset occurs
    assert draws(124) != a


# --- tile / untile ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hw,t", [((16, 16), 8), ((17, 25), 8), ((13, 11), 5), ((9, 30), 7)])
def test_tile_untile_round_trip_for_every_offset(hw, t):
    grid = N.tile_grid(hw, t)
    x = rand(2, hw[0] * hw[1], 3)
    pad_h, pad_w = grid.padding(hw)
    for oy in range(pad_h + 1):
        for ox in range(pad_w + 1):
            tiles = N.tile(x, hw, grid, (oy, ox))
            assert tiles.shape == (2 * grid.count, grid.tokens, 3)
            assert torch.equal(N.untile(tiles, hw, grid, (oy, ox)), x)


def test_tile_contents_follow_the_padded_map():
    hw, grid, offset = (5, 7), N.TileGrid(2, 2, 3, 4), (1, 0)
    x = torch.arange(35, dtype=torch.float64).view(1, 35, 1) + 1
    padded = torch.zeros(6, 8, dtype=torch.float64)
    padded[1:6, 0:7] = x.view(5, 7)
    tiles = N.tile(x, hw, grid, offset).view(4, 3, 4)
    for t, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(tiles[t], padded[3 * r:3 * r + 3, 4 * c:4 * c + 4])
    valid = N.tile_valid(hw, grid, offset).view(4, 3, 4)
    assert torch.equal(valid, tiles != 0)


def test_bad_offset_is_rejected():
    grid = N.tile_grid((17, 25), 8)
    with pytest.raises(ValueError, match="offset"):
        N.tile(rand(1, 17 * 25, 2), (17, 25), grid, (2, 0))


# --- tiled attention -------------------------------------------------------------------------------

def qkv(b, n, c=8, seed=10):
    return rand(b, n, c, seed=seed), rand(b, n, c, seed=seed + 1), rand(b, n, c, seed=seed + 2)


@pytest.mark.parametrize("hw,t", [((8, 8), 8), ((6, 9), 16)])
def test_tile_covering_the_map_is_plain_attention(hw, t):
    q, k, v = qkv(2, hw[0] * hw[1])
    out = N.tiled_attention(q, k, v, 2, hw, t, global_ratio=0.5)
    assert torch.equal(out, attention(q, k, v, 2))


def tile_ids(hw, grid, offset):
    """Tile index of every token, from its padded position (independent of tile())."""
    h, w = hw
    rows = (torch.arange(h) + offset[0]) // grid.th
    cols = (torch.arange(w) + offset[1]) // grid.tw
    return (rows[:, None] * grid.tx + cols[None, :]).reshape(-1)


@pytest.mark.parametrize("hw,t,offset", [((16, 16), 8, (0, 0)), ((17, 25), 8, (1, 2)), ((13, 11), 5, (2, 0))])
def test_no_global_no_reduction_equals_block_diagonal_full_attention(hw, t, offset):
    q, k, v = qkv(2, hw[0] * hw[1])
    grid = N.tile_grid(hw, t)
    ids = tile_ids(hw, grid, offset)
    mask = (ids[:, None] == ids[None, :])[None, None]
    expected = attention(q, k, v, 2, mask=mask)
    out = N.tiled_attention(q, k, v, 2, hw, t, global_ratio=0.0, offset=offset)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)


def zero_padded_tiled_attention(q, k, v, heads, hw, t, global_ratio, offset):
    """The public behaviour: padded keys are zero vectors that take part in the softmax."""
    grid = N.tile_grid(hw, t)
    qt, kt, vt = (N.tile(x, hw, grid, offset) for x in (q, k, v))
    g_stride = N.global_stride(0.0, grid.count, global_ratio)
    gk = S.reduce_tokens(k, hw, g_stride).repeat_interleave(grid.count, 0)
    gv = S.reduce_tokens(v, hw, g_stride).repeat_interleave(grid.count, 0)
    out = attention(qt, torch.cat([kt, gk], 1), torch.cat([vt, gv], 1), heads)
    return N.untile(out, hw, grid, offset)


def test_masked_padding_differs_from_zero_padding_only_in_edge_tiles():
    hw, t, offset = (17, 25), 8, (1, 2)
    grid = N.tile_grid(hw, t)
    q, k, v = qkv(2, hw[0] * hw[1])
    masked = N.tiled_attention(q, k, v, 2, hw, t, global_ratio=0.5, offset=offset)
    zero = zero_padded_tiled_attention(q, k, v, 2, hw, t, 0.5, offset)
    ids = tile_ids(hw, grid, offset)
    padded_tiles = set((~N.tile_valid(hw, grid, offset)).any(1).nonzero().flatten().tolist())
    assert 0 < len(padded_tiles) < grid.count
    for tile_id in range(grid.count):
        sel = ids == tile_id
        same = torch.allclose(masked[:, sel], zero[:, sel], rtol=0, atol=1e-12)
        assert same == (tile_id not in padded_tiles), tile_id
        if tile_id in padded_tiles:               # every token of an edge tile is affected
            assert not torch.isclose(masked[:, sel], zero[:, sel], rtol=0, atol=1e-12).all(-1).any()


def test_global_sample_is_about_global_ratio_times_the_local_keys():
    hw, t = (96, 96), 32
    grid = N.tile_grid(hw, t)
    for stride, ratio in ((0.0, 0.5), (4.0, 0.5), (4.0, 1.0), (1.0, 0.2)):
        local = S.reduce_tokens(rand(1, grid.tokens, 1), (grid.th, grid.tw), stride).shape[1]
        g = S.reduce_tokens(rand(1, 96 * 96, 1), hw, N.global_stride(stride, grid.count, ratio)).shape[1]
        assert 0.6 * ratio * local <= g <= 1.5 * ratio * local, (stride, ratio, local, g)
    with pytest.raises(ValueError, match="positive"):
        N.global_stride(1.0, 4, 0.0)


def test_global_keys_are_attended_by_every_tile():
    # With a single global key (ratio tiny), out = softmax over [own tile | that key]: check one token.
    hw, t, heads = (8, 8), 4, 1
    q, k, v = qkv(1, 64, c=4)
    out = N.tiled_attention(q, k, v, heads, hw, t, global_ratio=0.01)
    grid = N.tile_grid(hw, t)
    g_idx = 0                                         # strided sample keeps token (0, 0) first
    g = S.reduce_tokens(k, hw, N.global_stride(0.0, grid.count, 0.01))
    assert g.shape[1] == 1 and torch.equal(g[0, 0], k[0, g_idx])
    token = 5 * 8 + 6                                 # in tile (1, 1)
    own = [r * 8 + c for r in range(4, 8) for c in range(4, 8)]
    keys = torch.cat([k[0, own], k[0, [g_idx]]])
    vals = torch.cat([v[0, own], v[0, [g_idx]]])
    weights = torch.softmax(keys @ q[0, token] / 2.0, dim=0)
    assert torch.allclose(out[0, token], weights @ vals, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", S.MODES)
@pytest.mark.parametrize("blend", [0.0, 1.0])
def test_reduced_tiles_equal_unreduced_on_tile_aligned_piecewise_constant_maps(mode, blend):
    # 2x2 tiles of 8x8; stride 4 reduces 1x4 runs (1D, along each tile's rows) or 2x2 cells (2D), so a map
    # constant on those runs / cells loses only repeats, which leave each tile's softmax average unchanged.
    hw, t, stride = (16, 16), 8, 4.0
    by, bx = (1, 4) if mode.startswith("1D") else (2, 2)
    cells = lambda seed: (rand(2, 16 // by, 16 // bx, 8, seed=seed)
                          .repeat_interleave(by, 1).repeat_interleave(bx, 2).reshape(2, 256, 8))
    q, k, v = rand(2, 256, 8, seed=30), cells(31), cells(32)
    reduced = N.tiled_attention(q, k, v, 2, hw, t, global_ratio=0.0, stride=stride, mode=mode,
                                k_blend=blend, v_blend=blend)
    plain = N.tiled_attention(q, k, v, 2, hw, t, global_ratio=0.0)
    assert torch.allclose(reduced, plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", S.MODES)
def test_reduced_tiles_with_padding_never_attend_padding(mode):
    # Adding a constant to every value adds it to the output exactly only if no padding (zero) value is
    # ever averaged into a key/value or attended.
    hw, t, offset, stride = (17, 25), 8, (1, 2), 4.0
    q, k, v = qkv(2, hw[0] * hw[1])
    kwargs = {"global_ratio": 0.5, "offset": offset, "stride": stride, "mode": mode, "k_blend": 0.5,
              "v_blend": 1.0}
    out = N.tiled_attention(q, k, v, 2, hw, t, **kwargs)
    shifted = N.tiled_attention(q, k, v + 3.0, 2, hw, t, **kwargs)
    assert torch.isfinite(out).all()
    assert torch.allclose(shifted, out + 3.0, rtol=0, atol=1e-10)


# --- schedule --------------------------------------------------------------------------------------

def test_near_sighted_schedule_interpolates_base_to_peak():
    assert N.near_sighted_schedule(0.0) == (24, pytest.approx(0.2))
    assert N.near_sighted_schedule(1.0) == (32, pytest.approx(0.8))
    tile, ratio = N.near_sighted_schedule(0.5, 32, 48, 1.0, 0.5)
    assert (tile, ratio) == (40, pytest.approx(0.75))
    assert isinstance(N.near_sighted_schedule(0.3)[0], int)


def test_tiling_applies_by_depth():
    assert [N.tiling_applies(d, 1) for d in (1, 2, 4)] == [True, False, False]
    assert [N.tiling_applies(d, 2) for d in (1, 2, 4)] == [True, True, False]
    assert [N.tiling_applies(d, 3) for d in (1, 2, 4)] == [True, True, True]


# --- fused kernels: gathered tiles, no mask -------------------------------------------------------

def masked_tiled_attention(q, k, v, heads, hw, t, global_ratio, offset, stride, mode, k_blend, v_blend):
    """The formulation with padded tiles and a key mask (tiles stacked in the batch, one masked call)."""
    grid = N.tile_grid(hw, t)
    qt, kt, vt = (N.tile(x, hw, grid, offset) for x in (q, k, v))
    valid = N.tile_valid(hw, grid, offset)
    if valid is None:
        valid = torch.ones(grid.count, grid.tokens, dtype=torch.bool)
    kt, key_valid = S.reduce_tokens_masked(kt, (grid.th, grid.tw), stride, mode, k_blend, valid)
    vt, _ = S.reduce_tokens_masked(vt, (grid.th, grid.tw), stride, mode, v_blend, valid)
    if global_ratio > 0:
        g_stride = N.global_stride(stride, grid.count, global_ratio)
        gk = S.reduce_tokens(k, hw, g_stride, mode, k_blend, stride).repeat_interleave(grid.count, 0)
        gv = S.reduce_tokens(v, hw, g_stride, mode, v_blend, stride).repeat_interleave(grid.count, 0)
        kt, vt = torch.cat([kt, gk], 1), torch.cat([vt, gv], 1)
        key_valid = torch.cat([key_valid, key_valid.new_ones(grid.count, gk.shape[1])], 1)
    mask = key_valid.repeat(q.shape[0], 1)[:, None, None, :]
    return N.untile(attention(qt, kt, vt, heads, mask=mask), hw, grid, offset)


@pytest.mark.parametrize("hw,t,offset", [((16, 16), 8, (0, 0)), ((17, 25), 8, (1, 2)), ((13, 11), 5, (2, 0)),
                                         ((24, 20), 7, (0, 1)), ((31, 29), 7, (3, 1))])
@pytest.mark.parametrize("stride,mode", [(0.0, "2D_AVG"), (4.0, "2D_AVG"), (4.0, "2D_MAX"), (3.0, "1D_AVG"),
                                         (6.0, "1D_MAX")])
@pytest.mark.parametrize("blends", [(0.0, 0.0), (0.5, 1.0), (1.0, 0.0)])
@pytest.mark.parametrize("global_ratio", [0.0, 0.5])
def test_gathered_tiles_equal_the_masked_formulation(hw, t, offset, stride, mode, blends, global_ratio):
    q, k, v = qkv(2, hw[0] * hw[1])
    kwargs = {"global_ratio": global_ratio, "offset": offset, "stride": stride, "mode": mode,
              "k_blend": blends[0], "v_blend": blends[1]}
    out = N.tiled_attention(q, k, v, 2, hw, t, **kwargs)
    expected = masked_tiled_attention(q, k, v, 2, hw, t, global_ratio, offset, stride, mode, *blends)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)




def test_tiles_run_unmasked_one_call_per_tile_class(unmasked_sdpa):
    seen = unmasked_sdpa
    q, k, v = qkv(2, 16 * 16)
    N.tiled_attention(q, k, v, 2, (16, 16), 8, global_ratio=0.5, stride=4.0)
    assert len(seen) == 1 and seen[0][0] == 2 * 4                      # tiles divide the map: one call
    seen.clear()
    q, k, v = qkv(2, 17 * 25)
    N.tiled_attention(q, k, v, 2, (17, 25), 8, global_ratio=0.5, offset=(1, 2), stride=4.0)
    assert 1 < len(seen) <= 9                                            # interior, edge and corner tiles


def test_tile_layouts_are_built_once_per_grid_not_per_stride():
    hw, grid = (32, 32), N.tile_grid((32, 32), 8)
    # strides 3.5 and 4.0 give the same 2 x 2 grid inside a tile: the same cached layout
    keys = [N.tile_keys(hw, grid, (0, 0), stride, "2D_AVG", N.global_stride(stride, grid.count, 0.5))
            for stride in (3.5, 4.0)]
    assert keys[0].local == keys[1].local
    first = N.tile_layout(keys[0]._replace(sample=keys[1].sample), False, False, torch.device("cpu"))
    assert N.tile_layout(keys[1], False, False, torch.device("cpu")) is first


@pytest.mark.parametrize("hw,stride,mode", [((24, 20), 4.0, "2D_AVG"), ((31, 29), 5.0, "2D_MAX"),
                                            ((24, 20), 3.0, "1D_AVG"), ((17, 25), 0.5, "2D_AVG")])
def test_pooled_global_keys_pool_the_local_window_at_the_global_step(hw, stride, mode):
    """As the original: the global sample's pool uses the local stride's window (clamped to the cell) at
    the global step; written out here window by window."""
    x = rand(2, hw[0] * hw[1], 3, seed=9)
    g_stride = N.global_stride(stride, 4, 0.5)
    (gh, gw), sy, sx = S.reduction_grid(hw, g_stride, mode)
    _, wy, wx = S.reduction_grid(hw, stride, mode) if stride > 1 else (None, 1, 1)
    wy, wx = min(wy, sy), min(wx, sx)
    reduce = (lambda t: t.mean(1)) if mode.endswith("AVG") else (lambda t: t.amax(1))
    g = x.reshape(2, gh, gw, 3)
    expected = torch.stack([reduce(g[:, i:i + wy, j:j + wx].reshape(2, -1, 3))
                            for i in range(0, gh, sy) for j in range(0, gw, sx)], 1)
    assert torch.allclose(S.reduce_tokens(x, hw, g_stride, mode, 1.0, stride), expected, rtol=0, atol=1e-12)
    one = S.reduce_tokens(x, hw, g_stride, mode, 0.0, stride)
    assert torch.equal(one, S.reduce_tokens(x, hw, g_stride, mode, 0.0))        # blend 0: the window is moot
    if (wy, wx) != (sy, sx):
        assert not torch.allclose(S.reduce_tokens(x, hw, g_stride, mode, 1.0), expected)
