"""Shapes: a procedurally generated image-classification data set with an object mask per image.

Each image holds one object of a known class (circle, ring, crescent, triangle, square, hexagon,
star, cross) at a random position, size, rotation and colour, drawn over a textured and cluttered
background: smooth colour noise, stripes or checks, pixel noise, and small distractors (line
segments, thin arcs, elongated blobs) that are never of a class shape. Classes differ both in
local detail (corners against smooth outlines, the points of a star) and in global arrangement
(a ring's centred hole against a crescent's off-centre bite against a filled circle), and the
object must be told from the clutter, so a model needs both.

Objects are light and backgrounds dark (every channel of an object's colour is at least
``OBJECT_LEVEL``; backgrounds are scaled into ``[0, BACKGROUND_LEVEL]``), with random hues on both
sides; distractors take any colour. The fixed contrast polarity is what lets a small ViT trained
from scratch learn the task within a CPU budget: with colours drawn freely on both sides, the
same ViT was about a third correct after 1,000 steps of 128 images, against three quarters with
fixed polarity.

Everything is made on the fly from ``(seed, split, index)``: no files, no download. Image ``i`` of
a split is the same on every machine and in every call, and the ``"train"`` and ``"test"`` splits
draw from disjoint random streams, so held-out images are never training images. Labels cycle
through the classes (``label = index % len(CLASSES)``), so any run of consecutive indices is
balanced to within one image per class.

The mask of an image is the set of pixels whose centre lies inside the object's outline (the
drawn object is anti-aliased over a one-pixel border). Distractors are drawn under the object,
so the mask is exactly the visible object.

Saved folders (:func:`save_images`) hold ``images/<index>_<class>.png``,
``masks/<index>_<class>.png`` (0 or 255) and ``labels.csv``; pass ``DIR/images`` to the command
line's ``--images`` and find a file's mask with :func:`mask_path`.
"""

from __future__ import annotations

import csv
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "CLASSES", "SHAPES_MEAN", "SHAPES_STD", "OBJECT_SCALE", "DISTRACTORS", "ROTATION", "BACKGROUND_LEVEL",
    "OBJECT_LEVEL", "data_config", "ShapesDataset", "make_shape_image", "sample",
    "generate", "normalize", "save_images", "mask_path", "load_mask", "label_of", "class_counts",
]

CLASSES: tuple[str, ...] = ("circle", "ring", "crescent", "triangle", "square", "hexagon", "star", "cross")

#: Per-channel normalisation the shipped shape models were trained with (pixel values in [0, 1]).
SHAPES_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SHAPES_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)


def data_config(image_size: int = 64) -> dict:
    """The timm data config of a model trained on shapes of ``image_size`` pixels.

    ``crop_pct=1.0`` makes timm's eval transform leave an image of native size unchanged (no resize,
    no crop), so a saved PNG goes through exactly the preprocessing used in training.
    """
    return {"input_size": (3, image_size, image_size), "interpolation": "bilinear",
            "mean": SHAPES_MEAN, "std": SHAPES_STD, "crop_pct": 1.0, "crop_mode": "center"}


_SPLITS = {"train": 0, "test": 1}
_REF = 64.0  # sizes below are in pixels of a 64 px image and scale with image_size
OBJECT_SCALE = (11.0, 20.0)  #: range of an object's scale, in px of a 64 px image
DISTRACTORS = (2, 8)  #: range of the number of distractors per image, both ends included
ROTATION = 180.0  #: objects turn by up to this many degrees either way
BACKGROUND_LEVEL = 0.5  #: backgrounds are scaled into [0, BACKGROUND_LEVEL] before pixel noise
OBJECT_LEVEL = 0.55  #: each channel of an object's colour is drawn from [OBJECT_LEVEL, 1]


# --------------------------------------------------------------------------- geometry

