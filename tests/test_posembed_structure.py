"""The position-embedding readings on hand-built tables: a border ring with a distance fall-off,
pure row/column structure, and noise; each reading says what its table holds."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vitlens.analyses.embeddings import position_structure as ps
from vitlens.analyses.embeddings.position import PositionEmbeddingSimilarity
from vitlens.report import sections as sec

G = 8


def _rbf(grid: int = G, sigma: float = 1.5) -> np.ndarray:
    """``[grid, grid, grid * grid]``: one Gaussian bump per centre; cosine falls with distance."""
    r, c = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    pos = np.stack([r.ravel(), c.ravel()], 1).astype(float)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma ** 2)).reshape(grid, grid, grid * grid)


def ring_table() -> PositionEmbeddingSimilarity:
    """Edge patches share one direction, interior ones the opposite, plus a smooth fall-off."""
    e = _rbf()
    ring = ps.border_ring((G, G)).reshape(G, G)
    v = np.where(ring[..., None], 1.0, -0.3) * np.ones((G, G, 1))
    return PositionEmbeddingSimilarity.from_embeddings(np.concatenate([e, 3.0 * v], -1), model="ring")


def line_table() -> PositionEmbeddingSimilarity:
    """One-hot row plus one-hot column: alike exactly when a row or a column is shared."""
    r, c = np.meshgrid(np.arange(G), np.arange(G), indexing="ij")
    e = np.concatenate([np.eye(G)[r], np.eye(G)[c]], -1)
    return PositionEmbeddingSimilarity.from_embeddings(e, model="lines")


def noise_table() -> PositionEmbeddingSimilarity:
    e = np.random.default_rng(0).standard_normal((G, G, 4096))
    return PositionEmbeddingSimilarity.from_embeddings(e, model="noise")


def test_ring_with_fall_off():
    res = ring_table()
    s = res.summary()
    assert s["border_contrast"] > sec.BORDER_CONTRAST
    assert s["border_border_mean"] > 0 > s["border_interior_mean"]
    assert s["distance_correlation_interior"] < -0.5
    assert abs(s["distance_correlation_all"]) < abs(s["distance_correlation_interior"]) / 2
    text = sec.posembed_reading(s)
    assert "a border ring" in text
    assert f"among interior patches it falls with distance (r = {s['distance_correlation_interior']:+.2f})" in text
    assert "mixes the ring" in text


def test_pure_rows_and_columns():
    s = line_table().summary()
    assert s["row_column_score"] == pytest.approx(0.5)
    assert abs(s["border_contrast"]) < sec.BORDER_CONTRAST
    text = sec.posembed_reading(s)
    assert "0.50 above that of other patches" in text
    assert "not set apart" in text and "a border ring" not in text and "mixes" not in text


def test_noise_has_no_structure():
    s = noise_table().summary()
    for k in ("distance_correlation_all", "distance_correlation_interior", "border_contrast", "row_column_score"):
        assert abs(s[k]) < 0.05, k
    text = sec.posembed_reading(s)
    assert text.count("hardly changes with distance") == 2
    assert "not set apart" in text and "hardly matters" in text


def test_readings_are_the_literal_definitions():
    res = ring_table()
    sim = res.similarity.astype(float).reshape(G * G, G * G)
    ring = ps.border_ring((G, G))
    off = ~np.eye(G * G, dtype=bool)
    bb = sim[ring[:, None] & ring[None] & off].mean()
    bi = sim[ring[:, None] & ~ring[None]].mean()
    assert res.border_contrast == pytest.approx(bb - bi, abs=1e-6)
    r, c = np.divmod(np.arange(G * G), G)
    d = np.hypot(r[:, None] - r[None], c[:, None] - c[None])
    inner = ~ring[:, None] & ~ring[None] & off
    assert res.distance_correlation_interior == pytest.approx(np.corrcoef(sim[inner], d[inner])[0, 1], abs=1e-6)
    assert res.structure["distance_correlation_all"] == pytest.approx(res.distance_correlation, abs=1e-12)
    assert res.structure["row_column_score"] == pytest.approx(res.row_column_score, abs=1e-12)


def test_small_grids_have_no_interior():
    e = np.random.default_rng(1).standard_normal((2, 3, 16))
    s = PositionEmbeddingSimilarity.from_embeddings(e).summary()
    assert s["distance_correlation_interior"] is None and s["border_contrast"] is None
    assert "no interior patches" in sec.posembed_reading(s)
    json.dumps(s)
    assert math.isnan(ps.border_contrast(np.ones((2, 2, 2, 2))))


def test_summary_file_holds_the_readings(tmp_path):
    from vitlens.jobs.posembed import run_posembed

    [res] = run_posembed([("vitlens/vit-tiny-shapes", None)], tmp_path / "p", verbose=False)
    entry = json.loads((tmp_path / "p" / "pos_embed_summary.json").read_text())["models"][0]
    for k, v in res.structure.items():
        assert entry[k] == pytest.approx(v, abs=1e-9), k
    # the shipped ViT's tiles: a border ring, and a fall-off with distance inside it
    assert entry["border_contrast"] > sec.BORDER_CONTRAST and entry["distance_correlation_interior"] < -0.3
    assert "a border ring" in sec.posembed_reading(entry)
