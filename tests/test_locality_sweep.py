"""The locality sweep's per-run function on a tiny configuration, and the files it writes."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "analyses" / "locality_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("locality_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny(sweep):
    cfg = sweep.RunConfig(grid=4, distinct_images=12, steps=4, batch_size=8, image_size=32, embed_dim=16,
                          depth=2, num_heads=2, eval_images=16, distance_images=8, evals=2)
    threads = torch.get_num_threads()
    try:
        rows, record = sweep.run_one(cfg, threads=1, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return cfg, rows, record


def test_run_one_rows(tiny):
    cfg, rows, record = tiny
    frame = pd.DataFrame(rows)
    assert len(frame) == cfg.depth * cfg.num_heads
    assert sorted(zip(frame["layer"], frame["head"])) == [(l, h) for l in range(cfg.depth) for h in range(cfg.num_heads)]
    for col in ("run", "grid", "patch_size", "distinct_images", "steps", "batch_size", "seed", "data_seed",
                "accuracy", "distance_px", "local", "local_heads_layer", "local_heads_lower", "local_heads_upper",
                "mean_distance_lower_px", "pe_distance_correlation_interior", "pe_border_contrast", "seconds"):
        assert col in frame.columns, col
    assert (frame.run == cfg.name).all() and (frame.patch_size == 8).all()
    assert 0.0 <= frame.accuracy.iloc[0] <= 1.0
    assert np.isfinite(frame.distance_px).all() and (frame.distance_px > 0).all()
    assert (frame.distance_px <= frame.uniform_px * 1.5).all()
    # local flags agree with the threshold, and the per-layer and lower/upper counts with the flags
    assert (frame.local == (frame.distance_px < frame.local_threshold_px)).all()
    per_layer = frame.groupby("layer").local.sum()
    assert (frame.local_heads_layer == frame.layer.map(per_layer)).all()
    assert frame.lower_layer.tolist() == [l < cfg.depth // 2 for l in frame.layer]
    assert frame.local_heads_lower.iloc[0] == frame[frame.lower_layer].local.sum()
    assert frame.local_heads_upper.iloc[0] == frame[~frame.lower_layer].local.sum()
    assert math.isclose(frame.mean_distance_lower_px.iloc[0], frame[frame.lower_layer].distance_px.mean())
    assert -1.0 <= frame.pe_distance_correlation_interior.iloc[0] <= 1.0
    # 4 x 8 = 32 samples over 12 images: each generated once, then read from memory
    assert frame.samples.iloc[0] == 32 and frame.images_generated.iloc[0] == 12
    assert record["config"]["seed"] == 0 and len(record["history"]) == 2
    assert record["local_head_counts"] == per_layer.tolist()


def test_sample_order_is_one_permutation_per_pass(sweep):
    order = sweep.sample_order(5, torch.Generator().manual_seed(0))
    draws = [int(next(order)) for _ in range(15)]
    for k in range(3):
        assert sorted(draws[5 * k:5 * k + 5]) == [0, 1, 2, 3, 4]


def test_run_order_starts_with_the_ends(sweep):
    assert sweep.interleave([8, 16], [10, 1000, 100])[:4] == [(8, 1000), (16, 1000), (8, 10), (16, 10)]


def test_write_results(sweep, tiny, tmp_path):
    cfg, rows, record = tiny
    sweep.write_results(tmp_path, rows, {"runs": {cfg.name: record}})
    frame = pd.read_csv(tmp_path / "locality_sweep.csv")
    assert len(frame) == len(rows)
    assert json.loads((tmp_path / "locality_sweep.json").read_text())["runs"][cfg.name]["run"] == cfg.name
    png = (tmp_path / "locality_sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
