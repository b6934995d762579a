"""Numbers to judge a saliency map by: the share of its mass inside an object, and a deletion curve.

- :func:`mask_share` (the energy-based pointing game): map mass inside the object mask divided by
  the map's total mass. A mask given at input resolution is brought to the patch grid by the
  fraction of each patch's area it covers, so the share equals that of the map spread uniformly
  over each patch's pixels. :func:`pointing_hit` is the classic pointing game: whether the map's
  maximum falls on the object.
- :func:`deletion_curve`: the model's confidence (softmax probability of the target class) as the
  most-attended patches are removed in equal steps, and its area under the curve (trapezoid rule
  over the removed fraction in [0, 1]). A good map makes confidence fall fast: a lower area.

Patch ``(i, j)`` covers input rows ``[i * sy, (i + 1) * sy)`` and columns ``[j * sx, (j + 1) * sx)``
(``sy, sx`` the layout's patch stride), clipped to the image.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ...models.layout import token_layout
from ...models.tokens import TokenLayout
from .conventions import FILLS  # named here as well

__all__ = ["box_mask", "grid_mask", "mask_share", "pointing_hit", "deletion_curve", "random_order_deletion",
           "deletion_auc", "DeletionCurve", "FILLS"]



def _maps_and_layout(maps, layout: TokenLayout | None) -> tuple[np.ndarray, TokenLayout | None]:
    if hasattr(maps, "maps") and hasattr(maps, "layout"):  # a RolloutMaps
        return np.asarray(maps.maps, dtype=np.float64), layout or maps.layout
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    m = np.asarray(maps, dtype=np.float64)
    return (m[None] if m.ndim == 2 else m), layout


def box_mask(boxes, input_size: Sequence[int]) -> np.ndarray:
    """Boolean masks ``[..., height, width]`` of boxes ``(x0, y0, x1, y1)`` in input pixels.

    A pixel belongs to a box when its centre ``(x + 0.5, y + 0.5)`` lies in ``[x0, x1) x [y0, y1)``.
    ``boxes`` is one box or ``[image, 4]``.
    """
    b = np.asarray(boxes, dtype=np.float64)
    h, w = int(input_size[0]), int(input_size[1])
    cy, cx = np.arange(h) + 0.5, np.arange(w) + 0.5
    x0, y0, x1, y1 = (b[..., i, None] for i in range(4))
    iny = (cy >= y0) & (cy < y1)  # [..., height]
    inx = (cx >= x0) & (cx < x1)  # [..., width]
    return iny[..., :, None] & inx[..., None, :]


def _coverage(length: int, cells: int, stride: float) -> np.ndarray:
    """``[cell, pixel]``: the share of cell ``i``'s in-image extent covered by pixel ``p``."""
    lo = np.arange(cells)[:, None] * stride
    p = np.arange(length)[None, :]
    overlap = np.clip(np.minimum(p + 1, lo + stride) - np.maximum(p, lo), 0, None)
    extent = overlap.sum(axis=1, keepdims=True)  # the cell's extent inside the image
    return overlap / np.where(extent > 0, extent, 1.0)


def grid_mask(masks, layout: TokenLayout) -> np.ndarray:
    """Bring masks ``[..., height, width]`` at input resolution to the patch grid: each patch gets
    the fraction of its area (within the image) that the mask covers, ``[..., grid_h, grid_w]``."""
    m = np.asarray(masks, dtype=np.float64)
    h, w = layout.input_size
    if m.shape[-2:] != (h, w):
        raise ValueError(f"mask is {m.shape[-2]} x {m.shape[-1]} but the model input is {h} x {w}.")
    gh, gw = layout.grid_size
    sy, sx = layout.patch_stride
    cy, cx = _coverage(h, gh, sy), _coverage(w, gw, sx)
    return np.einsum("iy,...yx,jx->...ij", cy, m, cx)


def _grid_masks(masks, grid: tuple[int, int], layout: TokenLayout | None) -> np.ndarray:
    m = np.asarray(masks, dtype=np.float64)
    if m.shape[-2:] == tuple(grid):
        return m
    if layout is None:
        raise ValueError(f"mask is {m.shape[-2]} x {m.shape[-1]}, not the {grid[0]} x {grid[1]} grid of the "
                         "maps; pass the token layout to bring an input-resolution mask to the grid.")
    return grid_mask(m, layout)


