"""The generated shapes data set: determinism, disjoint splits, masks, balance, files."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from vitlens.data import find_images, shapes
from vitlens.data.shapes import CLASSES, ShapesDataset, generate, make_shape_image, sample, save_images


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def test_same_seed_same_images_other_seed_other_images():
    a_img, a_mask, a_lab = generate(16, seed=3, split="train")
    b_img, b_mask, b_lab = generate(16, seed=3, split="train")
    c_img, _, _ = generate(16, seed=4, split="train")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask) and np.array_equal(a_lab, b_lab)
    assert not any(np.array_equal(a, c) for a, c in zip(a_img, c_img))


def test_an_image_depends_only_on_seed_split_and_index():
    img, mask, label = generate(10, seed=1, split="test")
    late_img, late_mask, late_label = sample(7, seed=1, split="test")
    assert np.array_equal(img[7], late_img) and np.array_equal(mask[7], late_mask) and label[7] == late_label
    ds = ShapesDataset(5, seed=1, split="test", start=5)
    assert np.array_equal(ds.sample(2)[0], img[7])


def test_train_and_test_splits_are_disjoint():
    train, _, _ = generate(400, seed=0, split="train")
    test, _, _ = generate(400, seed=0, split="test")
    train_digests = {_digest(x) for x in train}
    assert len(train_digests) == len(train)  # no repeats within a split either
    assert not train_digests & {_digest(x) for x in test}
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(4, split="validation")


def test_output_types_and_shapes():
    img, mask, label = make_shape_image(np.random.default_rng(0), label=2)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3) and img.flags.c_contiguous
    assert mask.dtype == bool and mask.shape == (64, 64) and label == 2
    img, mask, label = make_shape_image(np.random.default_rng(0), image_size=96)
    assert img.shape == (96, 96, 3) and mask.shape == (96, 96) and 0 <= label < len(CLASSES)
    with pytest.raises(ValueError):
        make_shape_image(np.random.default_rng(0), label=len(CLASSES))


def _ring_around(mask: np.ndarray, width: int = 2) -> np.ndarray:
    grown = mask.copy()
    for _ in range(width):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~mask


def test_masks_cover_a_visible_object_inside_the_image():
    images, masks, labels = generate(240, seed=0, split="test")
    for img, mask, label in zip(images, masks, labels):
        area = mask.mean()
        assert 0.02 < area < 0.5, (CLASSES[label], area)
        # the object stays inside the frame: no mask pixel on the border
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        # the object's colour differs from the background right around it
        inside = img[mask].astype(float).mean(0)
        around = img[_ring_around(mask)].astype(float).mean(0)
        assert np.linalg.norm(inside - around) > 40, CLASSES[label]


def test_mask_is_the_drawn_object():
    # the same random stream with another class draws the same background; pixels differ where
    # either object is, and nowhere else except the anti-aliased border
    a_img, a_mask, _ = make_shape_image(np.random.default_rng(11), label=0)  # circle
    b_img, b_mask, _ = make_shape_image(np.random.default_rng(11), label=1)  # ring, same place
    diff = np.abs(a_img.astype(int) - b_img.astype(int)).max(-1) > 0
    near = _ring_around(a_mask | b_mask, 1) | a_mask | b_mask
    assert not (diff & ~near).any()
    assert diff[a_mask ^ b_mask].mean() > 0.95  # the ring's hole shows the background


def test_holes_are_not_in_the_mask():
    for i in range(1, 200, len(CLASSES)):  # rings
        img, mask, label = sample(i, seed=0, split="test")
        assert CLASSES[label] == "ring"
        ys, xs = np.nonzero(mask)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        assert not mask[cy, cx]


def test_classes_are_balanced():
    _, _, labels = generate(10 * len(CLASSES) + 3, seed=0, split="train", start=5)
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1
    assert shapes.class_counts(labels) == {c: int(k) for c, k in zip(CLASSES, counts)}


def test_dataset_items_and_dataloader():
    ds = ShapesDataset(10, seed=0, split="test", return_mask=True)
    x, y, m = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int) and m.shape == (64, 64) and m.dtype == torch.bool
    xb, yb, mb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 64, 64) and yb.tolist() == [0, 1, 2, 3] and mb.shape == (4, 64, 64)
    assert len(ds) == 10 and torch.equal(ds[-1][0], ds[9][0])
    with pytest.raises(IndexError):
        ds[10]
    images, masks, labels = ds.arrays()
    assert np.array_equal(images[3], (x.permute(1, 2, 0) * 255).round().byte().numpy())


def test_transform_matches_normalize():
    import timm.data

    cfg = shapes.data_config(64)
    tf = timm.data.create_transform(**cfg, is_training=False)
    ds = ShapesDataset(6, seed=2, split="test", transform=tf)
    images, _, _ = ds.arrays()
    assert torch.equal(torch.stack([ds[i][0] for i in range(6)]), shapes.normalize(images))


def test_saved_files_round_trip(tmp_path):
    paths = save_images(tmp_path / "set", 12, seed=5, split="test")
    images, masks, labels = generate(12, seed=5, split="test")
    assert [p.name for p in paths] == [f"{i:05d}_{CLASSES[k]}.png" for i, k in enumerate(labels)]
    # a recursive image search of the images folder finds the images and never a mask
    assert find_images(tmp_path / "set" / "images") == sorted(paths)
    for p, img, mask, label in zip(paths, images, masks, labels):
        with Image.open(p) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), img)
        assert shapes.mask_path(p) == tmp_path / "set" / "masks" / p.name
        assert np.array_equal(shapes.load_mask(p), mask)
        assert shapes.label_of(p) == label
    with open(tmp_path / "set" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["label"]) for r in rows] == labels.tolist()
    assert shapes.load_mask(tmp_path / "elsewhere.png") is None
