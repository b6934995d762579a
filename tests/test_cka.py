"""Minibatch linear CKA: the estimator's invariances, a literal reference, minibatches, processes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from cli_runs import run, torchrun
from conftest import build
from PIL import Image
from reference import hsic0_literal, hsic1_literal, linear_gram_literal, minibatch_cka_literal

from vitlens import CKAResult, layer_cka
from vitlens.analyses.representations.cka import CKAAccumulator, gram, hsic1
from vitlens.jobs.cka import batch_shard

pytestmark = pytest.mark.usefixtures("one_thread")

VIT, CNN = "vitlens/vit-tiny-shapes", "vitlens/resnet-tiny-shapes"


def _cka(xa, xb) -> float:
    """CKA of one minibatch of features ``[n, features]``."""
    acc = CKAAccumulator(["a"], ["b"])
    acc.update([torch.as_tensor(xa)], [torch.as_tensor(xb)])
    return float(acc.cka()[0, 0])


def _x(n=40, f=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, f))


def test_hsic1_matches_the_literal_formula():
    x, y = _x(7, 5, 1), _x(7, 3, 2)
    K, L = x @ x.T, y @ y.T
    assert hsic1(K, L) == pytest.approx(hsic1_literal(K, L), rel=1e-12)
    assert hsic1(torch.as_tensor(K), torch.as_tensor(L)) == pytest.approx(hsic1_literal(K, L), rel=1e-12)
    np.testing.assert_allclose(gram(torch.as_tensor(x)).numpy(), linear_gram_literal(x), rtol=1e-12)
    with pytest.raises(ValueError, match="n >= 4"):
        hsic1(K[:3, :3], L[:3, :3])


def test_cka_of_a_representation_with_itself_is_one():
    x = _x()
    assert _cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_maps_and_isotropic_scaling():
    x, z = _x(seed=0), _x(f=4, seed=1)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((6, 6)))
    y = 3.7 * x @ q
    assert _cka(x, y) == pytest.approx(1.0, abs=1e-12)
    assert _cka(y, z) == pytest.approx(_cka(x, z), rel=1e-10)


def test_not_invariant_to_an_arbitrary_invertible_map():
    x = _x()
    a = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, 30.0]) @ np.triu(np.ones((6, 6)))   # invertible, far from orthogonal
    assert abs(np.linalg.det(a)) > 1e-6
    assert _cka(x, x @ a) < 0.9


def test_independent_features_give_about_zero_where_the_biased_estimator_is_positive():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((6, 10)) for _ in range(40)]
    ys = [rng.standard_normal((6, 10)) for _ in range(40)]
    acc = CKAAccumulator(["a"], ["b"])
    for x, y in zip(xs, ys):
        acc.update([torch.as_tensor(x)], [torch.as_tensor(y)])
    unbiased = float(acc.cka()[0, 0])
    biased = minibatch_cka_literal(xs, ys, hsic=hsic0_literal)
    assert abs(unbiased) < 0.06
    assert biased > 0.3
    assert unbiased == pytest.approx(minibatch_cka_literal(xs, ys), rel=1e-9, abs=1e-12)


def _block_outputs(model, x, names):
    """Block outputs ``[batch, token, channel]`` through plain forward hooks (not vitlens's capture)."""
    outs, mods = {}, dict(model.named_modules())
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach())) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    return outs


@pytest.mark.parametrize("representation", ["tokens", "cls", "mean"])
def test_layer_cka_equals_a_literal_loop_on_the_same_minibatches(representation):
    vit = build("vit")
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    res = layer_cka(vit, x, cnn, batch_size=4, representation=representation)
    assert isinstance(res, CKAResult)
    assert res.layers_a == ("blocks.0", "blocks.1")
    assert res.layers_b == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert (res.n_images, res.n_batches, res.n_batches_dropped, res.n_images_dropped) == (8, 2, 1, 2)
    batches = [x[0:4], x[4:8]]
    fa = {l: [] for l in res.layers_a}
    fb = {l: [] for l in res.layers_b}
    for xb in batches:
        for l, o in _block_outputs(vit, xb, res.layers_a).items():
            o = {"tokens": o, "cls": o[:, 0], "mean": o[:, 1:].mean(1)}[representation]
            fa[l].append(o.reshape(len(xb), -1).double().numpy())
        for l, o in _block_outputs(cnn, xb, res.layers_b).items():
            fb[l].append(o.reshape(len(xb), -1).double().numpy())
    for i, la in enumerate(res.layers_a):
        for j, lb in enumerate(res.layers_b[::2]):
            expected = minibatch_cka_literal(fa[la], fb[lb])
            assert res.cka[i, 2 * j] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(res.depth_fraction_b, [0, 0.25, 0.5, 0.75, 1.0])


def test_one_model_with_itself_has_a_unit_diagonal_and_is_symmetric():
    vit = build("vit")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = layer_cka(vit, x, batch_size=4)
    np.testing.assert_allclose(np.diag(res.cka), 1.0, atol=1e-10)
    np.testing.assert_allclose(res.cka, res.cka.T, atol=1e-12)
    assert not res.cka.flags.writeable
    frame = res.to_frame()
    assert list(frame.columns) == ["model_a", "layer_a", "depth_a", "model_b", "layer_b", "depth_b", "cka",
                                   "n_images", "batch_size"]
    assert len(frame) == 4


