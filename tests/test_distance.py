"""Mean attention distance: closed forms, a literal reference, conventions, streaming, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import FAMILIES, batch, build

import vitlens
from vitlens.analyses.attention.distance import (
    DistanceAccumulator,
    distance_matrix,
    mean_attention_distance,
    uniform_distance,
)
from vitlens.analyses.attention.streaming import attention_distance, stream_distance
from vitlens.models.tokens import TokenLayout


def _layout(gh, gw, stride, prefix=("cls",), sx=None):
    return TokenLayout(prefix, (gh, gw), (float(stride), float(sx or stride)),
                       (int(gh * stride), int(gw * (sx or stride))))


@pytest.mark.parametrize("grid,stride,expected", [
    (14, 16, 116.49), (16, 14, 116.57), (7, 32, 115.50), (24, 16, 200.05), (8, 4, 16.55), (8, 8, 33.09)])
def test_uniform_attention_closed_forms(grid, stride, expected):
    layout = _layout(grid, grid, stride, prefix=())
    n = layout.num_tokens
    attn = torch.full((1, 1, n, n), 1.0 / n)
    got = mean_attention_distance(attn, layout).item()
    assert got == pytest.approx(expected, abs=0.006)
    assert uniform_distance(layout) == pytest.approx(expected, abs=0.006)


def test_identity_attention_is_zero():
    layout = _layout(5, 7, 16)
    attn = torch.eye(layout.num_tokens).expand(2, 3, -1, -1)
    assert torch.all(mean_attention_distance(attn, layout) == 0)


@pytest.mark.parametrize("dy,dx", [(0, 1), (2, 0), (1, 3), (-2, 1)])
def test_one_hot_offset_gives_its_length(dy, dx):
    """Every query attends one patch (dy, dx) away; queries whose target falls off the grid have
    no patch mass and are left out of the mean, so the distance is exactly the offset's length."""
    gh, gw, s = 6, 5, 16
    layout = _layout(gh, gw, s, prefix=())
    n = layout.num_tokens
    attn = torch.zeros(1, 1, n, n)
    for i in range(gh):
        for j in range(gw):
            if 0 <= i + dy < gh and 0 <= j + dx < gw:  # queries whose target exists
                attn[0, 0, i * gw + j, (i + dy) * gw + (j + dx)] = 1.0
    got = mean_attention_distance(attn, layout).item()
    assert got == pytest.approx(math.hypot(dy * s, dx * s), rel=1e-6)


def test_non_square_stride_and_units():
    layout = _layout(3, 4, 16, prefix=(), sx=8)  # 48 x 32 input
    d = distance_matrix(layout)
    assert d[0, 1] == pytest.approx(8) and d[0, 4] == pytest.approx(16)
    assert distance_matrix(layout, "patches")[0, 5] == pytest.approx(math.sqrt(2))
    assert distance_matrix(layout, "fraction")[0, 1] == pytest.approx(8 / 32)


def literal_mad(attn, layout, prefix_tokens):
    """Per-(image, head) distance by loops over the definition."""
    c = layout.patch_centers()
    P = layout.num_prefix_tokens
    B, H, _, _ = attn.shape
    out = np.zeros((B, H))
    for b in range(B):
        for h in range(H):
            total = 0.0
            for q in range(layout.num_patches):
                row = attn[b, h, P + q, P:].double().numpy()
                if prefix_tokens == "renormalize":
                    row = row / row.sum()
                total += sum(row[k] * math.dist(c[q], c[k]) for k in range(layout.num_patches))
            out[b, h] = total / layout.num_patches
    return out


@pytest.mark.parametrize("prefix_tokens", ["renormalize", "discard"])
@pytest.mark.parametrize("fam", ["vit", "deit_distilled", "dinov2_registers", "gap_no_cls", "dynamic"])
def test_matches_literal_definition_on_captured_maps(fam, prefix_tokens):
    model = build(fam)
    x = batch(fam, n=2)
    layout = vitlens.token_layout(model, FAMILIES[fam][2])
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    for attn in cap.maps:
        got = mean_attention_distance(attn, layout, prefix_tokens=prefix_tokens).numpy()
        np.testing.assert_allclose(got, literal_mad(attn, layout, prefix_tokens), rtol=1e-5)


def test_discard_is_biased_low_when_heads_attend_to_prefix():
    layout = _layout(4, 4, 16, prefix=("cls", "reg"))
    n = layout.num_tokens
    attn = torch.full((1, 1, n, n), 1.0 / n)
    attn[..., :2] *= 5
    attn = attn / attn.sum(-1, keepdim=True)
    ren = mean_attention_distance(attn, layout, prefix_tokens="renormalize").item()
    dis = mean_attention_distance(attn, layout, prefix_tokens="discard").item()
    assert ren == pytest.approx(uniform_distance(layout), rel=1e-5)
    patch_mass = attn[0, 0, 2, 2:].sum().item()
    assert dis == pytest.approx(ren * patch_mass, rel=1e-5)


