"""Position-embedding similarity: literal formula on every family, closed forms, figure and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import FAMILIES, SMALL, build
from timm.layers import resample_abs_pos_embed

from vitlens.analyses.embeddings.position import (
    PositionEmbeddingSimilarity,
    cosine_similarity_grid,
    patch_position_embeddings,
    position_embedding_similarity,
    row_column_excess,
    row_column_means,
    similarity_distance_correlation,
)
from vitlens.models.layout import token_layout
from vitlens.plotting.posembed import auto_tile_step, position_embedding_figure
from vitlens.runtime.errors import UnsupportedModelError

WITH_TABLE = [f for f in FAMILIES if f not in ("beit", "eva_registers")]  # relative bias; RoPE only


# --------------------------------------------------------------------------- references

def literal_similarity(model, input_size=None) -> np.ndarray:
    """sim[i, j, k, l] = <p_ij, p_kl> / (|p_ij| |p_kl|), one pair at a time, from model.pos_embed."""
    own = token_layout(model)
    prefix = 0 if getattr(model, "no_embed_class", False) else own.num_prefix_tokens
    table = model.pos_embed.detach()
    grid = own.grid_size
    if input_size is not None:
        grid = token_layout(model, input_size).grid_size
        table = resample_abs_pos_embed(table, new_size=list(grid), old_size=list(own.grid_size),
                                       num_prefix_tokens=prefix)
    patches = table[0, prefix:].double()
    gh, gw = grid
    assert patches.shape[0] == gh * gw
    out = np.zeros((gh, gw, gh, gw))
    for q in range(gh * gw):
        for k in range(gh * gw):
            out[q // gw, q % gw, k // gw, k % gw] = float(F.cosine_similarity(patches[q], patches[k], dim=0))
    return out


def sinusoid_table(gh: int, gw: int, freqs) -> np.ndarray:
    """Separable 2D sinusoids: [cos(w i), sin(w i)] per frequency, then the same for j."""
    i, j = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    parts = [f(w * i) for w in freqs for f in (np.cos, np.sin)] + \
            [f(w * j) for w in freqs for f in (np.cos, np.sin)]
    return np.stack(parts, axis=-1)                                     # [gh, gw, 4F]


def sinusoid_similarity(gh: int, gw: int, freqs) -> np.ndarray:
    """Closed form of the table above: (sum_f cos(w (i-k)) + cos(w (j-l))) / (2F)."""
    i = np.arange(gh)[:, None, None, None]
    j = np.arange(gw)[None, :, None, None]
    k = np.arange(gh)[None, None, :, None]
    l = np.arange(gw)[None, None, None, :]
    return sum(np.cos(w * (i - k)) + np.cos(w * (j - l)) for w in freqs) / (2 * len(freqs))


def smooth_isotropic_table(g: int, dim: int = 256, length: float = 3.0, seed: int = 0) -> np.ndarray:
    """Random embeddings whose covariance depends on distance only (a squared-exponential kernel)."""
    i, j = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    p = np.stack([i.ravel(), j.ravel()], 1)
    k = np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / (2 * length ** 2)) + 1e-6 * np.eye(len(p))
    z = np.random.default_rng(seed).normal(size=(len(p), dim))
    return (np.linalg.cholesky(k) @ z).reshape(g, g, dim)


# --------------------------------------------------------------------------- every family

@pytest.mark.parametrize("family", WITH_TABLE)
def test_equals_literal_formula(family):
    model = build(family)
    res = position_embedding_similarity(model)
    expected = literal_similarity(model)
    assert res.similarity.shape == expected.shape == (*token_layout(model).grid_size,) * 2
    assert res.similarity.dtype == np.float32
    np.testing.assert_allclose(res.similarity, expected, atol=1e-6)
    assert res.grid_size == token_layout(model).grid_size


def test_non_square_grid_equals_literal_formula():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), patch_size=8,
                              **SMALL).eval()
    res = position_embedding_similarity(model)
    assert res.similarity.shape == (4, 6, 4, 6)
    np.testing.assert_allclose(res.similarity, literal_similarity(model), atol=1e-6)
    # the first patch is the first entry after the class token, not a square-root guess
    np.testing.assert_array_equal(patch_position_embeddings(model)[0, 0],
                                  model.pos_embed[0, 1].detach().double().numpy())
    # resampling a non-square table keeps its own aspect (timm would assume a square one if not told)
    torch.manual_seed(0)
    dyn = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), patch_size=8,
                            dynamic_img_size=True, **SMALL).eval()
    res = position_embedding_similarity(dyn, (40, 40))
    assert res.grid_size == (5, 5) and res.source_grid_size == (4, 6)
    np.testing.assert_allclose(res.similarity, literal_similarity(dyn, (40, 40)), atol=1e-6)


def test_dynamic_model_at_another_size_matches_its_own_forward():
    model = build("dynamic")
    h, w = FAMILIES["dynamic"][2]
    res = position_embedding_similarity(model, (h, w))
    grid = token_layout(model, (h, w)).grid_size
    assert res.grid_size == grid == (6, 5)
    assert res.resampled_from == (32, 32) and res.source_grid_size == (4, 4)
    np.testing.assert_allclose(res.similarity, literal_similarity(model, (h, w)), atol=1e-6)
    # what the model itself adds to zero patch tokens at that size
    with torch.no_grad():
        tokens = model._pos_embed(torch.zeros(1, *grid, model.embed_dim))
    added = tokens[0, model.num_prefix_tokens:].double().numpy().reshape(*grid, -1)
    np.testing.assert_allclose(patch_position_embeddings(model, (h, w)), added, atol=1e-6)


def test_resampling_matches_timm_fine_tuning_and_keeps_the_diagonal():
    small = build("vit")
    name, kwargs, _ = FAMILIES["vit"]
    big = timm.create_model(name, pretrained=False, **{**kwargs, "img_size": (48, 64)}).eval()
    filt = timm.models.vision_transformer.checkpoint_filter_fn
    big.load_state_dict(filt(small.state_dict(), big))
    res = position_embedding_similarity(small, (48, 64))
    assert res.grid_size == (6, 8) and res.input_size == (48, 64) and res.resampled_from == (32, 32)
    np.testing.assert_allclose(res.similarity, position_embedding_similarity(big).similarity, atol=1e-6)
    diag = res.similarity.reshape(48, 48).diagonal()
    np.testing.assert_allclose(diag, 1.0, atol=1e-6)
    assert any("resampled" in n for n in res.notes)
    # the model's own size is not a resampling
    assert position_embedding_similarity(small, 32).resampled_from is None


def test_beit_relative_bias_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="relative position bias"):
        position_embedding_similarity(build("beit"))


def test_missing_tables_are_unsupported():
    torch.manual_seed(0)
    none = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             pos_embed="none", **SMALL)
    with pytest.raises(UnsupportedModelError, match="no learned absolute"):
        position_embedding_similarity(none)
    rope_only = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=56,
                                  use_abs_pos_emb=False, **SMALL)
    with pytest.raises(UnsupportedModelError, match="rotary"):
        position_embedding_similarity(rope_only)


def test_eva_rotary_part_is_noted():
    res = position_embedding_similarity(build("eva02"))
    assert any("rotary" in n and "not shown" in n for n in res.notes)
    assert any("rotary" in n for n in res.summary()["notes"])
    assert not position_embedding_similarity(build("vit")).notes


# --------------------------------------------------------------------------- prefix tokens

@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2_registers", "gap_no_cls", "eva02"])
def test_prefix_entries_are_excluded(family):
    model = build(family)
    layout = token_layout(model)
    gh, gw = layout.grid_size
    freqs = [0.4, 0.9, 1.7, 2.3, 0.2, 1.1, 0.6, 1.4]                  # 4 * 8 = 32 = embed_dim
    table = torch.from_numpy(sinusoid_table(gh, gw, freqs)).float().reshape(1, gh * gw, -1)
    entries = model.pos_embed.shape[1] - gh * gw
    expected_entries = 0 if family in ("dinov2_registers", "gap_no_cls") else layout.num_prefix_tokens
    assert entries == expected_entries
    with torch.no_grad():   # prefix entries: a huge vector that would dominate any patch it leaked into
        model.pos_embed.copy_(torch.cat([torch.full((1, entries, 32), 50.0), table], dim=1))
    res = position_embedding_similarity(model)
    np.testing.assert_allclose(res.similarity, sinusoid_similarity(gh, gw, freqs), atol=1e-6)
    assert res.prefix_entries_in_table == entries
    assert res.num_prefix_tokens == layout.num_prefix_tokens


# --------------------------------------------------------------------------- closed forms

def test_separable_sinusoids_give_the_closed_form():
    freqs = [0.3, 0.7, 1.3]
    sim = cosine_similarity_grid(sinusoid_table(5, 7, freqs))
    np.testing.assert_allclose(sim, sinusoid_similarity(5, 7, freqs), atol=1e-12)
    # one frequency of period 4 along rows only: rows two apart are opposite
    one = cosine_similarity_grid(sinusoid_table(4, 1, [math.pi / 2])[..., :2])
    assert one[0, 0, 2, 0] == pytest.approx(-1.0) and one[0, 0, 1, 0] == pytest.approx(0.0, abs=1e-12)


def test_random_tables_are_uncorrelated_off_the_diagonal():
    table = np.random.default_rng(0).normal(size=(14, 14, 512))
    res = PositionEmbeddingSimilarity.from_embeddings(table)
    flat = res.similarity.reshape(196, 196)
    np.testing.assert_allclose(flat.diagonal(), 1.0, atol=1e-6)
    assert abs(res.summary()["off_diagonal_mean"]) < 0.005
    assert np.abs(flat[~np.eye(196, dtype=bool)]).max() < 0.3
    assert abs(res.summary()["distance_correlation"]) < 0.05
    assert abs(res.summary()["row_column_score"]) < 0.01


def test_summary_numbers_match_pair_by_pair_definitions():
    freqs = [0.5, 1.1]
    sim = sinusoid_similarity(4, 5, freqs)
    pairs = [(i, j, k, l) for i in range(4) for j in range(5) for k in range(4) for l in range(5)
             if (i, j) != (k, l)]
    s = np.array([sim[p] for p in pairs])
    d = np.array([math.hypot(i - k, j - l) for i, j, k, l in pairs])
    assert similarity_distance_correlation(sim) == pytest.approx(np.corrcoef(s, d)[0, 1], abs=1e-12)
    line = np.array([i == k or j == l for i, j, k, l in pairs])
    same, other = row_column_means(sim)
    assert same == pytest.approx(s[line].mean(), abs=1e-12)
    assert other == pytest.approx(s[~line].mean(), abs=1e-12)
    res = PositionEmbeddingSimilarity.from_embeddings(sinusoid_table(4, 5, freqs))
    summ = res.summary()
    assert summ["row_column_score"] == pytest.approx(s[line].mean() - s[~line].mean(), abs=1e-6)
    assert summ["distance_correlation"] < -0.5          # nearby patches are more alike


def test_row_column_excess_separates_structure_from_distance():
    iso = cosine_similarity_grid(smooth_isotropic_table(12))
    same, other = row_column_means(iso)
    assert same - other > 0.1                           # the plain score sees distance ...
    assert abs(row_column_excess(iso)) < 0.02           # ... the distance-matched one does not
    sep = cosine_similarity_grid(sinusoid_table(12, 12, [0.3, 0.8, 1.5]))
    assert row_column_excess(sep) > 0.1
    # hand-built 3 x 3: similarity 1 on the same row or column, 0 elsewhere -> excess is 1 - 0
    r = np.arange(3)
    line = (r[:, None, None, None] == r[None, None, :, None]) | (r[None, :, None, None] == r[None, None, None, :])
    assert row_column_excess(line.astype(float)) == pytest.approx(1.0)
    assert math.isnan(row_column_excess(np.ones((2, 2, 2, 2))))


def test_to_frame_is_tidy_and_result_is_frozen():
    res = PositionEmbeddingSimilarity.from_embeddings(sinusoid_table(3, 4, [0.5]), model="toy")
    frame = res.to_frame()
    assert list(frame.columns) == ["query_row", "query_col", "key_row", "key_col", "similarity"]
    assert len(frame) == 12 * 12
    row = frame[(frame.query_row == 2) & (frame.query_col == 1) & (frame.key_row == 0) & (frame.key_col == 3)]
    assert row.similarity.item() == pytest.approx(float(res.similarity[2, 1, 0, 3]))
    with pytest.raises(ValueError):
        res.similarity[0, 0, 0, 0] = 0.0
    json.dumps(res.summary())


# --------------------------------------------------------------------------- figure

def test_auto_tile_step():
    assert auto_tile_step((14, 14)) == 1
    assert auto_tile_step((16, 16)) == 1
    assert auto_tile_step((24, 24)) == 2
    assert auto_tile_step((37, 37)) == 3


def test_figure_draws_one_tile_per_shown_patch_and_notes():
    import matplotlib.pyplot as plt

    big = PositionEmbeddingSimilarity.from_embeddings(np.random.default_rng(0).normal(size=(37, 37, 8)),
                                                      model="big")
    eva = position_embedding_similarity(build("eva02"))
    fig = position_embedding_figure([big, eva])
    axes = fig.axes
    try:
        labels = [t.get_text() for t in axes[0].get_xticklabels()]
        assert labels[0] == "1" and labels[-1] == "37" and len(labels) == 13   # every 3rd of 37
        img = axes[1].images[0].get_array()
        assert img.shape == (4 * 4 + 3, 4 * 4 + 3)                              # 4 x 4 tiles, gap 1
        np.testing.assert_allclose(img[5:9, 0:4], eva.similarity[1, 0], atol=1e-6)
        assert axes[0].get_xlabel() == "Input patch column" and axes[0].get_ylabel() == "Input patch row"
        assert any("RoPE" in t.get_text() for t in axes[1].texts)
        assert axes[0].images[0].get_clim() == axes[1].images[0].get_clim() == (-1.0, 1.0)
        assert len(fig.axes) == 3                                               # two panels + colour bar
    finally:
        plt.close(fig)
    ax = big.plot(tile_step=2)
    assert len(ax.get_xticklabels()) == 19
    plt.close(ax.figure)


# --------------------------------------------------------------------------- command line

def _check_png(path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert 400 < w < 6000 and 300 < h < 4000


@pytest.fixture
def cli_main(monkeypatch):
    import vitlens.jobs as jobs
    from vitlens.cli import main
    from vitlens.jobs import posembed as job

    if job.register not in jobs.SUBCOMMANDS:
        monkeypatch.setattr(jobs, "SUBCOMMANDS", [*jobs.SUBCOMMANDS, job.register])
    return main


def test_cli_writes_every_file(cli_main, tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    ckpt = tmp_path / "w.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    assert cli_main(["posembed", "--model", "vit_tiny_patch16_224", "--checkpoint", str(ckpt),
                     "--out", str(out)]) == 0
    # one model's array is named as each of several models' arrays is: by the model (and checkpoint)
    assert not (out / "pos_embed_similarity.npy").exists()
    sim = np.load(out / "pos_embed_similarity_vit_tiny_patch16_224_w.npy")
    assert sim.dtype == np.float32 and sim.shape == (14, 14, 14, 14)
    np.testing.assert_allclose(sim, literal_similarity(model), atol=1e-6)
    _check_png(out / "pos_embed_similarity.png")
    assert (out / "pos_embed_similarity.svg").read_text().lstrip().startswith("<?xml")
    summary = json.loads((out / "pos_embed_summary.json").read_text())
    entry = summary["models"][0]
    assert entry["file"] == "pos_embed_similarity_vit_tiny_patch16_224_w.npy" and entry["grid_size"] == [14, 14]
    assert entry["distance_correlation"] == pytest.approx(similarity_distance_correlation(sim), abs=1e-9)
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "posembed" and run["models"][0]["architecture"] == "vit_tiny_patch16_224"
    printed = capsys.readouterr().out
    assert "similarity vs distance r =" in printed
    # a second run refuses to overwrite
    assert cli_main(["posembed", "--model", "vit_tiny_patch16_224", "--random-init", "--out", str(out)]) == 2


def _tiny_loader(specs, **kwargs):
    """Stand-in for load_models: the conftest family whose timm name is given, with random weights."""
    by_name = {FAMILIES[f][0]: f for f in FAMILIES if f != "dynamic"}
    models = []
    for name, _ in specs:
        m = build(by_name[name])
        m.vitlens_source = {"name": name, "architecture": name, "tag": None, "weights": "random"}
        models.append(m)
    return models


def test_cli_several_models_and_notes(cli_main, tmp_path, capsys, monkeypatch):
    from vitlens.jobs import posembed as job

    monkeypatch.setattr(job, "load_models", _tiny_loader)      # tiny versions of the same families
    out = tmp_path / "out"
    assert cli_main(["posembed", "--model", "eva02_tiny_patch14_224", "--model", "vit_tiny_patch16_224",
                     "--random-init", "--input-size", "84", "--tile-step", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["pos_embed_similarity.png", "pos_embed_similarity.svg",
                     "pos_embed_similarity_eva02_tiny_patch14_224.npy",
                     "pos_embed_similarity_vit_tiny_patch16_224.npy", "pos_embed_summary.json", "run.json"]
    assert np.load(out / "pos_embed_similarity_vit_tiny_patch16_224.npy").shape == (10, 10, 10, 10)  # 84 // 8
    eva_sim = np.load(out / "pos_embed_similarity_eva02_tiny_patch14_224.npy")
    np.testing.assert_array_equal(eva_sim, position_embedding_similarity(build("eva02"), 84).similarity)
    assert eva_sim.shape == (6, 6, 6, 6)                                                            # 84 // 14
    summary = json.loads((out / "pos_embed_summary.json").read_text())
    eva, vit = summary["models"]
    assert any("rotary" in n for n in eva["notes"]) and eva["resampled_from"] == [56, 56]
    assert eva["model"] == "eva02_tiny_patch14_224 (random init)"
    assert vit["figure_tile_step"] == 2
    assert "note: rotary position embedding (RoPE) not shown" in capsys.readouterr().out
    _check_png(out / "pos_embed_similarity.png")


def test_cli_beit_exits_with_one_paragraph(cli_main, tmp_path, capsys, monkeypatch):
    from vitlens.jobs import posembed as job

    monkeypatch.setattr(job, "load_models", lambda specs, **kw: [build("beit")])   # tiny, same family
    out = tmp_path / "out"
    assert cli_main(["posembed", "--model", "beit_base_patch16_224", "--random-init", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlens: error: position-embedding similarity does not apply")
    assert "Traceback" not in err and "relative position bias" in err
    assert not list(out.glob("*.npy"))


def test_similarity_file_names():
    from vitlens.jobs.posembed import similarity_file_names

    assert similarity_file_names([("vit_tiny_patch16_224.augreg_in21k", None)]) == [
        "pos_embed_similarity_vit_tiny_patch16_224.augreg_in21k.npy"]  # one model: named as with several
    assert similarity_file_names([("a", None), ("a", None), ("vitlens/b c", None), ("a", "/x/w.pth")]) == [
        "pos_embed_similarity_a.npy", "pos_embed_similarity_a_2.npy",
        "pos_embed_similarity_vitlens_b_c.npy", "pos_embed_similarity_a_w.npy"]
