"""Window geometry and the windowed mean attention distance: closed forms, the literal full-map
reference, padding, and the streaming accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import windowed_distance_literal, windowed_full_map_literal

from vitlens.analyses.attention.distance import mean_attention_distance, uniform_distance
from vitlens.analyses.attention.windowed_distance import WindowedDistanceAccumulator, windowed_mean_attention_distance
from vitlens.models.tokens import TokenLayout
from vitlens.models.windows import (
    BlockGeometry,
    WindowLayout,
    counted_pairs,
    pair_distances,
    shift_regions,
    token_positions,
    window_uniform_distance,
)


def geom(grid=(14, 14), window=(7, 7), shift=(0, 0), stride=4.0, pad_first=False, input_size=None):
    return BlockGeometry(grid_size=grid, stride=(stride, stride), window_size=window, shift=shift,
                         input_size=input_size or (int(grid[0] * stride), int(grid[1] * stride)),
                         pad_before_shift=pad_first)


def random_maps(g: BlockGeometry, batch=2, heads=3, seed=0) -> torch.Tensor:
    """Softmax of random logits over every key of each window, masked pairs and padding included."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch * g.num_windows, heads, g.window_tokens, g.window_tokens, generator=gen)
    return logits.softmax(-1)


GEOMETRIES = [
    geom(),                                                     # plain windows
    geom(shift=(3, 3)),                                         # shifted, no padding
    geom(grid=(10, 9), window=(4, 4), shift=(2, 2)),            # shifted and padded (timm: shift, then pad)
    geom(grid=(10, 9), window=(4, 4), shift=(2, 2), pad_first=True),   # transformers: pad, then shift
    geom(grid=(5, 5), window=(3, 3), stride=16.0),              # SAM-like: padded, no shift
    geom(grid=(4, 6), window=(4, 6), stride=32.0),              # one window over the whole map
]


def test_uniform_reference_values():
    assert window_uniform_distance(geom(), "patches") == pytest.approx(3.6095, abs=1e-4)
    assert window_uniform_distance(geom(window=(8, 8), grid=(16, 16)), "patches") == pytest.approx(4.1365, abs=1e-4)
    assert window_uniform_distance(geom(window=(14, 14), grid=(14, 14)), "patches") == pytest.approx(7.2808, abs=1e-4)
    for stride, px in ((4, 14.44), (8, 28.88), (16, 57.75), (32, 115.5)):
        assert window_uniform_distance(geom(stride=float(stride)), "px") == pytest.approx(px, abs=0.01)


@pytest.mark.parametrize("units", ["px", "patches", "fraction"])
def test_uniform_inside_every_window_gives_the_reference(units):
    g = geom()
    a = torch.full((2 * g.num_windows, 2, 49, 49), 1 / 49)
    out = windowed_mean_attention_distance(a, g, units=units)
    assert out.shape == (2, 2)
    assert torch.allclose(out, torch.tensor(window_uniform_distance(g, units)).float().expand(2, 2), atol=1e-5)


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: g.describe())
def test_identity_gives_zero(g):
    eye = torch.eye(g.window_tokens).expand(2 * g.num_windows, 2, -1, -1)
    assert torch.allclose(windowed_mean_attention_distance(eye, g), torch.zeros(2, 2))


def one_hot_offset(g: BlockGeometry, dy: int, dx: int) -> torch.Tensor:
    """Each query attends to the window-local token ``(a + dy, b + dx)`` where it is in the window."""
    wh, ww = g.window_size
    a = torch.zeros(g.num_windows, 1, wh * ww, wh * ww)
    for y in range(wh):
        for x in range(ww):
            if 0 <= y + dy < wh and 0 <= x + dx < ww:
                a[:, 0, y * ww + x, (y + dy) * ww + x + dx] = 1.0
    return a


