"""RGB embedding filters: PCA against a plain SVD, shapes, refusals, the linear projection, the command."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from cli_runs import run
from conftest import build

from vitlens import EmbeddingFilters, UnsupportedModelError, embedding_filters
from vitlens.analyses.embeddings.filters import patch_filters
from vitlens.plotting.filters import filters_figure, plot_filters, plot_scree

VIT, VIT10 = "vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct"


def test_pca_equals_the_svd_of_the_centred_filter_matrix():
    model = build("vit")                                   # 32 filters of 3 x 8 x 8
    res = embedding_filters(model, n_components=10)
    w = model.patch_embed.proj.weight.detach().double().reshape(32, -1).numpy()
    centred = w - w.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = res.components.reshape(10, -1)
    signs = np.sign(np.sum(comps * vt[:10], axis=1))
    np.testing.assert_allclose(comps, signs[:, None] * vt[:10], atol=1e-8)
    np.testing.assert_allclose(res.explained_variance_ratio, (s ** 2 / np.sum(s ** 2))[:10], rtol=1e-8)
    np.testing.assert_allclose(res.mean_filter.reshape(-1), w.mean(0), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(comps, axis=1), 1.0, atol=1e-10)


def test_shapes_and_read_only_arrays():
    res = embedding_filters(build("vit"), name="tiny")
    assert isinstance(res, EmbeddingFilters) and res.model == "tiny"
    assert res.filters_shape == (32, 3, 8, 8) and res.patch_size == (8, 8)
    assert res.components.shape == (28, 3, 8, 8) and res.explained_variance_ratio.shape == (28,)
    assert np.all(np.diff(res.explained_variance_ratio) <= 1e-12) and res.explained_variance_ratio.sum() <= 1 + 1e-9
    assert not res.components.flags.writeable and not res.explained_variance_ratio.flags.writeable
    few = embedding_filters(build("vit"), n_components=50)         # more than the 32 filters
    assert few.n_components == 32 and few.n_components_requested == 50
    assert few.explained_variance_ratio.sum() == pytest.approx(1.0)
    frame = res.to_frame()
    assert list(frame["component"][:2]) == [1, 2] and len(frame) == 28


def test_hybrid_and_cnn_are_refused(tiny_cnn):
    with pytest.raises(UnsupportedModelError, match="hybrid ViT whose patch projection reads CNN features"):
        embedding_filters(build("hybrid_r50"))
    with pytest.raises(UnsupportedModelError, match="no patch embedding"):
        embedding_filters(tiny_cnn)
    assert patch_filters(tiny_cnn) is None and patch_filters(build("hybrid_r50")) is None


def test_a_linear_patch_projection_gives_the_filters_it_applies():
    torch.manual_seed(0)
    model = timm.create_model("naflexvit_base_patch16_gap", pretrained=False, embed_dim=32, depth=1,
                              num_heads=2, img_size=32)
    from timm.models.naflexvit import batch_patchify

    w = patch_filters(model)                               # [dim, 3, 16, 16]
    assert tuple(w.shape) == (32, 3, 16, 16)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    patches, _ = batch_patchify(x, (16, 16), channels_last=model.embeds.channels_last)
    linear = patches @ model.embeds.proj.weight.detach().double().T                # [batch, patch, dim]
    conv = F.conv2d(x, w, stride=16).flatten(2).transpose(1, 2)
    torch.testing.assert_close(conv, linear)
    assert embedding_filters(model).components.shape == (28, 3, 16, 16)


def test_plots_return_axes_and_a_figure():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = embedding_filters(build("vit"), name="a"), embedding_filters(build("vit", seed=1), name="b")
    ax = plot_filters(a)
    assert ax.images and ax.images[0].get_array().shape[-1] == 4
    assert plot_scree([a, b]).get_xlabel().startswith("principal component")
    fig = filters_figure([a, b])
    assert len(fig.axes) == 2 and "max |v|" in fig._suptitle.get_text()
    plt.close("all")


def test_command_writes_the_files(tmp_path):
    out = tmp_path / "out"
    assert run(["filters", "--model", VIT, "--model", VIT10, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["filters.npz", "filters.png", "filters.svg", "run.json",
                                                     "scree.png"]
    z = np.load(out / "filters.npz")
    assert list(z["model_names"]) == [VIT, VIT10]
    for i in range(2):
        assert z[f"m{i}_components"].shape == (28, 3, 8, 8)
        assert z[f"m{i}_explained_variance_ratio"].shape == (28,)
        assert list(z[f"m{i}_filters_shape"]) == [64, 3, 8, 8]
    rec = json.loads((out / "run.json").read_text())
    assert [m["filters_shape"] for m in rec["models"]] == [[64, 3, 8, 8]] * 2
    assert "max |v|" in rec["normalisation"]
    assert run(["filters", "--model", "vitlens/resnet-tiny-shapes", "--out", str(tmp_path / "cnn")]) == 2
