"""Image sets from files and folders, preprocessed with the model's own timm data config.

Folders are searched recursively (symlinks followed, loops skipped). Every image Pillow can read
is converted to RGB (grayscale, palette, 16-bit, CMYK, RGBA; EXIF orientation applied). A file
that cannot be read is skipped with a warning and recorded with its reason; it never stops a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..runtime.errors import ImageError

__all__ = ["find_images", "open_rgb", "model_transform", "ImageSet", "Skipped", "IMAGE_EXTENSIONS",
           "pixel_limit", "DEFAULT_MAX_PIXELS"]

IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_MAX_PIXELS: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_pixels", default=DEFAULT_MAX_PIXELS)
_FROM_CONTEXT = object()


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Within the block, image sets made without an explicit ``max_pixels`` refuse files with more
    than ``max_pixels`` pixels (None: no limit) instead of :data:`DEFAULT_MAX_PIXELS`, Pillow's own
    decompression-bomb threshold. The limit is this context's only: Pillow's module-wide setting is
    never changed beyond the one file being opened (see :func:`open_rgb`)."""
    token = _MAX_PIXELS.set(max_pixels)
    try:
        yield
    finally:
        _MAX_PIXELS.reset(token)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str


def find_images(paths: str | os.PathLike | Sequence[str | os.PathLike], *, num_images: int | None = None,
                sample: bool = False, seed: int = 0) -> list[Path]:
    """List image files under ``paths`` (files or folders), in sorted path order.

    Args:
        paths: files (always taken) and folders (searched recursively for image extensions).
        num_images: keep the first N in sorted order, or a seeded random sample of N with ``sample``.
        sample: draw ``num_images`` at random (seeded) instead of taking the first ones.
        seed: the sampling seed.

    Raises:
        ImageError: a path does not exist, or no image file was found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found.update(_walk(p))
        else:
            raise ImageError(f"image path {p} does not exist.")
    files = sorted(found, key=lambda q: str(q))
    if not files:
        raise ImageError(f"no image files found in {', '.join(map(str, paths))} (looked for "
                         "extensions Pillow reads, such as .jpg, .png, .webp, .tif).")
    if num_images is not None:
        if num_images < 1:
            raise ImageError(f"--num-images must be at least 1, got {num_images}.")
        if sample and num_images < len(files):
            keep = sorted(random.Random(seed).sample(range(len(files)), num_images))
            files = [files[i] for i in keep]
        else:
            files = files[:num_images]
    return files


def _walk(root: Path) -> Iterator[Path]:
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for f in filenames:
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                yield Path(dirpath) / f


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale high-bit-depth single-channel images to 8 bits instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        arr = arr / 257.0 if arr.size and arr.max() > 255 else arr
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
    else:
        return img
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; metadata that cannot be parsed leaves the pixels as stored,
    since a corrupt tag says nothing about how the picture should be turned."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises SyntaxError, struct.error, KeyError... on broken EXIF blocks
        return img


def open_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as 8-bit RGB with its EXIF orientation applied.

    Raises:
        OSError or ValueError: the file is not a readable image, is truncated or corrupt, has no
            pixels, or has more than ``max_pixels`` pixels. Pillow's decoders also fail with other
            types (SyntaxError, struct.error, EOFError...); those are raised as OSError, so callers
            need to catch only these two.
    """
    # Pillow's module-wide settings are touched only where they would contradict this call (a
    # larger limit than Pillow's, or truncated files allowed), and put back at once: with the defaults
    # nothing global changes.
    old_max, old_trunc = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    raise_limit = max_pixels is None or (old_max is not None and max_pixels > old_max)
    if raise_limit:
        Image.MAX_IMAGE_PIXELS = max_pixels
    if old_trunc:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(path, max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"image is over the limit of {max_pixels} pixels (a decompression-bomb "
                         f"guard; a larger one: --max-image-pixels N, or max_pixels=N): {e}") from None
    except (OSError, ValueError, MemoryError):
        raise
    except Exception as e:
        raise OSError(f"cannot decode the image ({type(e).__name__}: {e})") from e
    finally:
        if raise_limit:
            Image.MAX_IMAGE_PIXELS = old_max
        if old_trunc:
            ImageFile.LOAD_TRUNCATED_IMAGES = old_trunc


def _decode(path, max_pixels: int | None) -> Image.Image:
    # Through a file object, not a path: given a path, Pillow memory-maps uncompressed TIFFs and
    # then reads those with an EXIF orientation of 5-8 with height and width swapped (Pillow 13).
    with open(path, "rb") as f:
        try:
            img = Image.open(f)
        except UnidentifiedImageError:  # its message would name the file object, not the file
            raise UnidentifiedImageError(f"cannot identify image file {os.fspath(path)!r}") from None
        with img:
            return _convert(img, max_pixels)


