"""Receptive field and rollout under torchrun write the one-process files; an interrupted
receptive-field run resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from cli_runs import run, torchrun
from PIL import Image

import vitlens.jobs.erf as erf_job
from vitlens.data.shapes import save_images
from vitlens.runtime.resume import partial_path

N_GOOD = 7  # readable images; one more file is broken


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    save_images(root, N_GOOD, image_size=48)
    (root / "images" / "zz_broken.png").write_text("not a png")
    return root / "images"


@pytest.fixture(scope="module")
def few_images(images, tmp_path_factory):
    """The first four readable images and the broken file (rollout draws a figure per image)."""
    d = tmp_path_factory.mktemp("few")
    for p in sorted(images.iterdir())[:4] + [images / "zz_broken.png"]:
        shutil.copy(p, d / p.name)
    return d


def _erf_args(images, out, *extra):
    return ["erf", "--model", "resnet10t", "--model", "test_vit", "--random-init", "--input-size", "48",
            "--images", str(images), "--out", str(out), "--batch-size", "2", *extra]


def _rollout_args(images, out, *extra):
    batch = [] if "--batch-size" in extra else ["--batch-size", "2"]
    return ["rollout", "--model", "test_vit", "--random-init", "--input-size", "48", "--images", str(images),
            "--out", str(out), "--method", "grad-rollout", "--deletion-steps", "3", "--sheet-max", "3",
            *batch, *extra]



@pytest.fixture(scope="module")
def erf_one(images, tmp_path_factory):
    """The uninterrupted one-process receptive-field run."""
    out = tmp_path_factory.mktemp("erf") / "one"
    assert run(_erf_args(images, out)) == 0
    return out


def _same_frames(a: pd.DataFrame, b: pd.DataFrame, rtol=1e-6, atol=1e-9):
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    num = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
    np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=rtol, atol=atol)


def test_erf_two_processes_write_the_one_process_files(tmp_path, images, erf_one):
    two = tmp_path / "two"
    torchrun(_erf_args(images, two))
    a, b = pd.read_csv(erf_one / "receptive_field.csv"), pd.read_csv(two / "receptive_field.csv")
    _same_frames(a, b)
    assert (b["n_images"] == N_GOOD).all()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in erf_one.iterdir())
    rec = json.loads((two / "run.json").read_text())
    assert rec["processes"] == 2 and len(rec["models"]) == 2
    for m in rec["models"]:
        assert m["n_images"] == N_GOOD and m["images"]["n_images"] == N_GOOD
        assert [s["path"].endswith("zz_broken.png") for s in m["images"]["skipped"]] == [True]


def test_rollout_two_processes_write_the_one_process_files(tmp_path, few_images):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(_rollout_args(few_images, one, "--batch-size", "3")) == 0
    torchrun(_rollout_args(few_images, two, "--batch-size", "1"))
    za, zb = np.load(one / "rollout.npz"), np.load(two / "rollout.npz")
    assert za.files == zb.files and len(za.files) == 4
    for k in za.files:
        np.testing.assert_allclose(zb[k], za[k], rtol=1e-5, atol=1e-7)
    a, b = pd.read_csv(one / "deletion.csv"), pd.read_csv(two / "deletion.csv")
    assert list(b["image"]) == list(a["image"]) and len(b) == 2 * 4 * 4  # per-image rows, same order
    assert list(b["order"]) == ["rollout"] * 16 + ["random"] * 16  # the maps, then the random-order baseline
    _same_frames(a, b, rtol=1e-5, atol=1e-9)
    ra, rb = (json.loads((d / "run.json").read_text())["models"][0] for d in (one, two))
    for key in ("images", "predicted", "target", "contact_sheet_images", "grid_size", "conventions"):
        assert rb[key] == ra[key], key
    assert rb["images"]["n_images"] == 4 and len(rb["images"]["skipped"]) == 1
    assert list(rb["deletion"]["auc"]) == list(ra["deletion"]["auc"])
    np.testing.assert_allclose(list(rb["deletion"]["auc"].values()), list(ra["deletion"]["auc"].values()),
                               rtol=1e-6)
    # each image's random order is its own, whatever batch or process it came in
    assert rb["deletion"]["random_order_mean_auc"] == pytest.approx(ra["deletion"]["random_order_mean_auc"], rel=1e-6)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (two / "overlays").iterdir()) == sorted(p.name for p in (one / "overlays").iterdir())
    with Image.open(one / "contact_sheet.png") as ia, Image.open(two / "contact_sheet.png") as ib:
        pa, pb = np.asarray(ia, dtype=float), np.asarray(ib, dtype=float)
    assert pa.shape == pb.shape and np.abs(pa - pb).mean() < 0.5  # the same first images, in order


def _sigterm_after(n_batches: int):
    """A stand-in for ``stream_receptive_field`` that sends this process SIGTERM after ``n_batches``."""
    real = erf_job.stream_receptive_field
    seen = [0]

    def stream(*args, **kwargs):
        for idx in real(*args, **kwargs):
            seen[0] += 1
            if seen[0] == n_batches:
                os.kill(os.getpid(), signal.SIGTERM)
            yield idx
    return stream


@pytest.mark.parametrize("after", [2, 5])  # inside the first model; inside the second
def test_erf_sigterm_then_resume_gives_the_uninterrupted_result(tmp_path, images, erf_one, monkeypatch, capsys,
                                                                after):
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(erf_job, "stream_receptive_field", _sigterm_after(after))
        assert run(_erf_args(images, out)) == 130
    assert "--resume" in capsys.readouterr().err
    assert partial_path(out, "erf").exists() and not (out / "receptive_field.csv").exists()
    assert run(_erf_args(images, out, "--resume", "--objective", "relu_sum")) == 2  # another command
    assert "another command" in capsys.readouterr().err
    assert run(_erf_args(images, out, "--resume")) == 0
    _same_frames(pd.read_csv(erf_one / "receptive_field.csv"), pd.read_csv(out / "receptive_field.csv"))
    assert not partial_path(out, "erf").exists()
    rec = json.loads((out / "run.json").read_text())
    assert [m["images"]["n_images"] for m in rec["models"]] == [N_GOOD, N_GOOD]
    assert all(len(m["images"]["skipped"]) == 1 for m in rec["models"])


def test_erf_resume_without_saved_state(tmp_path, images, capsys):
    assert run(_erf_args(images, tmp_path / "none", "--resume")) == 2
    assert "no saved partial state" in capsys.readouterr().err
