"""ViT versus CNN locality: the tidy table, the figure, and ``vitlens compare`` against the analyses run
directly on the same images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import batch, build

from vitlens.analyses.attention.streaming import attention_distance
from vitlens.analyses.fields.effective import effective_receptive_field
from vitlens.analyses.locality import COLUMNS, METRICS, locality
from vitlens.cli import main
from vitlens.data.images import ImageSet
from vitlens.data.shapes import save_images
from vitlens.models.loading import load_model

VIT, VIT10, CNN = "vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct", "vitlens/resnet-tiny-shapes"


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    save_images(root, 6, seed=7)
    return root / "images"


def test_locality_table_holds_every_value_once():
    import timm
    import torch

    vit = build("vit")
    torch.manual_seed(0)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    x = batch("vit", n=3)
    d = attention_distance(vit, x, name="vit")
    fv = effective_receptive_field(vit, x, progress=False, name="vit")
    fc = effective_receptive_field(cnn, torch.randn(2, 3, 32, 32), progress=False, name="cnn")
    res = locality([d], [fv, fc])
    df = res.to_frame()
    assert list(df.columns) == COLUMNS
    assert set(df.metric) <= set(METRICS)
    L, H = d.distance.shape
    heads = df[df.metric == "attention_distance"]
    assert len(heads) == L * H
    np.testing.assert_allclose(heads.value_px.to_numpy(), d.distance.ravel(), rtol=1e-12)
    np.testing.assert_allclose(heads.depth_fraction.to_numpy(), np.repeat(np.arange(L) / (L - 1), H))
    means = df[df.metric == "attention_distance_mean"]
    np.testing.assert_allclose(means.value_px.to_numpy(), d.distance.mean(1), rtol=1e-12)
    for f in (fv, fc):
        rows = df[(df.model == f.model) & (df.metric == "erf_spread")]
        np.testing.assert_allclose(rows.value_px.to_numpy(), f.spread_px)
        np.testing.assert_allclose(rows.depth_fraction.to_numpy(), f.depth_fraction)
        assert rows.depth_fraction.iloc[0] == 0 and rows.depth_fraction.iloc[-1] == 1
        assert len(df[(df.model == f.model) & df.metric.str.startswith("erf")]) == 3 * f.num_layers
    assert set(df[df.model == "cnn"].kind) == {"cnn"} and set(df[df.model == "vit"].kind) == {"vit"}
    # the ViT's block i holds attention layer i: both sit at the same relative depth
    np.testing.assert_allclose(fv.depth_fraction, np.arange(L) / (L - 1))
    ax = res.plot()
    assert len(ax.get_lines()) >= 3


def test_locality_refuses_other_units_and_nothing():
    d = attention_distance(build("vit"), batch("vit"), units="patches")
    with pytest.raises(ValueError, match="pixels"):
        locality([d])
    with pytest.raises(ValueError):
        locality()


def test_compare_command_matches_direct_analyses(shapes_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--vit", VIT, "--vit", VIT10, "--cnn", CNN, "--images", str(shapes_dir),
               "--out", str(out), "--batch-size", "4"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert str(out / "locality.csv") in last
    for f in ("locality.csv", "locality.png", "locality.svg", "run.json"):
        assert (out / f).stat().st_size > 0
    df = pd.read_csv(out / "locality.csv")
    assert {"model", "kind", "metric", "layer", "depth_fraction", "value_px"} <= set(df.columns)
    assert list(dict.fromkeys(df.model)) == [VIT, VIT10, CNN]
    assert set(df[df.model == CNN].kind) == {"cnn"}
    assert set(df[df.model == CNN].metric) == {"erf_spread", "erf_r50", "erf_r90"}
    assert (df.depth_fraction.between(0, 1)).all()

    # the same numbers as the analyses run directly, each model with its own preprocessing
    vit = load_model(VIT)
    d = attention_distance(vit, ImageSet.for_model(vit, [shapes_dir]), batch_size=4)
    got = df[(df.model == VIT) & (df.metric == "attention_distance")].value_px.to_numpy()
    np.testing.assert_allclose(got, d.distance.ravel(), rtol=1e-5)
    cnn = load_model(CNN)
    f = effective_receptive_field(cnn, ImageSet.for_model(cnn, [shapes_dir]), batch_size=4, progress=False)
    got = df[(df.model == CNN) & (df.metric == "erf_spread")].value_px.to_numpy()
    np.testing.assert_allclose(got, f.spread_px, rtol=1e-5)
    # a CNN's receptive field grows with depth
    assert f.spread_px[-1] > 2 * f.spread_px[0]

    rec = json.loads((out / "run.json").read_text())
    assert [m["kind"] for m in rec["models"]] == ["vit", "vit", "cnn"]
    assert all(m["images"]["n_images"] == 6 for m in rec["models"])
    assert rec["summary"][CNN]["erf_last_px"] == pytest.approx(f.spread_px[-1], rel=1e-5)
    # each model's parameters and FLOPs at the size compared
    for m, model in zip(rec["models"], (vit, load_model(VIT10), cnn)):
        cost = m["cost"]
        assert cost["input_px"] == 64
        assert cost["parameters"]["total"] == sum(p.numel() for p in model.parameters())
        assert sum(v for k, v in cost["parameters"].items() if k != "total") == cost["parameters"]["total"]
        assert cost["flops"]["total"] > 0
    assert rec["models"][0]["cost"]["flops"]["attention"] > 0 and rec["models"][2]["cost"]["flops"]["attention"] == 0


@pytest.mark.parametrize("argv, needle", [
    (["--vit", CNN], "--cnn"),
    (["--cnn", VIT], "--vit"),
    (["--vit", VIT, "--vit-checkpoint", "a.pth", "--vit-checkpoint", "b.pth"], "checkpoint"),
    ([], "nothing to compare"),
])
def test_compare_errors_before_reading_images(argv, needle, shapes_dir, tmp_path, capsys):
    rc = main(["compare", *argv, "--images", str(shapes_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "o" / "locality.csv").exists()
