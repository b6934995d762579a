"""Attention rollout: the paper's formula, batched, on every family; gradient rollout by class.

The fast code is compared with a slow, literal implementation written here from the definitions
(Abnar & Zuidema 2020; Chefer et al. 2021), applied to each image alone, with attention
recomputed independently of vitlens's hooks (``reference.recompute_attention``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
from conftest import FAMILIES, batch, build
from reference import recompute_attention

import vitlens
from vitlens.analyses.attention.rollout import (
    HEAD_FUSIONS,
    RolloutMaps,
    RolloutSettingsError,
    add_residual,
    attention_rollout,
    discard_lowest,
    fuse_heads,
    image_keys,
    patch_map,
    rollout,
)
from vitlens.analyses.attention.scores import mask_share
from vitlens.capture.attention import attention_modules


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread than on a shared, busy pair of cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sharpen(model: torch.nn.Module, factor: float = 6.0) -> torch.nn.Module:
    """Scale query and key weights so random-init attention is far from uniform (a near-uniform map
    would hide a shifted or mis-normalised readout)."""
    with torch.no_grad():
        for _, m in attention_modules(model):
            d = m.qkv.weight.shape[0] // 3
            m.qkv.weight[:2 * d] *= factor
            if m.qkv.bias is not None:
                m.qkv.bias[:2 * d] *= factor
            for name in ("q_bias", "k_bias"):
                if getattr(m, name, None) is not None:
                    getattr(m, name).mul_(factor)
            for name in ("q_norm", "k_norm"):
                w = getattr(getattr(m, name, None), "weight", None)
                if w is not None:
                    w.mul_(factor)
    return model


# --------------------------------------------------------------------------- literal reference

def literal_rollout(layers, fusion: str, discard_ratio: float, residual_weight: float, cls):
    """Joint attention of one image, written out element by element.

    layers: per layer ``[head][query][key]`` nested lists of floats.
    """
    joint = None
    for heads in layers:
        h, n = len(heads), len(heads[0])
        fused = [[0.0] * n for _ in range(n)]
        for q in range(n):
            for k in range(n):
                vals = [heads[i][q][k] for i in range(h)]
                fused[q][k] = {"mean": sum(vals) / h, "max": max(vals), "min": min(vals)}[fusion]
        candidates = sorted((fused[q][k], q * n + k) for q in range(n) for k in range(n)
                            if cls is None or (q != cls and k != cls))
        for _, flat in candidates[:int(discard_ratio * len(candidates))]:
            fused[flat // n][flat % n] = 0.0
        a = [[(1 - residual_weight) * fused[q][k] + (residual_weight if q == k else 0.0) for k in range(n)]
             for q in range(n)]
        a = [[v / sum(row) for v in row] for row in a]
        if joint is None:
            joint = a
        else:
            joint = [[sum(a[q][j] * joint[j][k] for j in range(n)) for k in range(n)] for q in range(n)]
    return joint


def literal_grad_rollout(layers, grads):
    """Chefer et al.: R = I; per layer R = R + A_bar R, A_bar = mean_h max(0, grad * A)."""
    n = len(layers[0][0])
    r = [[1.0 if q == k else 0.0 for k in range(n)] for q in range(n)]
    for heads, gheads in zip(layers, grads):
        h = len(heads)
        a_bar = [[sum(max(0.0, gheads[i][q][k] * heads[i][q][k]) for i in range(h)) / h for k in range(n)]
                 for q in range(n)]
        r = [[r[q][k] + sum(a_bar[q][j] * r[j][k] for j in range(n)) for k in range(n)] for q in range(n)]
    return r


def literal_map(joint, layout):
    """Class-token row over patches, or the mean over patch queries; reshaped row-major."""
    p0, gh, gw = layout.num_prefix_tokens, *layout.grid_size
    patches = range(p0, p0 + gh * gw)
    if layout.class_token_index is not None:
        row = [joint[layout.class_token_index][k] for k in patches]
    else:
        row = [sum(joint[q][k] for q in patches) / len(patches) for k in patches]
    return np.array(row).reshape(gh, gw)


def _lists(maps):
    return [m[0].double().tolist() for m in maps]


# --------------------------------------------------------------------------- the formula, per family

@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_each_map_is_the_papers_formula_on_that_image_alone(family, fusion):
    model = sharpen(build(family))
    x = batch(family, n=3)
    layout = vitlens.token_layout(model, FAMILIES[family][2])
    alone = [_lists(recompute_attention(model, x[i:i + 1])) for i in range(3)]
    for ratio in (0.0, 0.5):
        got = attention_rollout(model, x, head_fusion=fusion, discard_ratio=ratio, batch_size=2)
        assert got.maps.shape == (3, *layout.grid_size)
        assert got.readout == ("cls" if layout.has_class_token else "patch_mean")
        assert (got.maps >= 0).all()
        for i in range(3):
            want = literal_map(literal_rollout(alone[i], fusion, ratio, 0.5, layout.class_token_index), layout)
            np.testing.assert_allclose(got.maps[i], want, rtol=2e-5, atol=1e-8)


@pytest.mark.filterwarnings("ignore:.*no classifier")
def test_gradient_rollout_is_chefers_formula_per_image(family):
    model = sharpen(build(family))
    x = batch(family, n=3)
    layout = vitlens.token_layout(model, FAMILIES[family][2])
    got = attention_rollout(model, x, method="grad-rollout", batch_size=2)
    for i in range(3):
        with vitlens.capture_attention(model, detach=False) as cap:
            out = model(x[i:i + 1])
        target = int(out[0].argmax())
        assert got.target[i] == got.predicted[i] == target
        grads = torch.autograd.grad(out[0, target], cap.maps)
        want = literal_map(literal_grad_rollout(_lists(cap.maps), _lists(grads)), layout)
        np.testing.assert_allclose(got.maps[i], want, rtol=2e-5, atol=1e-9)


def test_residual_weight_and_layer_range_follow_the_formula():
    model = sharpen(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=4,
                                      num_heads=2).eval())
    x = batch("vit", n=2)
    layout = vitlens.token_layout(model, (32, 32))
    got = attention_rollout(model, x, head_fusion="max", residual_weight=0.3, start_layer=1, end_layer=-2)
    assert got.layers == (1, 2) and got.num_layers == 4
    for i in range(2):
        maps = _lists(recompute_attention(model, x[i:i + 1]))
        want = literal_map(literal_rollout(maps[1:3], "max", 0.0, 0.3, 0), layout)
        np.testing.assert_allclose(got.maps[i], want, rtol=2e-5, atol=1e-8)
    with pytest.raises(RolloutSettingsError, match="comes after"):
        attention_rollout(model, x, start_layer=3, end_layer=1)
    with pytest.raises(RolloutSettingsError, match="out of range"):
        attention_rollout(model, x, end_layer=4)


@pytest.mark.filterwarnings("ignore:.*no classifier")
@pytest.mark.parametrize("method", ["rollout", "grad-rollout"])
@pytest.mark.parametrize("fam", ["vit", "gap_no_cls", "dinov2_registers", "dynamic"])
def test_batch_size_does_not_change_any_map(fam, method):
    model = sharpen(build(fam))
    x = batch(fam, n=5)
    kw = dict(method=method, head_fusion="min", discard_ratio=0.3) if method == "rollout" else dict(method=method)
    ref = attention_rollout(model, x, batch_size=5, **kw)
    for bs in (1, 2, 7):
        got = attention_rollout(model, x, batch_size=bs, **kw)
        np.testing.assert_allclose(got.maps, ref.maps, rtol=1e-5, atol=1e-9)
        assert got.names == ("0", "1", "2", "3", "4")
    single = attention_rollout(model, x[3], **kw)  # one unbatched image
    np.testing.assert_allclose(single.maps[0], ref.maps[3], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("fam", ["vit", "gap_no_cls", "dinov2_registers"])
def test_row_vector_readout_equals_the_full_product(fam):
    """The read-out row carried back through the layer matrices gives the map of the N x N product
    the rollout folds layer by layer as the forward pass runs."""
    import vitlens.analyses.attention.rollout as ro

    model = sharpen(build(fam))
    x = batch(fam, n=3)
    layout = vitlens.token_layout(model)
    for kw in (dict(), dict(head_fusion="max", discard_ratio=0.4, residual_weight=0.3)):
        folded = attention_rollout(model, x, **kw)
        with torch.no_grad(), vitlens.capture_attention(model) as cap:
            model(x)
        mats = [ro.layer_matrix(m, class_token_index=layout.class_token_index, **kw) for m in cap.maps]
        by_rows = ro.row_rollout(mats, layout, folded.readout)
        np.testing.assert_allclose(by_rows.numpy(), folded.maps, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["rollout", "grad-rollout"])
def test_a_subset_of_images_gives_their_maps_and_takes_them_back_in_order(method):
    from vitlens.analyses.attention.rollout import iter_rollout
    from vitlens.analyses.attention.scores import DeletionCurve, deletion_curve

    model = sharpen(build("vit"))
    x = batch("vit", n=5)
    targets = [3, 1, 4, 1, 5]
    whole = attention_rollout(model, x, method=method, target_class=targets)
    pick = [3, 0, 4]
    part = RolloutMaps.concat([p for _, p in iter_rollout(model, x, method=method, target_class=targets,
                                                          batch_size=2, indices=pick)])
    assert part.names == ("3", "0", "4") and list(part.target) == [targets[i] for i in pick]
    np.testing.assert_allclose(part.maps, whole.maps[pick], rtol=1e-5, atol=1e-9)
    back = part.take(np.argsort([int(n) for n in part.names]))
    assert back.names == ("0", "3", "4") and list(back.target) == [3, 1, 5]
    np.testing.assert_allclose(back.maps, whole.maps[[0, 3, 4]], rtol=1e-5, atol=1e-9)
    curve = deletion_curve(model, x[pick], part, steps=2)
    first = curve.take([1])
    assert first.names == ("0",) and first.confidence.shape == (1, 3)
    joined = DeletionCurve.concat([curve.take([2]), first])
    assert joined.names == ("4", "0") and np.array_equal(joined.auc, curve.auc[[2, 1]])


# --------------------------------------------------------------------------- reference defects

def test_rows_are_normalised_on_the_right_axis_for_any_batch():
    # max fusion gives rows that do not sum to one; vit-explain divides by a.sum(dim=-1) without keepdim
    heads = torch.tensor([[[0.6, 0.4, 0.0], [0.0, 0.1, 0.9], [0.2, 0.2, 0.6]],
                          [[0.1, 0.1, 0.8], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]]], dtype=torch.float64)
    fused = fuse_heads(heads[None], "max")[0]
    torch.testing.assert_close(fused, torch.tensor([[.6, .4, .8], [.5, .5, .9], [.3, .3, .6]], dtype=torch.float64))
    got = add_residual(fused[None], 0.5)[0]
    # hand-computed: fused + I, each row divided by its own sum (2.8, 2.9, 2.2)
    want = torch.tensor([[1.6 / 2.8, 0.4 / 2.8, 0.8 / 2.8],
                         [0.5 / 2.9, 1.5 / 2.9, 0.9 / 2.9],
                         [0.3 / 2.2, 0.3 / 2.2, 1.6 / 2.2]], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    a = 0.5 * fused + 0.5 * torch.eye(3, dtype=torch.float64)
    wrong_axis = a / a.sum(dim=-1)  # divides column j by row j's sum
    assert not torch.allclose(got, wrong_axis)
    b = torch.rand(4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows = add_residual(b, 0.5).sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    with pytest.raises(RuntimeError):  # the reference's expression cannot even take this batch
        (b + torch.eye(5)) / (b + torch.eye(5)).sum(dim=-1)


def test_discard_treats_every_image_and_spares_the_class_row_and_column():
    g = torch.Generator().manual_seed(0)
    fused = torch.rand(3, 5, 5, dtype=torch.float64, generator=g) + 0.1
    fused[:, 0, 3] = 0.01  # the class token's row and column hold the smallest weights
    fused[:, 2, 0] = 0.02
    got = discard_lowest(fused, 0.5, class_token_index=0)
    k = int(0.5 * 16)  # 16 entries outside row 0 and column 0
    for i in range(3):
        torch.testing.assert_close(got[i:i + 1], discard_lowest(fused[i:i + 1], 0.5, 0))
        assert int((got[i] == 0).sum()) == k
        torch.testing.assert_close(got[i, 0], fused[i, 0])
        torch.testing.assert_close(got[i, :, 0], fused[i, :, 0])
        block = fused[i, 1:, 1:].flatten()
        zeroed = block[got[i, 1:, 1:].flatten() == 0]
        assert zeroed.max() <= block[got[i, 1:, 1:].flatten() != 0].min()
    # vit-explain: flat[0, indices] = 0 (only image 0) with only index 0 (class -> class) spared
    flat = fused.reshape(3, -1).clone()
    _, idx = flat.topk(int(flat.size(-1) * 0.5), -1, False)
    idx = idx[idx != 0]
    flat[0, idx] = 0
    assert int((flat[1] == 0).sum()) == 0 and int((got[1] == 0).sum()) == k
    assert flat[0, 3] == 0 and got[0, 0, 3] == fused[0, 0, 3]


def test_discard_without_class_token_and_ties():
    fused = torch.full((1, 3, 3), 0.5, dtype=torch.float64)
    got = discard_lowest(fused, 0.5, class_token_index=None)
    assert got.flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5]  # ties: row-major first
    assert torch.equal(discard_lowest(fused, 0.0), fused)
    with pytest.raises(RolloutSettingsError):
        discard_lowest(fused, 1.5)


@pytest.mark.parametrize("fam", ["deit_distilled", "dinov2_registers", "dynamic"])
def test_extra_tokens_and_non_square_grids_are_read_through_the_layout(fam):
    model = sharpen(build(fam))
    x = batch(fam, n=2)
    layout = vitlens.token_layout(model, FAMILIES[fam][2])
    n = layout.num_tokens
    gh, gw = layout.grid_size
    if fam != "dynamic":  # the reference's sqrt(N - 1) reshape has no answer here
        assert math.isqrt(n - 1) ** 2 != n - 1
    else:
        assert gh != gw
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    joint = rollout(cap.maps)
    got = attention_rollout(model, x)
    want = joint[:, 0, layout.num_prefix_tokens:].reshape(2, gh, gw).numpy()
    np.testing.assert_allclose(got.maps, want, rtol=1e-6, atol=1e-9)
    shifted = joint[:, 0, 1:1 + gh * gw].reshape(2, gh, gw).numpy()  # prefix tokens taken for patches
    if layout.num_prefix_tokens > 1:
        assert not np.allclose(got.maps, shifted, rtol=1e-3)


def test_patch_map_reads_row_major_after_every_prefix_token():
    layout = vitlens.TokenLayout(prefix_kinds=("cls", "dist", "reg", "reg"), grid_size=(2, 3),
                                 patch_stride=(8.0, 8.0), input_size=(16, 24))
    n = layout.num_tokens
    joint = torch.arange(n * n, dtype=torch.float64).reshape(1, n, n)
    torch.testing.assert_close(patch_map(joint, layout)[0],
                               torch.tensor([[4., 5., 6.], [7., 8., 9.]], dtype=torch.float64))
    no_cls = vitlens.TokenLayout(prefix_kinds=(), grid_size=(2, 3), patch_stride=(8.0, 8.0), input_size=(16, 24))
    j = torch.arange(36, dtype=torch.float64).reshape(1, 6, 6)
    torch.testing.assert_close(patch_map(j, no_cls)[0], j[0].mean(0).reshape(2, 3))
    with pytest.raises(RolloutSettingsError, match="class token"):
        patch_map(j, no_cls, readout="cls")
    with pytest.raises(vitlens.UnsupportedModelError, match="tokens"):
        patch_map(joint[:, :6, :6], layout)


def test_patch_mean_readout_on_a_class_token_model():
    model = sharpen(build("vit"))
    x = batch("vit", n=2)
    layout = vitlens.token_layout(model, (32, 32))
    got = attention_rollout(model, x, readout="patch_mean")
    for i in range(2):
        joint = literal_rollout(_lists(recompute_attention(model, x[i:i + 1])), "mean", 0.0, 0.5, 0)
        ps = range(1, 17)
        want = np.array([sum(joint[q][k] for q in ps) / 16 for k in ps]).reshape(4, 4)
        np.testing.assert_allclose(got.maps[i], want, rtol=2e-5)


# --------------------------------------------------------------------------- hooks, flags, errors

def _flags(model):
    return [m.fused_attn for _, m in attention_modules(model)]


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["rollout", "grad-rollout"])
def test_hooks_and_fused_flags_restored(method):
    model = build("deit_distilled")
    x = batch("deit_distilled", n=2)
    before, hooks = _flags(model), _hooks(model)
    assert all(before)
    with torch.no_grad():
        plain = model(x)
    for _ in range(3):
        attention_rollout(model, x, method=method)
    assert _flags(model) == before and _hooks(model) == hooks
    with pytest.raises(RolloutSettingsError, match="out of range"):
        attention_rollout(model, x, method=method, target_class=[0, 1000])
    assert _flags(model) == before and _hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain)


def test_settings_and_models_that_cannot_be_rolled_out(tiny_cnn, tiny_vit):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(vitlens.UnsupportedModelError, match="not a Vision Transformer"):
        attention_rollout(tiny_cnn, x)
    for bad in (dict(head_fusion="median"), dict(discard_ratio=-0.1), dict(residual_weight=2.0),
                dict(method="lrp"), dict(readout="dist"), dict(method="grad-rollout", head_fusion="max"),
                dict(method="grad-rollout", discard_ratio=0.5), dict(batch_size=0)):
        with pytest.raises(RolloutSettingsError):
            attention_rollout(tiny_vit, x, **bad)
    with pytest.raises(vitlens.UnsupportedModelError, match="cannot take"):
        attention_rollout(tiny_vit, torch.randn(1, 3, 48, 48))


def test_result_frame_and_plot(tmp_path):
    model = sharpen(build("dynamic"))
    x = batch("dynamic", n=2)
    r = attention_rollout(model, x, name="tiny")
    frame = r.to_frame()
    assert len(frame) == 2 * 30 and set(frame.image) == {"0", "1"}
    row = frame[(frame.image == "1") & (frame.row == 5) & (frame.col == 4)].iloc[0]
    assert row.value == pytest.approx(r.maps[1, 5, 4]) and (row.y_px, row.x_px) == (44.0, 36.0)
    assert r.settings()["discard_rule"].startswith("int(discard_ratio * M)")
    joined = RolloutMaps.concat([r, r])
    assert joined.maps.shape == (4, 6, 5) and len(joined) == 4
    ax = r.plot(1, image=np.full((48, 40, 3), 0.5))
    assert ax.get_xlim() == (0.0, 40.0) and ax.get_ylim() == (48.0, 0.0)
    overlay = ax.get_images()[1].get_array()
    np.testing.assert_allclose(np.asarray(overlay), r.maps[1])
    ax.figure.savefig(tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 0


# --------------------------------------------------------------------------- class specificity

def _squares(n: int, g: torch.Generator, side: int | None = None):
    """Noise with a bright 8 x 8 square: class 0 in the left half, class 1 in the right half."""
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g) if side is None else torch.full((n,), side)
    top = torch.randint(0, 25, (n,), generator=g)
    left = torch.randint(0, 9, (n,), generator=g) + 16 * y
    rows, cols = torch.arange(32)[None, :], torch.arange(32)[None, :]
    inside = ((rows >= top[:, None]) & (rows < top[:, None] + 8))[:, :, None] & \
             ((cols >= left[:, None]) & (cols < left[:, None] + 8))[:, None, :]
    return x + 2.0 * inside[:, None].float(), y


@pytest.fixture(scope="module")
def trained_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                              num_heads=2, num_classes=2)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        x, y = _squares(64, g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _squares(256, g)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, f"the tiny ViT did not learn the square task ({accuracy:.2f})"
    return model


def test_two_classes_give_different_gradient_maps(trained_vit):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 32, 32, generator=g) * 0.3
    x[:, :, 12:20, 2:10] += 2.0  # one square on each side
    x[:, :, 12:20, 22:30] += 2.0
    g0 = attention_rollout(trained_vit, x, method="grad-rollout", target_class=0)
    g1 = attention_rollout(trained_vit, x, method="grad-rollout", target_class=1)
    assert (g0.target == 0).all() and (g1.target == 1).all()
    left = np.zeros((4, 4))
    left[:, :2] = 1.0
    share0, share1 = mask_share(g0, left), mask_share(g1, left)
    assert np.abs(share0 - share1).mean() > 0.3  # the two classes point at different halves
    for a, b in zip(g0.maps, g1.maps):
        assert np.abs(a - b).max() > 0.2 * max(a.max(), b.max())
    r0 = attention_rollout(trained_vit, x, target_class=0)
    r1 = attention_rollout(trained_vit, x, target_class=1)
    np.testing.assert_array_equal(r0.maps, r1.maps)  # plain rollout is class-agnostic
    assert (r0.target == 0).all() and (r1.target == 1).all()
    predicted = attention_rollout(trained_vit, x, method="grad-rollout")
    for i, c in enumerate(predicted.target):
        np.testing.assert_allclose(predicted.maps[i], (g0, g1)[c].maps[i])


# --------------------------------------------------------------------------- files

def test_image_keys_disambiguate_repeated_names(tmp_path):
    paths = [tmp_path / "a" / "cat.jpg", tmp_path / "b" / "x" / "cat.jpg", tmp_path / "dog.png"]
    assert image_keys(paths) == ["a/cat.jpg", "b/x/cat.jpg", "dog.png"]
    assert image_keys(paths[1:]) == ["cat.jpg", "dog.png"]


def _write_images(folder, names, size=(40, 36)):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(p)


def test_rollout_job_writes_maps_overlays_and_record(tmp_path):
    from PIL import Image

    from vitlens.data.images import ImageSet
    from vitlens.jobs.rollout import overlay_names, run_rollout

    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    model = sharpen(timm.create_model("deit_tiny_distilled_patch16_224", **kwargs).eval())
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    imgs = tmp_path / "imgs"
    _write_images(imgs, ["a/cat.png", "b/cat.png", "dog.jpg"])
    (imgs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="skipped"):
        rec = run_rollout([("deit_tiny_distilled_patch16_224", str(ckpt))], [str(imgs)], out, input_size=32,
                          method="grad-rollout", batch_size=2, deletion_steps=4, model_kwargs=kwargs,
                          show_progress=False)
    z = np.load(out / "rollout.npz")
    assert sorted(z.files) == ["a/cat.png", "b/cat.png", "dog.jpg"]
    imageset = ImageSet.for_model(model, [imgs], input_size=32)
    with pytest.warns(UserWarning, match="skipped"):
        want = attention_rollout(model, imageset, method="grad-rollout")
    for key, m in zip(want.names, want.maps):
        assert z[key].shape == (4, 4) and z[key].dtype == np.float32 and (z[key] >= 0).all()
        np.testing.assert_allclose(z[key], m, rtol=1e-4, atol=1e-7)
    for key in z.files:
        with Image.open(out / "overlays" / overlay_names(z.files)[key]) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    with Image.open(out / "contact_sheet.png") as im:
        assert im.size[0] > 200
    saved = json.loads((out / "run.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    entry = saved["models"][0]
    assert entry["images"]["n_images"] == 3 and entry["images"]["skipped"][0]["path"].endswith("broken.png")
    assert entry["conventions"]["method"] == "grad-rollout" and "not rescaled" in entry["conventions"]["values"]
    assert entry["model"]["token_layout"]["prefix_kinds"] == ["cls", "dist"]
    assert entry["target"] == {k: int(t) for k, t in zip(want.names, want.target)}
    frame = (out / "deletion.csv").read_text().splitlines()
    assert frame[0] == "image,step,removed,fraction,confidence,target,order" and len(frame) == 1 + 2 * 3 * 5
    assert set(entry["deletion"]["auc"]) == set(z.files)
    # the random-order baseline: each image's own seeded order, whatever batch it came in
    from vitlens.analyses.attention.scores import random_order_deletion
    x = torch.cat([xb for xb, _ in imageset.batches(8)])
    base = random_order_deletion(model, x, target_class=want.target, steps=4, names=want.names,
                                 image_ids=want.indices)
    assert entry["deletion"]["random_order_mean_auc"] == pytest.approx(float(base.auc.mean()), rel=1e-6)
    with pytest.raises(vitlens.OutputError, match="already holds"):
        run_rollout([("deit_tiny_distilled_patch16_224", str(ckpt))], [str(imgs)], out, model_kwargs=kwargs,
                    input_size=32)


def test_cli_rollout(tmp_path, capsys):
    from vitlens.cli import main

    imgs = tmp_path / "imgs"
    _write_images(imgs, ["one.png", "two.png"], size=(64, 48))
    out = tmp_path / "out"
    assert main(["rollout", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(imgs),
                 "--out", str(out), "--head-fusion", "max", "--discard-ratio", "0.9", "--batch-size", "2",
                 "--end-layer", "1"]) == 0
    z = np.load(out / "rollout.npz")
    assert sorted(z.files) == ["one.png", "two.png"] and z["one.png"].shape == (14, 14)
    rec = json.loads((out / "run.json").read_text())
    conv = rec["models"][0]["conventions"]
    assert (conv["head_fusion"], conv["discard_ratio"], conv["layers"]) == ("max", 0.9, [0, 1])
    assert rec["args"]["head_fusion"] == "max" and (out / "overlays" / "two.png").is_file()
    assert "2 maps" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main(["rollout", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(imgs),
                 "--out", str(again), "--head-fusion", "max", "--discard-ratio", "0.9", "--end-layer", "1"]) == 0
    z2 = np.load(again / "rollout.npz")
    np.testing.assert_array_equal(z2["one.png"], z["one.png"])  # random weights come from the seed
    assert main(["rollout", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(imgs),
                 "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["rollout", "--model", "resnet18", "--random-init", "--images", str(imgs),
                 "--out", str(tmp_path / "cnn")]) == 2
    err = capsys.readouterr().err
    assert "not a Vision Transformer" in err and "Traceback" not in err
    assert not (tmp_path / "cnn" / "run.json").exists()
    assert main(["rollout", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(imgs),
                 "--out", str(tmp_path / "g"), "--method", "grad-rollout", "--discard-ratio", "0.5"]) == 2
    assert "plain rollout only" in capsys.readouterr().err
    both = tmp_path / "both"
    assert main(["rollout", "--model", "vit_tiny_patch16_224", "--model", "deit_tiny_distilled_patch16_224",
                 "--random-init", "--images", str(imgs), "--out", str(both), "--start-layer", "-1",
                 "--method", "grad-rollout", "--target-class", "3"]) == 0
    rec = json.loads((both / "run.json").read_text())
    assert [m["folder"] for m in rec["models"]] == ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"]
    assert rec["models"][1]["target"] == {"one.png": 3, "two.png": 3}
    for m in rec["models"]:
        assert (both / m["folder"] / "rollout.npz").is_file() and (both / m["folder"] / "contact_sheet.png").is_file()
