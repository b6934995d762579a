"""Few-shot linear probes: the closed form against literal least squares, toy and random cases, every family."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import build

from vitlens import LabelError, ProbeResult, UnsupportedModelError, linear_probes
from vitlens.analyses.representations.probes import draw_shots
from vitlens.analyses.representations.ridge import heldout_regularization, ridge_accuracy, ridge_scores

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- literal references

def literal_scores(xs, ys, xt, n_classes, lam, standardize):
    """Scores of the probe from the augmented normal equations, solved with numpy's lstsq:
    ``([Z 1]^T [Z 1] + diag(lam, ..., lam, 0)) [W; b] = [Z 1]^T Y``, ``Z`` the (standardised) shots."""
    xs, xt = np.asarray(xs, np.float64), np.asarray(xt, np.float64)
    if standardize:
        mu, sd = xs.mean(0), xs.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        xs, xt = (xs - mu) / sd, (xt - mu) / sd
    y = np.full((len(ys), n_classes), -1.0)
    for i, c in enumerate(ys):
        y[i, c] = 1.0
    a = np.hstack([xs, np.ones((len(xs), 1))])
    pen = np.eye(a.shape[1]) * lam
    pen[-1, -1] = 0.0
    wb = np.linalg.lstsq(a.T @ a + pen, a.T @ y, rcond=None)[0]
    return np.hstack([xt, np.ones((len(xt), 1))]) @ wb


def literal_accuracy(xs, ys, xt, yt, n_classes, lam, standardize):
    return float(np.mean(literal_scores(xs, ys, xt, n_classes, lam, standardize).argmax(1) == np.asarray(yt)))


def _toy(n, d, classes, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * rng.uniform(0.1, 10, d) + rng.standard_normal(d) * 3, \
        np.arange(n) % classes


# --------------------------------------------------------------------------- the closed form

@pytest.mark.parametrize("n, d", [(12, 30), (40, 6)])               # the dual and the primal solve
@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("lam", [0.01, 1.0, 50.0])
def test_closed_form_equals_lstsq_on_the_augmented_normal_equations(n, d, standardize, lam):
    xs, ys = _toy(n, d, 3, 0)
    xt, _ = _toy(9, d, 3, 1)
    got = ridge_scores(xs, ys, xt, n_classes=3, regularization=lam, standardize=standardize)
    np.testing.assert_allclose(got, literal_scores(xs, ys, xt, 3, lam, standardize), rtol=1e-7, atol=1e-9)


def test_closed_form_equals_scikit_learn_ridge_with_an_intercept():
    from sklearn.linear_model import Ridge

    xs, ys = _toy(20, 8, 4, 2)
    xt, _ = _toy(7, 8, 4, 3)
    y = -np.ones((20, 4))
    y[np.arange(20), ys] = 1
    ref = Ridge(alpha=3.0, fit_intercept=True).fit(xs, y).predict(xt)
    np.testing.assert_allclose(ridge_scores(xs, ys, xt, n_classes=4, regularization=3.0, standardize=False), ref,
                               rtol=1e-8, atol=1e-10)


def test_batched_probes_and_per_probe_lambda_equal_one_probe_at_a_time():
    rng = np.random.default_rng(4)
    xs, xt = rng.standard_normal((5, 16, 10)), rng.standard_normal((5, 30, 10))
    ys, yt = np.arange(16) % 4, rng.integers(0, 4, 30)
    lams = np.array([0.1, 1.0, 10.0, 1.0, 1000.0])
    got = ridge_accuracy(xs, ys, xt, yt, n_classes=4, regularization=lams)
    ref = [literal_accuracy(xs[p], ys, xt[p], yt, 4, lams[p], True) for p in range(5)]
    np.testing.assert_allclose(got, ref)


def test_a_constant_feature_is_only_centred_and_lambda_must_be_positive():
    xs, ys = _toy(10, 5, 2, 5)
    xs[:, 2] = 7.0
    xt, _ = _toy(4, 5, 2, 6)
    np.testing.assert_allclose(ridge_scores(xs, ys, xt, n_classes=2, regularization=0.5),
                               literal_scores(xs, ys, xt, 2, 0.5, True), rtol=1e-7, atol=1e-9)
    for bad in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="positive"):
            ridge_scores(xs, ys, xt, n_classes=2, regularization=bad)


def test_separable_features_give_accuracy_one():
    rng = np.random.default_rng(0)
    classes, d = 5, 12
    centres = rng.standard_normal((classes, d)) * 10
    y = np.arange(200) % classes
    x = centres[y] + rng.standard_normal((200, d)) * 0.1
    shots = draw_shots(y, 3, 4, seed=0)
    for s in shots:
        test = np.setdiff1d(np.arange(200), s)
        assert ridge_accuracy(x[s], y[s], x[test], y[test], n_classes=classes)[0] == 1.0


def test_random_labels_give_about_chance():
    rng = np.random.default_rng(1)                         # fixed seeds: the value is the same on every run
    x, y = rng.standard_normal((800, 16)), rng.integers(0, 4, 800)
    accs = []
    for s in draw_shots(y, 10, 5, seed=3):
        test = np.setdiff1d(np.arange(800), s)
        accs.append(ridge_accuracy(x[s], y[s], x[test], y[test], n_classes=4)[0])
    assert abs(np.mean(accs) - 0.25) < 0.05


def test_draw_shots_takes_shots_of_every_class_without_replacement_and_is_seeded():
    y = np.array([0] * 5 + [1] * 7 + [2] * 4)
    d = draw_shots(y, 3, 6, seed=2)
    assert d.shape == (6, 9)
    for row in d:
        assert len(set(row)) == 9
        np.testing.assert_array_equal(y[row], np.repeat([0, 1, 2], 3))
    np.testing.assert_array_equal(d, draw_shots(y, 3, 6, seed=2))
    assert not np.array_equal(d, draw_shots(y, 3, 6, seed=3))


def test_heldout_lambda_is_the_best_on_folds_of_one_shot_per_class():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 12, 20)) + np.repeat(np.eye(3, 20) * 1.5, 4, axis=0)
    ys = np.repeat(np.arange(3), 4)                           # 4 shots of each class, in draw order
    grid = [0.01, 1.0, 100.0, 1e4]
    got = heldout_regularization(x, ys, n_classes=3, grid=grid)
    rank = np.tile(np.arange(4), 3)
    for p in range(2):
        acc = [np.mean([literal_accuracy(x[p][rank != f], ys[rank != f], x[p][rank == f], ys[rank == f], 3, lam, True)
                        for f in range(4)]) for lam in grid]
        best = max(i for i, a in enumerate(acc) if a == max(acc))   # the largest lambda on ties
        assert got[p] == grid[best]


# --------------------------------------------------------------------------- through a model

def _hooked(model, x, names):
    outs, mods = {}, dict(model.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, (o[0] if isinstance(o, tuple) else o).detach()))
          for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    return outs


def test_linear_probes_equal_a_literal_computation_on_a_tiny_vit():
    vit = build("vit")                                        # 1 class token, 4 x 4 patches, 2 blocks
    x = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = np.arange(30) % 3
    res = linear_probes(vit, x, y, shots=4, repeats=2, max_tokens=5, regularization=2.0, batch_size=7)
    assert isinstance(res, ProbeResult) and res.representations == ("cls", "gap", "token")
    assert res.layers == ("blocks.0", "blocks.1") and (res.n_test, res.n_classes) == (18, 3)
    outs = _hooked(vit, x, res.layers)
    for i, layer in enumerate(res.layers):
        o = outs[layer].double().numpy()
        pos = np.asarray(res.conventions["token_positions"][i])
        assert len(pos) == 5 and res.n_positions[i] == 16
        reps = {"cls": [o[:, 0]], "gap": [o[:, 1:].mean(1)], "token": [o[:, 1 + p] for p in pos]}
        for j, rep in enumerate(res.representations):
            for r in range(2):
                s = res.shot_indices[r]
                t = np.setdiff1d(np.arange(30), s)
                ref = np.mean([literal_accuracy(f[s], y[s], f[t], y[t], 3, 2.0, True) for f in reps[rep]])
                assert res.accuracy_repeats[i, j, r] == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(res.accuracy, res.accuracy_repeats.mean(-1))
    np.testing.assert_allclose(res.accuracy_std, res.accuracy_repeats.std(-1, ddof=1))
    assert not res.accuracy.flags.writeable and not res.accuracy_repeats.flags.writeable


def test_linear_probes_on_a_tiny_cnn_read_the_stage_maps():
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = np.arange(24) % 2
    res = linear_probes(cnn, x, y, shots=3, repeats=2, max_tokens=None)
    assert res.kind == "cnn" and res.representations == ("gap", "token")
    assert list(res.n_positions) == [256, 64, 16, 4, 1] and list(res.n_tokens_probed) == [256, 64, 16, 4, 1]
    outs = _hooked(cnn, x, res.layers)
    o = outs["layer3"].double().numpy()                        # [image, channel, 2, 2]
    s = res.shot_indices[1]
    t = np.setdiff1d(np.arange(24), s)
    ref_gap = literal_accuracy(o.mean((2, 3))[s], y[s], o.mean((2, 3))[t], y[t], 2, 1.0, True)
    ref_tok = np.mean([literal_accuracy(o[:, :, a, b][s], y[s], o[:, :, a, b][t], y[t], 2, 1.0, True)
                       for a in range(2) for b in range(2)])
    assert res.accuracy_repeats[3, 0, 1] == pytest.approx(ref_gap, abs=1e-12)
    assert res.accuracy_repeats[3, 1, 1] == pytest.approx(ref_tok, abs=1e-12)
    with pytest.raises(UnsupportedModelError, match="no class token"):
        linear_probes(cnn, x, y, shots=3, representations=["cls"])


def test_mode_is_restored_and_the_frame_is_tidy():
    vit = build("vit")
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = np.arange(16) % 2
    ref = linear_probes(vit, x, y, shots=2, repeats=3)
    vit.train()
    res = linear_probes(vit, x, y, shots=2, repeats=3)
    assert vit.training and all(m.training for m in vit.modules())
    np.testing.assert_allclose(res.accuracy_repeats, ref.accuracy_repeats)
    assert res.conventions["was_training"] is True
    f = res.to_frame()
    for c in ("model", "kind", "layer", "depth_fraction", "representation", "shots", "accuracy", "accuracy_std",
              "n_test"):
        assert c in f.columns
    assert len(f) == 6 and len(res.repeats_frame()) == 18
    html = res._repr_html_()
    assert "few-shot linear probes" in html and "data:image/png;base64" in html
    one = linear_probes(vit, x, y, shots=2, repeats=1, representations=["gap"])
    assert np.isnan(one.accuracy_std).all() and one.representations == ("gap",)


def test_label_errors_are_clear():
    vit = build("vit")
    x = torch.randn(12, 3, 32, 32)
    with pytest.raises(LabelError, match="at least two classes"):
        linear_probes(vit, x, np.zeros(12, dtype=int), shots=2)
    with pytest.raises(LabelError, match="at least 7 images in every class"):
        linear_probes(vit, x, np.arange(12) % 2, shots=6)
    with pytest.raises(ValueError, match="12 integer class indices"):
        linear_probes(vit, x, np.arange(11) % 2, shots=2)
    with pytest.raises(ValueError, match="heldout"):
        linear_probes(vit, x, np.arange(12) % 2, shots=2, regularization="best")


# --------------------------------------------------------------------------- every family

def _families():
    import open_clip
    import torchvision
    import transformers as T

    torch.manual_seed(0)
    yield "timm-gap", build("gap_no_cls"), 32, ("gap", "token")
    yield "timm-registers", build("dinov2_registers"), 56, ("cls", "gap", "token")
    yield "hf-vit", T.ViTForImageClassification(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                            intermediate_size=64, image_size=32, patch_size=8,
                                                            num_labels=3)), 32, ("cls", "gap", "token")
    yield "torchvision-vit", torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                                  hidden_dim=32, mlp_dim=64, num_classes=3), 32, \
        ("cls", "gap", "token")
    yield "torchvision-resnet", torchvision.models.resnet18(num_classes=3), 32, ("gap", "token")
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    yield "open_clip-vit", open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=text), 32, ("cls", "gap", "token")
    yield "timm-swin", timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                                         depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=4,
                                         num_classes=3), 56, ("gap", "token")


def test_every_family_goes_through_the_probes():
    for family, model, size, reps in _families():
        model.eval()
        x = torch.randn(12, 3, size, size, generator=torch.Generator().manual_seed(4))
        y = np.arange(12) % 3
        res = linear_probes(model, x, y, shots=2, repeats=2, max_tokens=8)
        assert res.representations == reps, family
        assert res.accuracy.shape == (len(res.layers), len(reps)) and np.isfinite(res.accuracy).all(), family
        assert ((res.accuracy >= 0) & (res.accuracy <= 1)).all(), family
        assert res.depth_fraction[0] == 0 and res.depth_fraction[-1] == 1, family
        if "cls" not in reps:
            with pytest.raises(UnsupportedModelError, match="class token"):
                linear_probes(model, x, y, shots=2, representations=["cls"])