@pytest.mark.parametrize("shift", [(0, 0), (3, 3)])
@pytest.mark.parametrize("offset", [(0, 1), (2, 1), (-3, 2)])
def test_one_hot_offset_gives_its_length_times_the_stride(shift, offset):
    g = geom(shift=shift)
    out = windowed_mean_attention_distance(one_hot_offset(g, *offset), g)
    assert out.item() == pytest.approx(4.0 * math.hypot(*offset), rel=1e-6)


def test_shifted_blocks_do_not_count_wrapped_tokens():
    """In a shifted block a window holds tokens from both sides of the map; counting them
    (un-shifted positions, no mask) would put the wrapped pairs far apart."""
    g = geom(shift=(3, 3))
    a = one_hot_offset(g, 2, 1)
    pos, _ = token_positions(g)
    c = pos * 4.0
    d = np.sqrt(((c[:, :, None] - c[:, None]) ** 2).sum(-1))
    rows = a[:, 0].numpy()
    has = rows.sum(-1) > 0
    naive = float(((rows * d).sum(-1))[has].mean())
    assert naive > 4.0 * math.hypot(2, 1) + 1.0
    assert windowed_mean_attention_distance(a, g).item() == pytest.approx(4.0 * math.hypot(2, 1), rel=1e-6)


def test_positions_follow_the_cyclic_shift():
    g = geom(shift=(3, 3))
    pos, valid = token_positions(g)
    assert valid.all()
    # window (0, 0), local (0, 0) holds the token of un-shifted (3, 3); the last window wraps to (0, 0)
    assert tuple(pos[0, 0]) == (3, 3)
    assert tuple(pos[-1, 4 * 7 + 4]) == (0, 0)
    # every un-shifted position appears exactly once
    flat = pos[..., 0] * 14 + pos[..., 1]
    assert sorted(flat.ravel().tolist()) == list(range(196))
    # without padding, a pair is masked exactly when it wraps
    region = shift_regions(g)
    same = region[:, :, None] == region[:, None, :]
    local = np.stack(np.meshgrid(np.arange(7), np.arange(7), indexing="ij"), -1).reshape(49, 2)
    wraps = np.abs((pos[:, :, None] - pos[:, None]) - (local[:, None] - local[None])).sum(-1) > 0
    assert (same == ~wraps).all()


@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: g.describe())
@pytest.mark.parametrize("units", ["px", "fraction"])
def test_equals_the_literal_full_map_computation(g, units):
    a = random_maps(g)
    fast = windowed_mean_attention_distance(a, g, units=units).double()
    slow = windowed_distance_literal(a, g, units)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_padding_is_excluded_as_keys_and_queries():
    g = geom(grid=(10, 9), window=(4, 4))                       # padded to 12 x 12
    assert g.padding == (2, 3) and g.num_windows == 9
    a = torch.full((g.num_windows, 1, 16, 16), 1 / 16)           # uniform over every slot, padding included
    out = windowed_mean_attention_distance(a, g).item()
    assert out == pytest.approx(windowed_distance_literal(a, g).item(), rel=1e-6)
    # keys: the real tokens of each window only, renormalised; queries: real tokens only
    pos, valid = token_positions(g)
    d = pair_distances(g)
    per_query = [(d[w, q][valid[w]]).mean() for w in range(9) for q in range(16) if valid[w, q]]
    assert out == pytest.approx(float(np.mean(per_query)), rel=1e-6)
    assert len(per_query) == 90
    # counting padding as keys would give another value
    full = float(np.mean([d[w, q].mean() for w in range(9) for q in range(16) if valid[w, q]]))
    assert abs(full - out) > 0.1


def test_global_block_is_the_global_definition():
    g = geom(grid=(4, 6), window=(4, 6), stride=32.0)
    assert g.is_global
    layout = TokenLayout(prefix_kinds=(), grid_size=(4, 6), patch_stride=(32.0, 32.0), input_size=(128, 192))
    a = random_maps(g)
    for units in ("px", "patches", "fraction"):
        assert torch.allclose(windowed_mean_attention_distance(a, g, units=units),
                              mean_attention_distance(a, layout, units=units), atol=1e-5)
        assert window_uniform_distance(g, units) == pytest.approx(uniform_distance(layout, units))


