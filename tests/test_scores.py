"""Mask share, pointing game and deletion curves: closed-form cases on toy models and layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import batch, build

import vitlens
from vitlens.analyses.attention.rollout import attention_rollout
from vitlens.analyses.attention.scores import (
    DeletionCurve,
    box_mask,
    deletion_auc,
    deletion_curve,
    grid_mask,
    mask_share,
    pointing_hit,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread than on a shared, busy pair of cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LAYOUT = vitlens.TokenLayout(prefix_kinds=("cls",), grid_size=(4, 4), patch_stride=(8.0, 8.0), input_size=(32, 32))


def test_mask_share_closed_forms():
    uniform = np.ones((4, 4))
    mask = np.zeros((4, 4))
    mask[:, :1] = 1  # 4 of 16 patches
    assert mask_share(uniform, mask)[0] == pytest.approx(0.25)
    onehot = np.zeros((2, 4, 4))
    onehot[0, 1, 0] = 3.0
    onehot[1, 1, 3] = 3.0
    np.testing.assert_allclose(mask_share(onehot, mask), [1.0, 0.0])
    np.testing.assert_array_equal(pointing_hit(onehot, mask), [True, False])
    per_image = np.stack([mask, 1 - mask])
    np.testing.assert_allclose(mask_share(onehot, per_image), [1.0, 1.0])
    assert math.isnan(mask_share(np.zeros((4, 4)), mask)[0])
    with pytest.raises(ValueError, match="non-negative"):
        mask_share(-uniform, mask)
    with pytest.raises(ValueError, match="token layout"):
        mask_share(uniform, np.ones((32, 32)))


def test_input_resolution_masks_count_patch_area():
    pixels = np.zeros((32, 32), dtype=bool)
    pixels[0:4, 0:8] = True  # half of patch (0, 0)
    pixels[8:16, 8:16] = True  # all of patch (1, 1)
    g = grid_mask(pixels, LAYOUT)
    want = np.zeros((4, 4))
    want[0, 0], want[1, 1] = 0.5, 1.0
    np.testing.assert_allclose(g, want)
    onehot = np.zeros((4, 4))
    onehot[0, 0] = 1.0
    assert mask_share(onehot, pixels, LAYOUT)[0] == pytest.approx(0.5)
    assert pointing_hit(onehot, pixels, LAYOUT)[0]  # half the patch counts as a hit at min_cover 0.5
    assert not pointing_hit(onehot, pixels, LAYOUT, min_cover=0.75)[0]
    # a map spread uniformly over pixels gives the pixel share of the mask
    assert mask_share(np.ones((4, 4)), pixels, LAYOUT)[0] == pytest.approx(pixels.mean())


def test_boxes_and_non_integer_strides():
    m = box_mask((8, 0, 16, 8), (32, 32))
    np.testing.assert_array_equal(grid_mask(m, LAYOUT), np.eye(4)[0][:, None] * np.eye(4)[1][None, :])
    two = box_mask([[0, 0, 32, 16], [0, 16, 32, 32]], (32, 32))
    assert two.shape == (2, 32, 32) and two[0].sum() == 512 and not (two[0] & two[1]).any()
    odd = vitlens.TokenLayout(prefix_kinds=(), grid_size=(3, 3), patch_stride=(10 / 3, 10 / 3), input_size=(10, 10))
    np.testing.assert_allclose(grid_mask(np.ones((10, 10)), odd), np.ones((3, 3)))
    left = np.zeros((10, 10))
    left[:, :5] = 1  # the middle column of patches is half covered
    np.testing.assert_allclose(grid_mask(left, odd)[0], [1.0, 0.5, 0.0])
    padded = vitlens.TokenLayout(prefix_kinds=(), grid_size=(1, 3), patch_stride=(8.0, 8.0), input_size=(8, 20))
    edge = np.zeros((8, 20))
    edge[:, 18:] = 1  # half of the last patch's 4 in-image columns
    np.testing.assert_allclose(grid_mask(edge, padded)[0], [0.0, 0.0, 0.5])


def test_share_of_a_rollout_result():
    model = build("dynamic")
    r = attention_rollout(model, batch("dynamic", n=2))
    full = np.ones(r.layout.input_size)
    np.testing.assert_allclose(mask_share(r, full), [1.0, 1.0])
    top = box_mask((0, 0, 40, 24), r.layout.input_size)  # rows 0..2 of the 6 x 5 grid
    want = r.maps[:, :3].sum((1, 2)) / r.maps.sum((1, 2))
    np.testing.assert_allclose(mask_share(r, top), want)


class LinearToy(nn.Module):
    """logits = (sum(x[:, 0] * weight) * scale, 0): class-0 probability is sigmoid of a pixel sum."""

    def __init__(self, weight: torch.Tensor, scale: float = 0.01):
        super().__init__()
        self.register_buffer("weight", weight)
        self.scale = nn.Parameter(torch.tensor(scale))
        self.num_classes = 2

    def forward(self, x):
        s = (x[:, 0] * self.weight).sum((1, 2)) * self.scale
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_curve_closed_form():
    toy = LinearToy(torch.ones(32, 32))
    x = torch.ones(1, 3, 32, 32)
    rmap = np.arange(16, dtype=float).reshape(1, 4, 4)
    curve = deletion_curve(toy, x, rmap, layout=LAYOUT, steps=4, fill="zero")
    np.testing.assert_array_equal(curve.removed, [0, 4, 8, 12, 16])
    np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1])
    want = [1 / (1 + math.exp(-0.01 * 64 * (16 - n))) for n in curve.removed]
    np.testing.assert_allclose(curve.confidence[0], want, rtol=1e-6)
    trapezoid = sum((want[i] + want[i + 1]) / 2 * 0.25 for i in range(4))
    assert curve.auc[0] == pytest.approx(trapezoid, rel=1e-6)
    assert curve.target[0] == 0
    # fill "mean": removing every patch leaves the image's mean everywhere, so the pixel sum is unchanged
    g = torch.Generator().manual_seed(0)
    xr = torch.rand(2, 3, 32, 32, generator=g)
    curve = deletion_curve(toy, xr, np.random.default_rng(0).random((2, 4, 4)), layout=LAYOUT, steps=2, fill="mean")
    np.testing.assert_allclose(curve.confidence[:, 2], curve.confidence[:, 0], rtol=1e-6)
    assert not np.allclose(curve.confidence[:, 1], curve.confidence[:, 0])


def test_most_attended_patches_go_first():
    weight = torch.zeros(32, 32)
    weight[8:16, 16:24] = 1.0  # only patch (1, 2) matters to the toy
    toy = LinearToy(weight, scale=0.1)
    x = torch.ones(2, 3, 32, 32)
    good = np.zeros((2, 4, 4))
    good[:, 1, 2] = 1.0
    bad = 1.0 - good
    c_good = deletion_curve(toy, x, good, layout=LAYOUT, steps=16, fill="zero")
    c_bad = deletion_curve(toy, x, bad, layout=LAYOUT, steps=16, fill="zero")
    assert c_good.confidence[0, 1] == pytest.approx(0.5) and c_bad.confidence[0, 15] > 0.99
    assert (c_good.auc < c_bad.auc).all()
    # pixels beyond the last whole patch belong to no patch and are never removed
    wide = vitlens.TokenLayout(prefix_kinds=(), grid_size=(2, 2), patch_stride=(8.0, 8.0), input_size=(20, 20))
    w = torch.zeros(20, 20)
    w[16:, :] = 1.0
    edge = deletion_curve(LinearToy(w, 0.1), torch.ones(1, 3, 20, 20), np.ones((1, 2, 2)), layout=wide,
                          steps=1, fill="zero")
    assert edge.confidence[0, 1] == pytest.approx(edge.confidence[0, 0])


def test_deletion_is_batched_and_follows_the_rollout(tmp_path):
    model = build("vit")
    x = batch("vit", n=3)
    r = attention_rollout(model, x)
    one = deletion_curve(model, x, r, steps=5, batch_size=1)
    many = deletion_curve(model, x, r, steps=5, batch_size=64)
    np.testing.assert_allclose(one.confidence, many.confidence, rtol=1e-5)
    np.testing.assert_array_equal(one.target, r.predicted)
    assert one.names == r.names and one.confidence.shape == (3, 6)
    with torch.no_grad():
        intact = torch.softmax(model(x), -1)[torch.arange(3), torch.as_tensor(r.predicted)]
    np.testing.assert_allclose(one.confidence[:, 0], intact.numpy(), rtol=1e-5)
    np.testing.assert_allclose(deletion_auc(one.fractions, one.confidence), one.auc)
    fixed = deletion_curve(model, x, r, steps=5, target_class=7)
    assert (fixed.target == 7).all()
    frame = DeletionCurve.concat([one, fixed]).to_frame()
    assert len(frame) == 6 * 6 and list(frame.columns) == ["image", "step", "removed", "fraction", "confidence",
                                                          "target"]
    ax = one.plot()
    assert len(ax.get_lines()) == 4
    ax.figure.savefig(tmp_path / "d.png")
    with pytest.raises(ValueError, match="fill"):
        deletion_curve(model, x, r, fill="blur")
    with pytest.raises(ValueError, match="maps for"):
        deletion_curve(model, x[:2], r)
