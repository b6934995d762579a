"""Images with class labels: a folder per class, or the shapes data set's saved labels.

Three layouts are read, tried in this order for each path given:

1. a shapes folder written by :func:`vitlens.data.shapes.save_images`: ``labels.csv`` in the folder
   given or in its parent (``DIR`` or ``DIR/images``); the files it lists under the folder given are
   the images, its ``class`` column their labels;
2. a folder per class, as torchvision's ``ImageFolder`` reads it: ``DIR/<class name>/**/<image>``;
   the class names are the sub-folders' names, sorted; image files directly in ``DIR`` belong to no
   class and are left out (with a warning);
3. shapes file names without ``labels.csv``: every image named ``<index>_<class>.<ext>`` with a
   shapes class.

Several paths are merged: class names are the sorted union of every path's, so that one class
spread over two roots is one class.
"""

from __future__ import annotations

import csv
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn as nn

from ..runtime.errors import LabelError
from .images import IMAGE_EXTENSIONS, ImageSet, find_images

__all__ = ["LabelledImages", "labelled_images", "check_classes"]


@dataclass(frozen=True, eq=False)
class LabelledImages:
    """Image files with a class each.

    Attributes:
        paths: the image files, in sorted path order.
        labels: ``[image]`` class index of each file (int64, read-only).
        class_names: the classes, in index order.
        layout: how the labels were read, one per root: ``"labels.csv"``, ``"class folders"`` or
            ``"file names"``.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    layout: tuple[str, ...]

    def __post_init__(self):
        self.labels.setflags(write=False)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        n = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(k) for c, k in zip(self.class_names, n)}

    def image_set(self, model: nn.Module, *, input_size=None) -> ImageSet:
        """The files with ``model``'s own eval preprocessing; file ``i`` of the set has label ``labels[i]``."""
        from .images import model_transform

        transform, _ = model_transform(model, input_size)
        return ImageSet(list(self.paths), transform)


def _from_csv(root: Path) -> tuple[list[Path], list[str]] | None:
    for table in (root / "labels.csv", root.parent / "labels.csv"):
        if not table.is_file():
            continue
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "file" not in rows[0] or "class" not in rows[0]:
            raise LabelError(f"{table} has no 'file' and 'class' columns; a shapes folder's labels.csv "
                             "lists file, index, label, class.")
        under = root.resolve()
        paths, names = [], []
        for r in rows:
            p = table.parent / r["file"]
            if under in p.resolve().parents:
                paths.append(p)
                names.append(r["class"])
        if paths:
            return paths, names
    return None


def _from_folders(root: Path) -> tuple[list[Path], list[str]] | None:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        return None
    paths, names = [], []
    for c in classes:
        try:
            found = find_images(root / c)
        except Exception:  # an empty class folder: counted (as zero) by check_classes
            found = []
        paths += found
        names += [c] * len(found)
    stray = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if stray:
        warnings.warn(f"{len(stray)} image files directly in {root} belong to no class folder and are left out.",
                      stacklevel=3)
    return paths, names


def _from_names(root: Path) -> tuple[list[Path], list[str]] | None:
    from .shapes import CLASSES, label_of

    files = find_images(root)
    labels = [label_of(p) for p in files]
    if any(l is None for l in labels):
        return None
    return files, [CLASSES[l] for l in labels]


def labelled_images(paths: str | os.PathLike | Sequence[str | os.PathLike], *, num_images: int | None = None,
                    sample: bool = False, seed: int = 0) -> LabelledImages:
    """The labelled images under ``paths`` (folders; see the module docstring for the layouts).

    Args:
        num_images: keep the first N files in sorted path order, or a seeded random sample of N with
            ``sample`` (as :func:`~vitlens.data.images.find_images`).

    Raises:
        LabelError: a path is not a folder, or no layout gives its images labels.
    """
    roots = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    found: dict[Path, str] = {}
    layouts = []
    for root in roots:
        if not root.is_dir():
            raise LabelError(f"{root} is not a folder; labelled images are read from a folder per class "
                             "(DIR/<class>/<image>) or from a shapes folder with labels.csv.")
        for layout, read in (("labels.csv", _from_csv), ("class folders", _from_folders), ("file names", _from_names)):
            got = read(root)
            if got is not None and got[0]:
                break
        else:
            raise LabelError(f"the images in {root} have no labels vitlens can read: give a folder per class "
                             "(DIR/<class>/<image>, as torchvision's ImageFolder reads it) or a shapes folder "
                             "written by save_images (with labels.csv).")
        layouts.append(layout)
        for p, c in zip(*got):
            if found.setdefault(p, c) != c:
                raise LabelError(f"{p} is given two classes, {found[p]} and {c}.")
    files = sorted(found, key=str)
    if num_images is not None:
        if num_images < 1:
            raise LabelError(f"--num-images must be at least 1, got {num_images}.")
        if sample and num_images < len(files):
            files = [files[i] for i in sorted(random.Random(seed).sample(range(len(files)), num_images))]
        else:
            files = files[:num_images]
    classes = tuple(sorted(set(found[p] for p in files)))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[found[p]] for p in files], dtype=np.int64)
    return LabelledImages(tuple(files), labels, classes, tuple(layouts))


def check_classes(labels: np.ndarray, shots: int, class_names: Sequence[str] | None = None) -> None:
    """Raise :class:`LabelError` unless there are at least two classes and every class has at least
    ``shots + 1`` images (``shots`` to fit on, one or more to test on).

    Args:
        labels: ``[image]`` class indices (of the images that could be read).
        class_names: the classes (default: ``0 .. max label``); a class without images counts as empty.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(class_names) if class_names is not None else (int(labels.max()) + 1 if labels.size else 0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    counts = np.bincount(labels, minlength=n_classes) if labels.size else np.zeros(n_classes, np.int64)
    present = int((counts > 0).sum())
    if present < 2:
        raise LabelError(f"probes need images of at least two classes; {present} class"
                         f"{'' if present == 1 else 'es'} found ({labels.size} images).")
    short = [f"{names[i]} ({int(counts[i])})" for i in range(n_classes) if counts[i] < shots + 1]
    if short:
        raise LabelError(f"{shots}-shot probes need at least {shots + 1} images in every class ({shots} to fit, "
                         f"one or more to test); too few in {', '.join(short[:8])}"
                         f"{' and more' if len(short) > 8 else ''}. Use fewer --shots or more images.")
