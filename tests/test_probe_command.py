"""Labelled images (class folders, shapes folders) and ``vitlens probe`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cli_runs import run
from PIL import Image

from vitlens import LabelError, labelled_images
from vitlens.data.labels import check_classes
from vitlens.data.shapes import CLASSES, save_images

pytestmark = pytest.mark.usefixtures("one_thread")

VIT, CNN = "vitlens/vit-tiny-shapes", "vitlens/resnet-tiny-shapes"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_shapes") / "set"
    save_images(root, 24, seed=3)                       # 3 of each of the 8 classes, with masks
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_folders")
    rng = np.random.default_rng(0)
    for c, n in (("cat", 4), ("dog", 5), ("fox", 4)):
        (root / c / "sub").mkdir(parents=True)
        for i in range(n):
            where = root / c / ("sub" if i == 0 else "")           # class folders are searched recursively
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(where / f"{i}.png")
    return root


def test_class_folders_are_read_as_torchvision_imagefolder_reads_them(folders):
    d = labelled_images(folders)
    assert d.class_names == ("cat", "dog", "fox") and d.layout == ("class folders",)
    assert d.counts() == {"cat": 4, "dog": 5, "fox": 4}
    for p, label in zip(d.paths, d.labels):
        assert p.relative_to(folders).parts[0] == d.class_names[label]
    assert not d.labels.flags.writeable


def test_shapes_folders_are_read_from_labels_csv_or_file_names(shapes):
    for root in (shapes, shapes / "images"):
        d = labelled_images(root)
        assert d.layout == ("labels.csv",) and len(d) == 24 and d.class_names == tuple(sorted(CLASSES))
        assert all(p.parent.name == "images" for p in d.paths)       # never a mask
        assert all(p.stem.split("_", 1)[1] == d.class_names[l] for p, l in zip(d.paths, d.labels))


def test_shapes_file_names_without_labels_csv(tmp_path, shapes):
    import shutil

    shutil.copytree(shapes / "images", tmp_path / "imgs")
    d = labelled_images(tmp_path / "imgs")
    assert d.layout == ("file names",) and d.counts() == {c: 3 for c in sorted(CLASSES)}


def test_labelled_image_errors(tmp_path, folders):
    with pytest.raises(LabelError, match="not a folder"):
        labelled_images(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(LabelError, match="no labels"):
        labelled_images(tmp_path / "flat")
    with pytest.raises(LabelError, match="at least two classes"):
        check_classes(np.zeros(5, dtype=int), 2)
    with pytest.raises(LabelError, match=r"cat \(4\), fox \(4\)"):
        check_classes(labelled_images(folders).labels, 4, ("cat", "dog", "fox"))


def test_the_command_on_shapes_images_with_two_models(tmp_path, shapes):
    out = tmp_path / "out"
    assert run(["probe", "--model", VIT, "--model", CNN, "--images", str(shapes / "images"), "--out", str(out),
                "--shots", "2", "--repeats", "2", "--batch-size", "16", "--max-tokens", "4"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["probe.csv", "probe.png", "probe.svg", "probe_repeats.csv",
                                                    "run.json"]
    f = pd.read_csv(out / "probe.csv")
    for c in ("model", "kind", "layer", "depth_fraction", "representation", "shots", "accuracy", "accuracy_std",
              "n_test"):
        assert c in f.columns
    assert set(f.model) == {VIT, CNN} and set(f.kind) == {"vit", "cnn"}
    assert len(f[f.model == VIT]) == 6 * 3 and len(f[f.model == CNN]) == 5 * 2
    assert (f.n_test == 8).all() and (f.shots == 2).all() and f.accuracy.between(0, 1).all()
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "probe" and rec["labels"]["layout"] == ["labels.csv"]
    assert [len(m["shot_indices"]) for m in rec["models"]] == [2, 2]
    rep = pd.read_csv(out / "probe_repeats.csv")
    means = rep.groupby(["model", "layer", "representation"]).accuracy.mean()
    for _, row in f.iterrows():
        assert means[(row.model, row.layer, row.representation)] == pytest.approx(row.accuracy, abs=1e-5)


def test_the_command_on_class_folders_with_a_random_model(tmp_path, folders):
    out = tmp_path / "out"
    assert run(["probe", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(folders),
                "--out", str(out), "--shots", "3", "--repeats", "3", "--representation", "cls",
                "--representation", "gap", "--lambda", "heldout", "--no-standardize"]) == 0
    f = pd.read_csv(out / "probe.csv")
    assert set(f.representation) == {"cls", "gap"} and len(f) == 24 and (f.n_test == 4).all()
    rec = json.loads((out / "run.json").read_text())
    conv = rec["models"][0]["conventions"]
    assert conv["regularization"] == "heldout" and conv["standardize"] == "centre only"
    assert rec["models"][0]["class_names"] == ["cat", "dog", "fox"]


def test_too_few_images_is_an_error_before_anything_is_written(tmp_path, folders, capsys):
    out = tmp_path / "never"
    assert run(["probe", "--model", CNN, "--images", str(folders), "--out", str(out), "--shots", "4"]) == 2
    assert "at least 5 images in every class" in capsys.readouterr().err
    assert not out.exists()
    assert run(["probe", "--model", "vitlens/resnet-tiny-shapes", "--images", str(folders), "--out", str(out),
                "--representation", "cls", "--shots", "2"]) == 2
    assert "no class token" in capsys.readouterr().err


def test_the_shipped_models_late_layers_probe_far_above_chance(tmp_path):
    from vitlens import linear_probes, load_model

    save_images(tmp_path / "held_out", 96, seed=11, split="test")         # never training images
    data = labelled_images(tmp_path / "held_out")
    vit = linear_probes(load_model(VIT), data, shots=5, repeats=2, representations=["cls", "gap"], batch_size=48)
    cnn = linear_probes(load_model(CNN), data, shots=5, repeats=2, representations=["gap"], batch_size=48)
    assert vit.chance == cnn.chance == 1 / 8 and vit.n_test == cnn.n_test == 56
    assert vit.accuracy[-1, 0] > 0.8 and cnn.accuracy[-1, 0] > 0.8         # chance is 0.125
    assert vit.accuracy[-1, 0] > vit.accuracy[0, 0] + 0.3 and cnn.accuracy[-1, 0] > cnn.accuracy[0, 0] + 0.3