_NOISE_SEED = 0x5EED  # fixed: the sensor-noise bank is part of the data set's definition


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y [size, 1], x [1, size])``, broadcastable to [height, width]."""
    c = np.arange(size, dtype=np.float32) + np.float32(0.5)
    return c[:, None], c[None, :]


@lru_cache(maxsize=64)
def _upsample_matrix(size: int, cells: int) -> np.ndarray:
    """[size, cells] matrix that linearly interpolates a cells-long vector to size samples."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    t = (pos - lo).astype(np.float32)
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), lo] = 1 - t
    m[np.arange(size), lo + 1] = t
    return m


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed field of standard-normal noise, [3, size + 192, size + 192]; images take a random crop."""
    n = size + 192
    return np.random.default_rng(_NOISE_SEED).standard_normal((3, n, n), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1], [channels, size, size]."""
    m = _upsample_matrix(size, cells)
    g = rng.random((channels, cells, cells), dtype=np.float32)
    return m @ g @ m.T


def _polygon_sdf(r: np.ndarray, theta: np.ndarray, radius: float, inner: float, n: int) -> np.ndarray:
    """Signed distance (negative inside) to a regular n-gon or n-pointed star, vertex at angle 0.

    ``inner`` is the radius of the valleys between points: ``radius * cos(pi / n)`` gives the
    convex polygon, a smaller value a star. The angle is folded into one half-sector, where the
    outline is the single segment from a valley (angle 0) to a point (angle pi / n); outside the
    shape the value is the distance to that segment's line (exact inside, a bound outside).
    """
    a = np.pi / n
    t = theta * np.float32(0.5 / a)
    t -= np.floor(t)
    phi = np.abs(t - np.float32(0.5)) * np.float32(2 * a)  # 0 at a valley or mid-edge, a at a point
    xs, ys = r * np.cos(phi), r * np.sin(phi)
    ex, ey = radius * np.cos(a) - inner, radius * np.sin(a)
    norm = np.hypot(ex, ey)
    return (xs - np.float32(inner)) * np.float32(ey / norm) - ys * np.float32(ex / norm)


def _shape_sdf(label: int, dy: np.ndarray, dx: np.ndarray, size: float, rot: float) -> np.ndarray:
    """Signed distance field (negative inside) of class ``label`` centred at offset (0, 0).

    ``size`` is the object's scale in pixels; each class's proportions are set so that all
    classes cover a similar area at the same scale and fit within a radius of 1.15 ``size``.
    """
    name = CLASSES[label]
    cr, sr = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    u, v = dx * cr + dy * sr, dy * cr - dx * sr  # object frame
    s = np.float32(size)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        L, w = np.float32(0.95) * s, np.float32(0.3) * s
        return np.minimum(np.maximum(au - L, av - w), np.maximum(au - w, av - L))
    r = np.sqrt(u * u + v * v)
    if name == "circle":
        return r - np.float32(0.82) * s
    if name == "ring":
        return np.abs(r - np.float32(0.68) * s) - np.float32(0.22) * s
    if name == "crescent":
        u2 = u - np.float32(0.42) * s
        return np.maximum(r - np.float32(0.9) * s, np.float32(0.72) * s - np.sqrt(u2 * u2 + v * v))
    theta = np.arctan2(v, u)
    if name == "triangle":
        R = 1.12 * size
        return _polygon_sdf(r, theta, R, R * np.cos(np.pi / 3), 3)
    if name == "square":
        R = 0.98 * size
        return _polygon_sdf(r, theta, R, R * np.cos(np.pi / 4), 4)
    if name == "hexagon":
        R = 0.9 * size
        return _polygon_sdf(r, theta, R, R * np.cos(np.pi / 6), 6)
    if name == "star":
        return _polygon_sdf(r, theta, 1.15 * size, 0.5 * size, 5)
    raise ValueError(f"unknown class {name}")


def _window(cy: float, cx: float, ext: float, size: int) -> tuple[slice, slice] | None:
    y0, y1 = max(0, int(cy - ext)), min(size, int(cy + ext) + 2)
    x0, x1 = max(0, int(cx - ext)), min(size, int(cx + ext) + 2)
    if y1 <= y0 or x1 <= x0:
        return None
    return slice(y0, y1), slice(x0, x1)