def test_streaming_equals_direct_and_batch_size_invariant():
    model = build("deit_distilled")
    x = batch("deit_distilled", n=7, seed=3)
    layout = vitlens.token_layout(model)
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    direct = np.stack([mean_attention_distance(a, layout).numpy() for a in cap.maps])  # [layer, image, head]
    r1 = attention_distance(model, x, batch_size=1)
    r7 = attention_distance(model, x, batch_size=7)
    r3 = attention_distance(model, x, batch_size=3)
    np.testing.assert_allclose(r1.distance, direct.mean(1), rtol=1e-5)
    np.testing.assert_allclose(r1.std, direct.std(1, ddof=1), rtol=1e-4)
    for r in (r7, r3):
        np.testing.assert_allclose(r.distance, r1.distance, rtol=1e-5)
        np.testing.assert_allclose(r.std, r1.std, rtol=1e-4, atol=1e-6)
    assert r1.n_images == 7
    assert np.all(r1.low <= r1.distance) and np.all(r1.distance <= r1.high)
    lo, hi = np.percentile(direct, [2.5, 97.5], axis=1)
    bin_width = distance_matrix(layout).max() / 2048
    np.testing.assert_allclose(r1.low, np.minimum(lo, r1.distance), atol=(hi - lo).max() + bin_width)


def test_quantiles_from_histogram_are_close_to_exact():
    layout = _layout(4, 4, 16, prefix=())
    acc = DistanceAccumulator(layout, 1, 1)
    rng = np.random.default_rng(0)
    values = rng.uniform(10, 60, size=4000)
    acc.count[0, 0] = values.size
    acc.sum[0, 0], acc.sumsq[0, 0] = values.sum(), (values ** 2).sum()
    bins = np.clip((values / acc.max_distance * 2048).astype(int), 0, 2047)
    np.add.at(acc.hist[0, 0], bins, 1)
    acc.min[0, 0], acc.max[0, 0] = values.min(), values.max()
    r = acc.result()
    bin_width = acc.max_distance / 2048
    assert r.low[0, 0] == pytest.approx(np.percentile(values, 2.5), abs=2 * bin_width)
    assert r.high[0, 0] == pytest.approx(np.percentile(values, 97.5), abs=2 * bin_width)
    assert r.std[0, 0] == pytest.approx(values.std(ddof=1), rel=1e-9)


def test_merge_of_partial_states_equals_one_pass():
    model = build("vit")
    x = batch("vit", n=6, seed=5)
    layout = vitlens.token_layout(model)
    a = DistanceAccumulator(layout, 2, 2)
    b = DistanceAccumulator(layout, 2, 2)
    list(stream_distance(model, x, a, indices=[0, 1, 2, 3]))
    list(stream_distance(model, x, b, indices=[4, 5], batch_size=1))
    a.merge(b)
    whole = attention_distance(model, x)
    np.testing.assert_allclose(a.result().distance, whole.distance, rtol=1e-6)
    np.testing.assert_array_equal(a.hist, DistanceAccumulator(layout, 2, 2).hist + a.hist)


def test_nonfinite_attention_is_counted_not_averaged():
    layout = _layout(4, 4, 16)
    acc = DistanceAccumulator(layout, 1, 2)
    n = layout.num_tokens
    attn = torch.full((3, 2, n, n), 1.0 / n)
    attn[1, 0, 3, 4] = float("nan")
    acc.update(0, attn)
    r = acc.result()
    assert r.n_nonfinite[0, 0] == 1 and r.n_nonfinite[0, 1] == 0
    assert r.distance[0, 0] == pytest.approx(uniform_distance(layout), rel=1e-5)
    assert acc.count[0, 0] == 2


def test_result_frame_has_the_columns():
    r = attention_distance(build("vit"), batch("vit", n=2), name="tiny")
    f = r.to_frame()
    assert list(f.columns[:5]) == ["model", "layer", "head", "distance_px", "std_px"]
    assert len(f) == 2 * 2 and f["layer"].min() == 0 and (f["n_images"] == 2).all()


def test_wrong_layout_is_an_error():
    layout = _layout(4, 4, 16)
    with pytest.raises(ValueError, match="tokens"):
        mean_attention_distance(torch.ones(1, 1, 10, 10), layout)


def test_distances_held_on_the_device_are_flushed_into_the_sums():
    """On an accelerator update() only queues each layer's [batch, head] distances; every reader
    flushes them first. Queue by hand on the CPU and compare with immediate accumulation."""
    from conftest import batch, build

    from vitlens.analyses.attention.distance import mean_attention_distance
    from vitlens.analyses.attention.streaming import new_accumulator
    from vitlens.capture.attention import capture_attention

    model, x = build("vit"), batch("vit", n=3)
    now, later = new_accumulator(model), new_accumulator(model)
    with torch.no_grad(), capture_attention(model) as cap:
        model(x)
    for layer, attn in enumerate(cap.maps):
        now.update(layer, attn)
        later._pending.append((layer, mean_attention_distance(attn, later.layout)))
    assert later.count.sum() == 0          # nothing summed until a reader flushes
    a, b = now.result(), later.result()
    np.testing.assert_allclose(b.distance, a.distance, rtol=1e-12)
    assert b.n_images == 3 and not later._pending
