"""One batch iterator over an image set, used by every analysis.

It yields each batch with the *file indices* of its images (positions in the tensor or in the
``ImageSet``'s file list), so that every per-image input (targets, masks, keys) is looked up by the
image's own index, whatever was skipped before it.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

__all__ = ["iter_batches", "num_images", "check_images"]


def num_images(images) -> int:
    """How many images ``images`` (a tensor ``[image, 3, height, width]`` or an ImageSet) holds."""
    return int(images.shape[0]) if isinstance(images, torch.Tensor) else len(images)


def check_images(images) -> None:
    """Raise ValueError unless ``images`` is a float tensor ``[image, 3, height, width]`` or an
    ImageSet-like object (anything with ``batches``)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor [image, 3, height, width], got "
                             f"{images.dtype} {tuple(images.shape)}")
    elif not hasattr(images, "batches"):
        raise ValueError(f"images must be a tensor [image, 3, height, width] or an ImageSet, got "
                         f"{type(images).__name__}")


def iter_batches(images, batch_size: int, *, indices: Sequence[int] | None = None,
                 workers: int = 0) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Yield ``(inputs [batch, 3, height, width], file indices)``.

    Args:
        images: a float tensor ``[image, 3, height, width]`` already preprocessed for the model, or
            an ImageSet-like object with ``batches(batch_size, num_workers=, indices=)``.
        batch_size: images per batch (at least 1).
        indices: the subset to read (a shard, or what is left to do on resume), in the order given;
            all images by default. Unreadable files are skipped, so a batch may be shorter.
        workers: image-decoding worker processes for an ImageSet.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    check_images(images)
    if isinstance(images, torch.Tensor):
        idx = list(range(images.shape[0])) if indices is None else [int(i) for i in indices]
        for i in range(0, len(idx), batch_size):
            chunk = idx[i:i + batch_size]
            yield images[chunk], chunk
        return
    kwargs: dict = {"num_workers": workers}
    if indices is not None:
        kwargs["indices"] = [int(i) for i in indices]
    for x, idx in images.batches(batch_size, **kwargs):
        yield x, [int(i) for i in idx]
