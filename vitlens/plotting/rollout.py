"""Rollout figures: one map over its image, a contact sheet of many, and a deletion curve.

Maps are drawn on the input's pixel grid: patch ``(i, j)`` spans ``[j * sx, (j + 1) * sx)``
horizontally and ``[i * sy, (i + 1) * sy)`` vertically, and matplotlib upsamples the grid to the
screen (``interpolation``: ``"bilinear"`` by default, ``"nearest"`` to see the patches). Each map's
colour scale runs from its own minimum to its own maximum (``scale="minmax"``, the default: rollout
maps are often flat, and what an overlay shows is where a map is high relative to elsewhere) or from
0 to its maximum (``scale="max"``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["to_display", "plot_overlay", "contact_sheet_figure", "plot_deletion", "SCALES"]


def to_display(x, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the model's normalisation: ``[..., 3, height, width]`` -> ``[..., height, width, 3]`` in [0, 1]."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = a * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(np.moveaxis(a, -3, -1), 0.0, 1.0)


SCALES = ("minmax", "max")


def _limits(m: np.ndarray, scale: str) -> tuple[float, float]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}.")
    lo = float(m.min()) if scale == "minmax" else 0.0
    hi = float(m.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def plot_overlay(rmap: np.ndarray, image: np.ndarray | None = None, *, layout, ax=None, alpha: float = 0.8,
                 cmap: str = "inferno", interpolation: str = "bilinear", scale: str = "minmax",
                 title: str | None = None, colorbar: bool = True):
    """Draw one ``[grid_h, grid_w]`` map over ``image`` (``[height, width, 3]`` in [0, 1]).

    Over an image the map's opacity is ``alpha * (0.25 + 0.75 * v)``, ``v`` the value's place in the
    colour scale (0 to 1): low values let the image show through, the top covers it at ``alpha``.

    Returns:
        The axes.
    """
    ax = new_axes(ax, figsize=(3.6, 3.2))
    h, w = layout.input_size
    gh, gw = layout.grid_size
    sy, sx = layout.patch_stride
    m = np.asarray(rmap, dtype=np.float64)
    lo, hi = _limits(m, scale)
    if image is not None:
        ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
        # opacity grows with the value, so the image stays visible where the map is low
        opacity = (0.25 + 0.75 * np.clip((m - lo) / (hi - lo), 0.0, 1.0)) * alpha
    else:
        opacity = None
    im = ax.imshow(m, extent=(0, gw * sx, gh * sy, 0), cmap=cmap, vmin=lo, vmax=hi, alpha=opacity,
                   interpolation=interpolation)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    return ax


def contact_sheet_figure(result, images: Sequence[np.ndarray] | None = None, *, indices: Sequence[int] | None = None,
                       ncols: int | None = None, tile: float = 1.9, alpha: float = 0.8, cmap: str = "inferno",
                       interpolation: str = "bilinear", scale: str = "minmax", title: str | None = None,
                       labels: Sequence[str] | None = None, colorbar: bool = True):
    """All overlays of a :class:`~vitlens.analyses.attention.rollout.RolloutMaps` on one figure.

    Args:
        result: the maps.
        images: display images ``[height, width, 3]`` in [0, 1], one per drawn map (same order).
        indices: which maps to draw (default: all).
        ncols: tiles per row (default: about square).
        labels: one line per drawn map under its name (the true and predicted class, for example).
        colorbar: one colour bar for the sheet, from each map's low end (0) to its high end (1).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    idx = list(range(len(result.names))) if indices is None else list(indices)
    if images is not None and len(images) != len(idx):
        raise ValueError(f"{len(images)} images for {len(idx)} maps.")
    n = max(len(idx), 1)
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    width = max(8, int(tile * 72 / (_TITLE_SIZE * 0.62)))  # characters that fit over one tile
    split = labels is not None and any(len(str(t)) > width for t in labels)  # then every label alike
    titles = []
    for k, i in enumerate(idx):
        label = result.names[i]
        if len(label) > width:
            label = "..." + label[-(width - 3):]
        if labels is not None:
            label += "\n" + _fit(str(labels[k]), width, split)
        elif result.target is not None and result.method != "rollout":
            label += f"\nclass {int(result.target[i])}"
        titles.append(label)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols, (tile + 0.05 + 0.14 * lines) * nrows + 0.4),
                             squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.ravel()):
        if k >= len(idx):
            ax.axis("off")
            continue
        i = idx[k]
        plot_overlay(result.maps[i], None if images is None else images[k], layout=result.layout, ax=ax,
                     alpha=alpha, cmap=cmap, interpolation=interpolation, scale=scale, title=titles[k],
                     colorbar=False)
        ax.title.set_fontsize(_TITLE_SIZE)
    span = "its min to its max" if scale == "minmax" else "0 to its max"
    if colorbar and idx:
        import matplotlib as mpl

        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap=cmap)
        cb = fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        cb.set_label(f"each map from {span} (0 to 1)", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    fig.suptitle(title or f"{result.model}: {result.method}, {len(idx)} images (colour: each map from {span})",
                 fontsize=9)
    return fig


_TITLE_SIZE = 7


def _fit(text: str, width: int, split: bool = False) -> str:
    """``text`` in lines of at most ``width`` characters, broken first at " / " (between the true
    and the predicted class; always, with ``split``), then at spaces."""
    import textwrap

    if len(text) <= width and not split:
        return text
    return "\n".join(line for part in text.split(" / ") for line in textwrap.wrap(part, width) or [""])


def plot_deletion(curve, ax=None, max_lines: int = 50, baseline=None):
    """Confidence against the fraction of patches removed: thin lines per image (up to
    ``max_lines``), the mean in bold with its area under the curve, and, with ``baseline`` (a
    :func:`~vitlens.analyses.attention.scores.random_order_deletion` curve), the mean of removing patches in a random
    order, dashed grey. Returns the axes."""
    ax = new_axes(ax, figsize=(4.5, 3.4))
    x = curve.fractions
    for row in curve.confidence[:max_lines]:
        ax.plot(x, row, color=MODEL_COLORS[0], alpha=0.25, linewidth=0.8)
    mean = curve.confidence.mean(axis=0)
    ax.plot(x, mean, color=MODEL_COLORS[1], linewidth=2.0,
            label=f"map order, mean of {len(curve.names)} (mean AUC {float(curve.auc.mean()):.3f})")
    if baseline is not None:
        ax.plot(baseline.fractions, baseline.confidence.mean(axis=0), color="0.35", ls="--", linewidth=1.8,
                label=f"random order, mean of {len(baseline.names)} (mean AUC {float(baseline.auc.mean()):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.set_xlabel("fraction of patches removed (most attended first)")
    ax.set_ylabel("probability of target class")
    ax.set_title(f"deletion curve (fill: {curve.fill}); lower area: a more telling map", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return ax