def _convert(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Check the size, decode the pixels, turn them upright and convert to 8-bit RGB."""
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ValueError(f"{img.width} x {img.height} pixels is over the limit of {max_pixels} (a "
                         f"decompression-bomb guard; a larger one: --max-image-pixels N, or max_pixels=N)")
    if img.width < 1 or img.height < 1:
        raise ValueError(f"the image has no pixels ({img.width} x {img.height})")
    img.load()
    img = _to_8bit(_upright(img))
    if img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def model_transform(model: nn.Module, input_size: int | Sequence[int] | None = None):
    """The model's own eval preprocessing, from its family adapter (timm's ``resolve_data_config``;
    a transformers image processor's config; torchvision's or open_clip's transforms), built with
    timm's ``create_transform``.

    Returns:
        ``(transform, data_config)``; ``input_size`` overrides the config's size (for models built
        with ``dynamic_img_size=True``). A timm ViT built for a fixed size other than its pretrained
        config's (``img_size=384``, say) gets its built size.
    """
    import timm.data

    from ..models.families.registry import adapter_for
    from ..runtime.sizes import size_pair

    adapter = adapter_for(model)
    if hasattr(adapter, "data_config"):
        cfg = adapter.data_config(input_size)
    else:
        p = adapter.preprocessing()
        size = p.input_size if input_size is None else size_pair(input_size)
        cfg = {"input_size": (3, *size), "interpolation": p.interpolation, "mean": tuple(p.mean),
               "std": tuple(p.std), "crop_pct": p.crop_pct, "crop_mode": p.crop_mode}
    return timm.data.create_transform(**cfg, is_training=False), cfg


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform, max_pixels):
        self.paths, self.transform, self.max_pixels = list(paths), transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(open_rgb(self.paths[i], self.max_pixels)), i, None
        except Exception as e:  # any failure to decode is a skip, never a crash
            return None, i, f"{type(e).__name__}: {e}".strip()[:300]


def _collate(items):
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, r) for x, i, r in items if x is None]
    if good:
        return torch.stack([x for x, _ in good]), [i for _, i in good], bad
    return None, [], bad


@dataclass
class ImageSet:
    """A list of image files and the preprocessing that turns them into model inputs.

    Iterate with :meth:`batches`; files that fail are added to ``skipped`` as they are met.
    """

    paths: list[Path]
    transform: object
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def for_model(cls, model: nn.Module, paths, *, input_size=None, num_images=None, sample=False,
                  seed=0, max_pixels=_FROM_CONTEXT) -> "ImageSet":
        """Images under ``paths`` with ``model``'s eval preprocessing; files over ``max_pixels``
        pixels are skipped (default: :data:`DEFAULT_MAX_PIXELS`, or the :func:`pixel_limit` in force;
        None: no limit)."""
        transform, _ = model_transform(model, input_size)
        files = find_images(paths, num_images=num_images, sample=sample, seed=seed)
        return cls(files, transform, _MAX_PIXELS.get() if max_pixels is _FROM_CONTEXT else max_pixels)

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int = 32, num_workers: int = 0, indices: Sequence[int] | None = None,
                ) -> Iterator[tuple[torch.Tensor, list[int]]]:
        """Yield ``(images [batch, 3, height, width], indices into paths)``; bad files are skipped.

        Args:
            indices: the subset of files to read (a shard); all by default.
        """
        ds = _Files(self.paths, self.transform, self.max_pixels)
        if indices is not None:
            ds = torch.utils.data.Subset(ds, list(indices))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                             collate_fn=_collate, persistent_workers=False)
        for x, idx, bad in loader:
            for i, reason in bad:
                self.skip(self.paths[i], reason)
            if x is not None:
                yield x, idx

    def skip(self, path, reason: str) -> None:
        """Record an unreadable file once, however many passes over the set meet it."""
        if any(s.path == str(path) for s in self.skipped):
            return
        warnings.warn(f"skipped {path}: {reason}", stacklevel=2)
        self.skipped.append(Skipped(str(path), reason))

    def check_used(self, n_used: int) -> None:
        """Raise a clear error when no image could be read."""
        if n_used == 0:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in self.skipped[:3])
            raise ImageError(f"none of the {len(self.paths)} image files could be read ({reasons}).")

    def record(self, n_used: int) -> dict:
        """The part of a run record that says which images were used and which skipped."""
        return {"n_images": n_used, "n_files": len(self.paths),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}