def test_full_map_rows_sum_to_the_counted_mass():
    g = geom(shift=(3, 3))
    a = random_maps(g, batch=1, heads=1)
    full = windowed_full_map_literal(a, g)
    mass = (a[:, 0] * torch.as_tensor(counted_pairs(g), dtype=a.dtype)).sum(-1)       # [window, query]
    pos, _ = token_positions(g)
    ids = torch.as_tensor(pos[..., 0] * 14 + pos[..., 1])
    assert torch.allclose(full[0, 0].sum(-1)[ids.reshape(-1)], mass.reshape(-1).double(), atol=1e-6)


def test_rejects_maps_of_another_geometry():
    with pytest.raises(ValueError, match="does not fit"):
        windowed_mean_attention_distance(torch.rand(3, 1, 49, 49), geom())


def test_nonfinite_maps_give_nan():
    g = geom()
    a = random_maps(g, batch=2, heads=2)
    a[g.num_windows + 1, 1, 3, 5] = float("nan")
    out = windowed_mean_attention_distance(a, g)
    assert torch.isnan(out[1, 1]) and torch.isfinite(out[0]).all() and torch.isfinite(out[1, 0])


def test_accumulator_streams_pads_heads_and_merges():
    blocks = (BlockGeometry((8, 8), (4.0, 4.0), (4, 4), (0, 0), (32, 32), stage=0, block=0),
              BlockGeometry((8, 8), (4.0, 4.0), (4, 4), (2, 2), (32, 32), stage=0, block=1),
              BlockGeometry((4, 4), (8.0, 8.0), (4, 4), (0, 0), (32, 32), stage=1, block=0))
    layout = WindowLayout(blocks, (32, 32))
    heads = [1, 1, 3]
    maps = [[random_maps(g, batch=2, heads=h, seed=10 * b + i) for i, (g, h) in enumerate(zip(blocks, heads))]
            for b in range(3)]
    acc, part1, part2 = (WindowedDistanceAccumulator(layout, heads) for _ in range(3))
    for b, batch in enumerate(maps):
        for i, a in enumerate(batch):
            acc.update(i, a)
            (part1 if b < 2 else part2).update(i, a)
    part1.merge(part2)
    r, r2 = acc.result(model="toy"), part1.result(model="toy")
    assert r.distance.shape == (3, 3) and r.n_images == 6
    assert np.isnan(r.distance[0, 1:]).all() and np.isfinite(r.distance[2]).all()
    assert np.allclose(r.distance, r2.distance, equal_nan=True)
    for i, (g, h) in enumerate(zip(blocks, heads)):
        direct = torch.cat([windowed_mean_attention_distance(batch[i], g) for batch in maps]).double()
        assert np.allclose(r.distance[i, :h], direct.mean(0).numpy())
        assert np.allclose(r.std[i, :h], direct.std(0).numpy(), atol=1e-9)
        assert (r.low[i, :h] <= r.distance[i, :h] + 1e-12).all() and (r.high[i, :h] >= r.distance[i, :h] - 1e-12).all()
    assert list(r.stage) == [0, 0, 1] and list(r.block) == [0, 1, 0] and list(r.heads) == heads
    assert r.uniform_by_layer[2] == pytest.approx(window_uniform_distance(blocks[2]))
    frame = r.to_frame()
    assert len(frame) == 5 and list(frame.columns[:5]) == ["model", "layer", "stage", "block", "head"]
    assert frame["distance_px"].notna().all()
    assert r.local_heads().shape == (3, 3) and not r.local_heads()[0, 1:].any()
    assert r.to_dict()["heads"] == heads
    with pytest.raises(ValueError):
        r.distance[0, 0] = 1.0
    with pytest.raises(ValueError, match="heads"):
        acc.update(0, random_maps(blocks[0], heads=2))