def test_model_mode_is_switched_inside_the_call_and_restored():
    vit = build("vit")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref = layer_cka(vit, x, batch_size=4)
    vit.train()
    vit.blocks[0].eval()
    res = layer_cka(vit, x, batch_size=4)
    assert vit.training and not vit.blocks[0].training and vit.blocks[1].training
    np.testing.assert_allclose(res.cka, ref.cka, rtol=1e-12)
    assert res.conventions["was_training"] == [True]


def test_short_batches_are_dropped_and_counted():
    acc = CKAAccumulator(["a"])
    assert not acc.update([torch.randn(3, 5)])
    assert acc.update([torch.randn(4, 5)])
    assert (int(acc.n_batches[0]), int(acc.n_batches_dropped[0]), int(acc.n_images_dropped[0])) == (1, 1, 3)
    with pytest.raises(ValueError, match="at least 4"):
        layer_cka(build("vit"), torch.randn(8, 3, 32, 32), batch_size=3)


class _Missing:
    """An ImageSet-like source that cannot read some files (their indices are never yielded)."""

    def __init__(self, x, missing=()):
        self.x, self.missing = x, set(missing)

    def __len__(self):
        return len(self.x)

    def batches(self, batch_size, num_workers=0, indices=None):
        idx = list(range(len(self.x))) if indices is None else list(indices)
        for i in range(0, len(idx), batch_size):
            keep = [j for j in idx[i:i + batch_size] if j not in self.missing]
            if keep:
                yield self.x[keep], keep


def test_an_image_missing_for_one_model_is_left_out_for_both():
    vit, other = build("vit"), build("vit", seed=1)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    res = layer_cka(vit, _Missing(x), other, images_b=_Missing(x, missing=[5]), batch_size=4)
    ref = layer_cka(vit, x[[0, 1, 2, 3, 8, 9, 10, 11]], other, batch_size=4)
    assert (res.n_images, res.n_batches_dropped, res.n_images_dropped) == (8, 1, 3)
    np.testing.assert_allclose(res.cka, ref.cka, rtol=1e-10)
    allgone = layer_cka(vit, _Missing(x), other, images_b=_Missing(x, missing=range(4, 8)), batch_size=4)
    assert (allgone.n_batches, allgone.n_batches_dropped) == (2, 0)


def test_batch_shard_deals_out_whole_minibatches():
    assert batch_shard(range(10), 3, 0, 2) == [0, 1, 2, 6, 7, 8]
    assert batch_shard(range(10), 3, 1, 2) == [3, 4, 5, 9]
    assert sorted(batch_shard(range(10), 3, 0, 2) + batch_shard(range(10), 3, 1, 2)) == list(range(10))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("cka_imgs")
    rng = np.random.default_rng(0)
    for i in range(13):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (d / "bad.png").write_text("not a png")
    return d


def _args(images, out, *extra):
    return ["cka", "--model", VIT, "--model", CNN, "--images", str(images), "--out", str(out),
            "--batch-size", "4", *extra]


def test_command_writes_the_files(tmp_path, images):
    out = tmp_path / "one"
    assert run(_args(images, out, "--representation", "cls")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cka.csv", "cka.npy", "cka.png", "cka.svg", "run.json"]
    m = np.load(out / "cka.npy")
    assert m.shape == (6, 5)
    frame = pd.read_csv(out / "cka.csv")
    assert list(frame.columns) == ["model_a", "layer_a", "depth_a", "model_b", "layer_b", "depth_b", "cka",
                                   "n_images", "batch_size"]
    assert len(frame) == 30 and (frame["n_images"] == 12).all() and (frame["batch_size"] == 4).all()
    np.testing.assert_allclose(frame["cka"].to_numpy().reshape(6, 5), m, rtol=1e-5)
    rec = json.loads((out / "run.json").read_text())
    assert rec["representation"] == "cls" and rec["batch_size"] == 4
    assert (rec["n_batches"], rec["n_batches_dropped"], rec["n_images_dropped"]) == (3, 1, 1)
    assert [len(i["skipped"]) for i in rec["images"]] == [1, 1]


def test_two_processes_give_the_one_process_result(tmp_path, images):
    torchrun(_args(images, tmp_path / "two"))
    assert run(_args(images, tmp_path / "one")) == 0
    one, two = np.load(tmp_path / "one" / "cka.npy"), np.load(tmp_path / "two" / "cka.npy")
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-8)
    r1, r2 = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert r2["processes"] == 2
    for k in ("n_images", "n_batches", "n_batches_dropped", "n_images_dropped"):
        assert r2[k] == r1[k]
    assert [len(i["skipped"]) for i in r2["images"]] == [1, 1]


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, images, monkeypatch):
    import vitlens.jobs.cka as job
    from vitlens.runtime.resume import StopRequest

    class StopAfterTwo(StopRequest):
        checks = 0

        @property
        def requested(self):
            StopAfterTwo.checks += 1
            return StopAfterTwo.checks > 2

        @requested.setter
        def requested(self, value):
            pass

    assert run(_args(images, tmp_path / "full")) == 0
    monkeypatch.setattr(job, "StopRequest", StopAfterTwo)
    assert run(_args(images, tmp_path / "cut")) == 130
    assert not (tmp_path / "cut" / "cka.npy").exists()
    monkeypatch.setattr(job, "StopRequest", StopRequest)
    assert run(_args(images, tmp_path / "cut", "--resume")) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cut" / "cka.npy"), np.load(tmp_path / "full" / "cka.npy"),
                               rtol=1e-10)
    rec = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert (rec["n_images"], rec["n_batches_dropped"]) == (12, 1)
