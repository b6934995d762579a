"""Figures for the RGB embedding filters (ViT paper, Fig. 7 left): component tiles and a scree plot.

Tiles: each principal component ``[3, patch_h, patch_w]`` is drawn as an RGB image. One shared
normalisation: every value ``v`` is shown as ``0.5 + 0.5 * v / m``, with ``m`` the largest
``|v|`` over all components shown in the figure (every model), so grey is zero and the
brightest and darkest pixels of the figure are ``+m`` and ``-m``. The figure title says so.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_filters", "plot_scree", "filters_figure", "shared_scale", "NORMALISATION"]

NORMALISATION = "each colour value v shown as 0.5 + 0.5 v / m, m = max |v| over all components shown (grey = 0)"


def shared_scale(results: Sequence, max_components: int = 28) -> float:
    """``m``: the largest absolute value over the first ``max_components`` components of every result."""
    m = max((float(np.abs(r.components[:max_components]).max()) for r in results), default=0.0)
    return m if m > 0 else 1.0


def _mosaic(components: np.ndarray, cols: int, gap: int) -> np.ndarray:
    """RGBA mosaic ``[rows * (p_h + gap), cols * (p_w + gap), 4]`` of ``components`` ``[k, 3, p_h, p_w]``
    already mapped to [0, 1]; gaps are transparent."""
    k, _, ph, pw = components.shape
    rows = math.ceil(k / cols)
    img = np.zeros((rows * (ph + gap) - gap, cols * (pw + gap) - gap, 4))
    for i in range(k):
        y, x = (i // cols) * (ph + gap), (i % cols) * (pw + gap)
        img[y:y + ph, x:x + pw, :3] = components[i].transpose(1, 2, 0)
        img[y:y + ph, x:x + pw, 3] = 1.0
    return img


def plot_filters(result, ax=None, *, max_components: int = 28, cols: int = 7, scale: float | None = None,
                 gap: int = 1, title: bool = True):
    """The first ``max_components`` principal components as RGB tiles, PC1 at the top left, in rows.

    Args:
        result: an :class:`~vitlens.analyses.embeddings.filters.EmbeddingFilters`.
        max_components: components to draw (the paper shows 28).
        cols: tiles per row.
        scale: ``m`` of the shared normalisation (default: :func:`shared_scale` of this result).
        gap: transparent pixels between tiles.
        title: name the model and the variance the tiles explain.

    Returns:
        The axes.
    """
    shown = result.components[:max_components]                  # [component, 3, patch_h, patch_w]
    m = scale if scale is not None else shared_scale([result], max_components)
    tiles = np.clip(0.5 + 0.5 * shown / m, 0.0, 1.0)
    cols = max(1, min(cols, len(shown)))
    ax = new_axes(ax, figsize=(1.0 * cols, 1.0 * math.ceil(len(shown) / cols) + 0.6))
    ax.imshow(_mosaic(tiles, cols, gap), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        share = float(result.explained_variance_ratio[:len(shown)].sum())
        ph, pw = result.patch_size
        ax.set_title(f"{result.model}\nPC1-{len(shown)} of {result.filters_shape[0]} filters "
                     f"({ph} x {pw} px), {100 * share:.0f}% of variance", fontsize=8)
    return ax


def plot_scree(results: Sequence, ax=None, *, max_components: int = 28, cumulative: bool = True):
    """Explained variance ratio per component (bars for one model, lines for several), with the
    cumulative share as a dashed line.

    Returns:
        The axes.
    """
    ax = new_axes(ax, figsize=(6.0, 3.6))
    one = len(results) == 1
    for i, r in enumerate(results):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        ratio = np.asarray(r.explained_variance_ratio[:max_components])
        xs = np.arange(1, len(ratio) + 1)
        if one:
            ax.bar(xs, ratio, color=color, alpha=0.8, label=f"{r.model}: per component")
        else:
            ax.plot(xs, ratio, marker="o", ms=3, color=color, label=r.model)
        if cumulative:
            ax.plot(xs, np.cumsum(ratio), ls="--", color=color, lw=1,
                    label=f"{r.model}: cumulative" if one else None)
    ax.set_xlabel("principal component (from 1)")
    ax.set_ylabel("explained variance ratio" + (" (dashed: cumulative)" if cumulative else ""))
    ax.set_ylim(0, 1.02 if cumulative else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


def filters_figure(results: Sequence, *, max_components: int = 28, cols: int = 7):
    """One tile panel per model, side by side, all on one shared normalisation (stated in the title).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("filters_figure needs at least one result")
    m = shared_scale(results, max_components)
    k = max(min(max_components, r.n_components) for r in results)
    rows = math.ceil(k / max(1, min(cols, k)))
    fig, axes = plt.subplots(1, len(results), figsize=(max(3.0, 0.8 * min(cols, k)) * len(results), 0.8 * rows + 1.2),
                             squeeze=False)
    for ax, r in zip(axes[0], results):
        plot_filters(r, ax=ax, max_components=max_components, cols=cols, scale=m)
    fig.suptitle(f"RGB embedding filters, first principal components\n{NORMALISATION}; m = {m:.3g}",
                 fontsize=8)
    fig.tight_layout()
    return fig
