"""Object masks: read them beside images, and carry them through a model's resize/crop geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["model_mask", "read_mask"]

_GEOMETRY = {"Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad", "TrimBorder"}
_PIXEL_ONLY = {"ToTensor", "MaybeToTensor", "Normalize", "MaybeNormalize", "ConvertImageDtype", "ToNumpy"}


def model_mask(mask: np.ndarray, transform) -> np.ndarray | None:
    """A boolean image mask ``[H, W]`` through the geometric steps (resize, crop, pad) of a model's
    eval transform: the object's coverage of each input pixel ``[height, width]`` in [0, 1]; None when
    the transform has a step whose geometry vitlens does not know."""
    from PIL import Image

    im = Image.fromarray(mask.astype(np.float32) * 255.0, mode="F")
    for t in getattr(transform, "transforms", [transform]):
        kind = type(t).__name__
        if kind in _GEOMETRY:
            im = t(im)
        elif kind not in _PIXEL_ONLY:
            return None
    return np.clip(np.asarray(im, dtype=np.float64) / 255.0, 0.0, 1.0)


def read_mask(folder: Path, image: Path) -> np.ndarray | None:
    """The mask of ``image`` in ``folder`` (same file name, or same stem as a PNG): nonzero is object."""
    from PIL import Image

    for cand in (folder / image.name, folder / (image.stem + ".png")):
        if cand.is_file():
            with Image.open(cand) as im:
                return np.asarray(im.convert("L")) > 0
    return None