def mask_share(maps, masks, layout: TokenLayout | None = None) -> np.ndarray:
    """Share of each map's mass inside its mask (energy-based pointing game), ``[image]``.

    Args:
        maps: ``[image, grid_h, grid_w]`` non-negative maps (or one map, or a RolloutMaps).
        masks: object masks, one for all images or one per image, at grid resolution
            (``[grid_h, grid_w]``, values in [0, 1]) or at input resolution (``[height, width]``,
            brought to the grid by :func:`grid_mask`; needs ``layout``, taken from a RolloutMaps).
        layout: the token layout of the maps.

    Returns:
        ``sum(map * mask) / sum(map)`` per image; NaN for a map with no mass.
    """
    m, layout = _maps_and_layout(maps, layout)
    if (m < 0).any():
        raise ValueError("mask share needs non-negative maps.")
    g = _grid_masks(masks, m.shape[-2:], layout)
    total = m.sum(axis=(-2, -1))
    inside = (m * g).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def pointing_hit(maps, masks, layout: TokenLayout | None = None, min_cover: float = 0.5) -> np.ndarray:
    """Classic pointing game: whether the map's largest patch (first in row-major order on ties)
    has at least ``min_cover`` of its area inside the mask, ``[image]`` of bool."""
    m, layout = _maps_and_layout(maps, layout)
    g = np.broadcast_to(_grid_masks(masks, m.shape[-2:], layout), m.shape)
    flat = m.reshape(m.shape[0], -1)
    top = flat.argmax(axis=1)
    return g.reshape(m.shape[0], -1)[np.arange(m.shape[0]), top] >= min_cover


# --------------------------------------------------------------------------- deletion