def _alpha(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a signed distance field: a one-pixel ramp around the outline."""
    a = 0.5 - sdf
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)
    return a


# --------------------------------------------------------------------------- drawing

def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3, dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background, float32 [3, size, size], roughly in [0, 1]."""
    y, x = _grid(size)
    c1, c2 = _colour(rng), _colour(rng)
    t = _smooth_noise(rng, size, int(rng.integers(3, 9)))[0]
    img = c1[:, None, None] + t[None] * (c2 - c1)[:, None, None]
    kind = int(rng.integers(0, 4))  # 0 plain, 1 stripes, 2 checks, 3 a second, finer noise layer
    if kind in (1, 2):
        ang = rng.uniform(0, np.pi)
        k = 2 * np.pi / (rng.uniform(4.0, 14.0) * size / _REF)
        amp = np.where(rng.random(3) < 0.5, -1.0, 1.0).astype(np.float32) * np.float32(rng.uniform(0.06, 0.22))
        ph0, ph1 = float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))
        ca, sa = np.float32(k * np.cos(ang)), np.float32(k * np.sin(ang))
        s = np.sin(x * ca + y * sa + np.float32(ph0))
        if kind == 2:
            s = np.sign(s * np.sin(y * ca - x * sa + np.float32(ph1)))
        img += s[None] * amp[:, None, None]
    elif kind == 3:
        fine = _smooth_noise(rng, size, int(rng.integers(10, 17)), 3)
        img += (fine - np.float32(0.5)) * np.float32(rng.uniform(0.15, 0.4))
    img *= BACKGROUND_LEVEL
    return img


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, sl: tuple[slice, slice]) -> None:
    """Alpha-blend a flat colour into ``img[:, sl]`` in place."""
    region = img[:, sl[0], sl[1]]
    region += alpha[None] * (colour[:, None, None] - region)


