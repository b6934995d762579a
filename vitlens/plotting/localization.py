"""Spatial localisation heatmaps laid out like Raghu et al. 2021, Fig. 9: for a few tokens of one
block, the CKA with the input patch at every grid position, one row per model, four panels
(tokens (0, 0), (2, 1), (4, 2), (4, 4) of a 7 x 7 grid, scaled), one shared colour scale. The
token's own position is outlined. Grid positions are (row, column) from 0, as in the paper.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import new_axes

__all__ = ["plot_localization", "localization_figure", "CMAP"]

CMAP = "magma"


def _limits(results) -> tuple[float, float]:
    vals = np.concatenate([np.asarray(r.cka, dtype=np.float64).ravel() for r in results])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    return min(0.0, float(vals.min())), max(float(vals.max()), 1e-6)


def plot_localization(result, ax=None, *, token: tuple[int, int] | None = None, vmin: float | None = None,
                      vmax: float | None = None, colorbar: bool = True, title: bool = True):
    """CKA of ``token`` (row, column; default the panel's first) with every input patch. Returns the axes."""
    from matplotlib.patches import Rectangle

    i, j = token if token is not None else result.panel[0]
    lo, hi = _limits([result])
    ax = new_axes(ax, figsize=(3.4, 3.0))
    im = ax.imshow(np.asarray(result.cka[i, j], dtype=np.float64), cmap=CMAP, interpolation="nearest",
                   vmin=lo if vmin is None else vmin, vmax=hi if vmax is None else vmax)
    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#00E0FF", linewidth=1.6))
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="CKA", fraction=0.046)
    if title:
        ax.set_title(f"token ({i}, {j})", fontsize=8)
    return ax


def localization_figure(results: Sequence):
    """Fig. 9: one row per model, one panel per token of its panel, a shared colour scale and bar.
    Returns the figure."""
    import matplotlib.pyplot as plt

    results = list(results)
    ncol = max(len(r.panel) for r in results)
    lo, hi = _limits(results)
    fig, axes = plt.subplots(len(results), ncol, figsize=(2.4 * ncol + 1.2, 2.5 * len(results) + 0.4), squeeze=False)
    im = None
    for row, r in zip(axes, results):
        for c, ax in enumerate(row):
            if c >= len(r.panel):
                ax.axis("off")
                continue
            plot_localization(r, ax=ax, token=r.panel[c], vmin=lo, vmax=hi, colorbar=False)
            im = ax.images[-1]
        row[0].set_ylabel(f"{r.model}\n{r.layer}\nown patch best: {100 * r.own_patch_share:.0f}%", fontsize=7)
    fig.suptitle("CKA between a token and every input patch (outlined: the token's own position)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 0.96))
    if im is not None:
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
        fig.colorbar(im, cax=cax, label="CKA")
    return fig