def deletion_auc(fractions: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Area under confidence over removed fraction (trapezoid rule), ``[image]``."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(confidence, dtype=np.float64)
    return ((y[..., 1:] + y[..., :-1]) * 0.5 * np.diff(x)).sum(axis=-1)


@dataclass(frozen=True)
class DeletionCurve:
    """Confidence as the most-attended patches are removed.

    Attributes:
        fractions: ``[step]`` share of patches removed at each step, from 0 to 1.
        removed: ``[step]`` number of patches removed at each step.
        confidence: ``[image, step]`` softmax probability of the target class.
        auc: ``[image]`` area under ``confidence`` over ``fractions`` (trapezoid rule).
        target: ``[image]`` class whose probability is followed.
        names: one key per image.
        fill: what replaced removed patches: ``"mean"`` (the image's per-channel mean of the
            preprocessed input) or ``"zero"`` (0 in the normalised input, the dataset mean colour).
    """

    fractions: np.ndarray
    removed: np.ndarray
    confidence: np.ndarray
    auc: np.ndarray
    target: np.ndarray
    names: tuple[str, ...]
    fill: str

    def to_frame(self):
        """Tidy frame, one row per image and step: ``image, step, removed, fraction, confidence, target``."""
        import pandas as pd

        n, s = self.confidence.shape
        return pd.DataFrame({
            "image": np.repeat(np.array(self.names, dtype=object), s), "step": np.tile(np.arange(s), n),
            "removed": np.tile(self.removed, n), "fraction": np.tile(self.fractions, n),
            "confidence": self.confidence.ravel(), "target": np.repeat(self.target, s)})

    def plot(self, ax=None, **kwargs):
        """Per-image curves and their mean; returns the axes."""
        from ...plotting.rollout import plot_deletion

        return plot_deletion(self, ax=ax, **kwargs)

    def take(self, order: Sequence[int]) -> "DeletionCurve":
        """The curves of the images at positions ``order`` (in that order)."""
        o = np.asarray(order, dtype=np.int64)
        return replace(self, confidence=self.confidence[o], auc=self.auc[o], target=self.target[o],
                       names=tuple(self.names[i] for i in o))

    @classmethod
    def concat(cls, parts: Sequence["DeletionCurve"]) -> "DeletionCurve":
        """Join curves of the same steps along the image axis."""
        first = parts[0]
        return cls(fractions=first.fractions, removed=first.removed,
                   confidence=np.concatenate([p.confidence for p in parts]),
                   auc=np.concatenate([p.auc for p in parts]), target=np.concatenate([p.target for p in parts]),
                   names=tuple(n for p in parts for n in p.names), fill=first.fill)


def _pixel_patch_index(length: int, cells: int, stride: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.floor(torch.arange(length, device=device, dtype=torch.float64) / stride).long()
    inside = idx < cells
    return idx.clamp(max=cells - 1), inside


@torch.no_grad()
def deletion_curve(model: nn.Module, images: torch.Tensor, maps, *, layout: TokenLayout | None = None,
                   target_class=None, steps: int = 20, fill: str = "mean", batch_size: int = 32,
                   names: Sequence[str] | None = None) -> DeletionCurve:
    """Remove the most-attended patches in ``steps`` equal steps and follow the model's confidence.

    At step ``k`` (``0..steps``) the ``floor(k * P / steps)`` patches with the largest map values
    are removed (ties: the lower row-major index first), ``P`` the number of patches; ``steps`` is
    capped at ``P``. Removing a patch replaces its pixels in the preprocessed input by ``fill``.
    All images and steps are run as batches of ``batch_size`` inputs.

    Args:
        model: the classifier the maps were computed for (left in its mode; use eval).
        images: preprocessed inputs ``[image, 3, height, width]``.
        maps: ``[image, grid_h, grid_w]`` (numpy, tensor, or a RolloutMaps, whose names are used).
        layout: token layout at this input size (default: from the model and ``images``).
        target_class: one class for all, one per image, or None for each image's predicted class on
            the intact input.
        steps: number of removal steps.
        fill: ``"mean"`` (per-image, per-channel mean of the preprocessed input) or ``"zero"``.
        batch_size: inputs per forward pass.
        names: image keys (default: from a RolloutMaps, else the indices).
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}.")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch size must be at least 1.")
    if names is None and hasattr(maps, "names"):
        names = maps.names
    m, _ = _maps_and_layout(maps, None)
    x = images[None] if images.ndim == 3 else images
    n = x.shape[0]
    if m.shape[0] != n:
        raise ValueError(f"{m.shape[0]} maps for {n} images.")
    device = next(model.parameters()).device
    x = x.to(device)
    layout = layout or token_layout(model, tuple(x.shape[-2:]))
    gh, gw = layout.grid_size
    if m.shape[-2:] != (gh, gw):
        raise ValueError(f"maps are {m.shape[-2]} x {m.shape[-1]} but the model's grid is {gh} x {gw}.")
    if not getattr(model, "num_classes", 1):
        warnings.warn(f"{type(model).__name__} has no classifier (num_classes=0): the deletion curve "
                      "follows a softmax over its pooled features", stacklevel=2)
    p = gh * gw
    steps = min(steps, p)
    removed = np.array([math.floor(k * p / steps) for k in range(steps + 1)])
    order = torch.as_tensor(np.argsort(-m.reshape(n, p), axis=1, kind="stable"), device=device)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(p, device=device).expand(n, p))
    fill_value = x.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(x[:, :, :1, :1])
    (py, iny), (px, inx) = (_pixel_patch_index(x.shape[2], gh, layout.patch_stride[0], device),
                            _pixel_patch_index(x.shape[3], gw, layout.patch_stride[1], device))
    covered = iny[:, None] & inx[None, :]  # [height, width]: pixels that belong to some patch

    jobs = [(k, i) for k in range(steps + 1) for i in range(n)]  # (step, image)
    rows: list[torch.Tensor] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        ks = torch.as_tensor([removed[k] for k, _ in chunk], device=device)
        ii = torch.as_tensor([i for _, i in chunk], device=device)
        gone = (rank[ii] < ks[:, None]).reshape(-1, gh, gw)  # [chunk, grid_h, grid_w]
        pix = gone[:, py][:, :, px] & covered  # [chunk, height, width]
        xin = torch.where(pix[:, None], fill_value[ii], x[ii])
        rows.append(torch.softmax(model(xin).double(), dim=-1).cpu())
    allp = torch.cat(rows)  # [step * image, class]
    intact = allp[:n]
    if target_class is None:
        target = intact.argmax(dim=-1)
    elif isinstance(target_class, (int, np.integer)):
        target = torch.full((n,), int(target_class), dtype=torch.long)
    else:
        target = torch.as_tensor(np.asarray(target_class), dtype=torch.long)
    if target.numel() != n or ((target < 0) | (target >= allp.shape[1])).any():
        raise ValueError(f"target classes must be one per image, each in [0, {allp.shape[1]}).")
    probs = allp.reshape(steps + 1, n, -1).gather(2, target.expand(steps + 1, n)[..., None])[..., 0]
    confidence = probs.T.numpy()  # [image, step]
    fractions = removed / p
    return DeletionCurve(fractions=fractions, removed=removed, confidence=confidence,
                         auc=deletion_auc(fractions, confidence), target=target.numpy(),
                         names=tuple(names) if names is not None else tuple(str(i) for i in range(n)),
                         fill=fill)


def random_order_deletion(model: nn.Module, images: torch.Tensor, *, layout: TokenLayout | None = None,
                          target_class=None, steps: int = 20, fill: str = "mean", batch_size: int = 32,
                          names: Sequence[str] | None = None, seed: int = 0,
                          image_ids: Sequence[int] | None = None) -> DeletionCurve:
    """The baseline of a deletion curve: the same removal, in a random order of patches.

    Each image gets its own random order (a map of independent uniform values from a numpy
    generator seeded with ``seed``, or with ``(seed, image id)`` per image when ``image_ids`` are
    given, so that an image's order does not depend on the batch it came in; the global RNGs are
    not touched), then :func:`deletion_curve`
    runs with those maps. A map is informative when its curve falls faster than this one (a lower
    area under the curve). Arguments as :func:`deletion_curve`.
    """
    x = images[None] if images.ndim == 3 else images
    layout = layout or token_layout(model, tuple(x.shape[-2:]))
    gh, gw = layout.grid_size
    if image_ids is None:
        random_maps = np.random.default_rng(seed).random((x.shape[0], gh, gw))
    else:
        random_maps = np.stack([np.random.default_rng([seed, int(i)]).random((gh, gw)) for i in image_ids])
    return deletion_curve(model, x, random_maps, layout=layout, target_class=target_class, steps=steps, fill=fill,
                          batch_size=batch_size, names=names)