def _distractors(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Draw 2 to 8 small pieces of clutter that are never of a class shape.

    Line segments, thin open arcs (at most half a circle) and elongated blobs (aspect 2.2 to 4),
    all smaller than the smallest object.
    """
    y, x = _grid(size)
    scale = size / _REF
    n = int(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1))
    kinds = rng.integers(0, 3, size=n).tolist()
    colours = rng.random((n, 3), dtype=np.float32)[:, :, None, None]
    params = rng.random((n, 6)).tolist()  # centre y, centre x, angle, three shape parameters; in [0, 1)
    for kind, colour, (py, px, pa, p3, p4, p5) in zip(kinds, colours, params):
        cy, cx, ang = py * size, px * size, pa * 2 * math.pi
        if kind == 0:
            half, w = (4.0 + 10.0 * p3) * scale, (0.5 + 0.8 * p4) * scale
            ext = half + w + 1
        elif kind == 1:
            rad, w = (4.0 + 6.0 * p3) * scale, (0.5 + 0.6 * p4) * scale
            cos_open = math.cos((0.3 + 0.2 * p5) * math.pi)
            ext = rad + w + 1
        else:
            a = (3.0 + 3.0 * p3) * scale
            b = a / (2.2 + 1.8 * p4)
            ext = a + 1
        sl = _window(cy, cx, ext, size)
        if sl is None:
            continue
        dy, dx = y[sl[0]] - cy, x[:, sl[1]] - cx  # Python floats keep float32 arrays float32
        ca, sa = math.cos(ang), math.sin(ang)
        u, v = dx * ca + dy * sa, dy * ca - dx * sa
        if kind == 0:  # line segment
            e = np.abs(u) - half
            np.maximum(e, 0.0, out=e)
            d = np.sqrt(e * e + v * v) - w
        elif kind == 1:  # thin open arc
            r = np.sqrt(u * u + v * v)
            d = np.where(u >= r * cos_open, np.abs(r - rad) - w, np.float32(99))
        else:  # elongated blob
            uu, vv = u * (1 / a), v * (1 / b)
            d = (np.sqrt(uu * uu + vv * vv) - 1.0) * b
        region = img[:, sl[0], sl[1]]
        region += _alpha(d)[None] * (colour - region)


def _object_colour(rng: np.random.Generator, under: np.ndarray, min_contrast: float = 0.35) -> np.ndarray:
    """A random light colour at least ``min_contrast`` (Euclidean, RGB in [0, 1]) from ``under``.

    Each channel is drawn from ``[OBJECT_LEVEL, 1]``. The first of 12 random tries that is far
    enough; if none is, the most distant try pushed away from ``under`` until it is (or reaches
    the edge of the colour cube).
    """
    tries = OBJECT_LEVEL + (1.0 - OBJECT_LEVEL) * rng.random((12, 3), dtype=np.float32)
    dist = np.sqrt(((tries - under) ** 2).sum(axis=1))
    ok = np.flatnonzero(dist >= min_contrast)
    if ok.size:
        return tries[ok[0]]
    k = int(np.argmax(dist))
    direction = tries[k] - under
    n = float(dist[k])
    direction = direction / n if n > 1e-6 else np.where(under < 0.5, 1.0, -1.0).astype(np.float32) / math.sqrt(3)
    return np.clip(under + direction * (1.2 * min_contrast), 0.0, 1.0).astype(np.float32)


def make_shape_image(rng: np.random.Generator, label: int | None = None, image_size: int = 64,
                     ) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw one image.

    Args:
        rng: the random stream (all randomness comes from it).
        label: the class index into :data:`CLASSES`; drawn from ``rng`` when None.
        image_size: side of the square image in pixels (the geometry scales with it; 64 is native).

    Returns:
        ``(image [height, width, 3] uint8 RGB, mask [height, width] bool, label)``.
    """
    if label is None:
        label = int(rng.integers(0, len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    size = int(image_size)
    if size < 16:
        raise ValueError(f"image_size must be at least 16, got {size}")
    scale = size / _REF
    img = _background(rng, size)
    _distractors(rng, img, size)

    # object: scale, rotation, centre, shading strength and direction, stripe period and angle
    p_obj, p_rot, p_y, p_x, p_g, p_ang, p_per, p_sa, p_striped, p_noise = rng.random(10).tolist()
    obj = (OBJECT_SCALE[0] + (OBJECT_SCALE[1] - OBJECT_SCALE[0]) * p_obj) * scale  # the object's scale in pixels
    rot = math.radians(ROTATION) * (2 * p_rot - 1)
    reach = 1.15 * obj + 1.0  # every class fits within this radius of its centre
    cy, cx = reach + (size - 2 * reach) * p_y, reach + (size - 2 * reach) * p_x
    y, x = _grid(size)
    sl = _window(cy, cx, reach, size)
    dy, dx = y[sl[0]] - cy, x[:, sl[1]] - cx
    sdf = _shape_sdf(label, dy, dx, obj, rot)
    mask = np.zeros((size, size), bool)
    mask[sl] = sdf <= 0
    alpha = _alpha(sdf)

    under = img[:, mask].mean(axis=1)
    colour = _object_colour(rng, under)
    # fill: the colour with a soft shading gradient, sometimes stripes of a darker shade
    g, ang = 0.25 * p_g / obj, 2 * math.pi * p_ang
    shade = (dx * (g * math.cos(ang)) + 1.0) + dy * (g * math.sin(ang))
    if p_striped < 0.3:
        k, sa = 2 * math.pi / ((3.0 + 3.0 * p_per) * scale), math.pi * p_sa
        dark = np.sin(dx * (k * math.cos(sa)) + dy * (k * math.sin(sa))) < 0
        shade = np.where(dark, shade * 0.7, shade)
    region = img[:, sl[0], sl[1]]
    region += alpha[None] * (shade[None] * colour[:, None, None] - region)

    bank = _noise_bank(size)  # sensor noise: a random crop of a fixed noise field
    oy, ox = rng.integers(0, bank.shape[1] - size + 1, size=2).tolist()
    img += bank[:, oy:oy + size, ox:ox + size] * (0.05 * p_noise)
    img *= 255.0
    img += 0.5
    np.maximum(img, 0.0, out=img)
    np.minimum(img, 255.0, out=img)
    return np.ascontiguousarray(img.transpose(1, 2, 0).astype(np.uint8)), mask, label


# --------------------------------------------------------------------------- sets

def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    if index >= 2 ** 40:
        raise ValueError(f"index must be below 2**40, got {index}")
    # one integer key per (seed, split, index); distinct keys give independent streams
    return np.random.Generator(np.random.PCG64(((int(seed) * 4 + _SPLITS[split]) << 40) + int(index)))


def sample(index: int, *, seed: int = 0, split: str = "train", image_size: int = 64,
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """Image ``index`` of a split: ``(image uint8 [H, W, 3], mask bool [H, W], label)``."""
    return make_shape_image(_rng(seed, split, index), index % len(CLASSES), image_size)


def generate(n: int, *, seed: int = 0, split: str = "train", image_size: int = 64, start: int = 0,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``start .. start + n - 1`` of a split as arrays.

    Returns:
        ``(images [n, H, W, 3] uint8, masks [n, H, W] bool, labels [n] int64)``.
    """
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    masks = np.empty((n, image_size, image_size), bool)
    labels = np.empty(n, np.int64)
    for k in range(n):
        images[k], masks[k], labels[k] = sample(start + k, seed=seed, split=split, image_size=image_size)
    return images, masks, labels


def normalize(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [N, H, W, 3] (or one [H, W, 3]) to normalised float [N, 3, H, W] model inputs.

    Equal to timm's eval transform of the saved PNGs under :func:`data_config`.
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` shape images of one split, drawn on the fly; image ``i`` depends only on (seed, split, start + i).

    Items are ``(x, label)``, or ``(x, label, mask)`` with ``return_mask``. ``x`` is
    ``transform(PIL image)`` when a transform is given (for example a timm eval transform), else
    a float tensor [3, H, W] in [0, 1]; ``mask`` is a bool tensor [H, W].
    """

    def __init__(self, n: int, *, seed: int = 0, image_size: int = 64, split: str = "train",
                 transform: Callable | None = None, return_mask: bool = False, start: int = 0):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        self.n, self.seed, self.image_size, self.split = int(n), int(seed), int(image_size), split
        self.transform, self.return_mask, self.start = transform, return_mask, int(start)
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        """``(image uint8 [H, W, 3], mask bool [H, W], label)`` of item ``i``."""
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        i = i % self.n if self.n else i
        return sample(self.start + i, seed=self.seed, split=self.split, image_size=self.image_size)

    def __getitem__(self, i: int):
        image, mask, label = self.sample(i)
        if self.transform is not None:
            from PIL import Image
            x = self.transform(Image.fromarray(image))
        else:
            x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        if self.return_mask:
            return x, label, torch.from_numpy(mask)
        return x, label

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All items as ``(images [n, H, W, 3] uint8, masks [n, H, W] bool, labels [n] int64)``."""
        return generate(self.n, seed=self.seed, split=self.split, image_size=self.image_size, start=self.start)


# --------------------------------------------------------------------------- files

def save_images(folder: str | os.PathLike, n: int, *, seed: int = 0, split: str = "test",
                image_size: int = 64, start: int = 0) -> list[Path]:
    """Write ``n`` images of a split as PNG files with their masks, for tools that read folders.

    Layout: ``folder/images/<index>_<class>.png`` (RGB), ``folder/masks/<index>_<class>.png``
    (8-bit, 255 inside the object, 0 outside) and ``folder/labels.csv`` (file, index, label,
    class). Images and masks are kept in sibling folders so that a recursive image search of
    ``folder/images`` never picks up a mask.

    Returns:
        The image paths, in index order.
    """
    from PIL import Image

    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(start + n - 1)))
    paths, rows = [], []
    for k in range(n):
        idx = start + k
        image, mask, label = sample(idx, seed=seed, split=split, image_size=image_size)
        name = f"{idx:0{width}d}_{CLASSES[label]}.png"
        Image.fromarray(image).save(root / "images" / name)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name)
        paths.append(root / "images" / name)
        rows.append((f"images/{name}", idx, label, CLASSES[label]))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "index", "label", "class"])
        w.writerows(rows)
    return paths


def mask_path(image_path: str | os.PathLike) -> Path:
    """Where :func:`save_images` put the mask of ``image_path``: ``../masks/<same name>``."""
    p = Path(image_path)
    return p.parent.parent / "masks" / p.name


def load_mask(image_path: str | os.PathLike) -> np.ndarray | None:
    """The object mask of a saved image as bool [H, W], or None when it has no mask file."""
    from PIL import Image

    m = mask_path(image_path)
    if not m.is_file():
        return None
    with Image.open(m) as im:
        return np.asarray(im.convert("L")) >= 128


def label_of(image_path: str | os.PathLike) -> int | None:
    """The class index encoded in a saved image's name (``<index>_<class>.png``), or None."""
    stem = Path(image_path).stem
    name = stem.split("_", 1)[1] if "_" in stem else ""
    return CLASSES.index(name) if name in CLASSES else None


def class_counts(labels: Sequence[int]) -> dict[str, int]:
    """How many of each class in ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(CLASSES))
    return {c: int(k) for c, k in zip(CLASSES, counts)}
