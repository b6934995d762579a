"""Distance against entropy per head: a local head (short distance, high entropy within its
neighbourhood) and a head focused on one far token (long distance, low entropy) lie apart here,
though their distances alone may be alike."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_distance_entropy", "distance_entropy_figure"]

_UNIT_LABEL = {"px": "pixels", "patches": "patches", "fraction": "fraction of image side"}


def plot_distance_entropy(result, ax=None, *, color_by: str = "depth", cmap: str = "viridis"):
    """x = mean attention distance, y = normalised entropy (1 = uniform); one dot per head,
    coloured by depth (layer, from 1), or ``color_by="prefix_share"`` by the share of attention on
    prefix tokens. Returns the axes."""
    import matplotlib.pyplot as plt

    ax = new_axes(ax, figsize=(5.4, 4.2))
    if result.entropy is None:
        raise ValueError("this result has no entropy (computed by attention_distance since the chunked path)")
    L, H = result.distance.shape
    d, e = result.distance.ravel(), result.entropy.ravel()
    if color_by == "prefix_share" and result.prefix_share is not None:
        c, label, vmin, vmax = result.prefix_share.ravel(), "share of attention on prefix tokens", 0.0, 1.0
    else:
        c, label, vmin, vmax = np.repeat(np.arange(1, L + 1), H).astype(float), "layer (from 1)", 1, max(L, 2)
    keep = np.isfinite(d) & np.isfinite(e)
    sc = ax.scatter(d[keep], e[keep], c=c[keep], cmap=cmap, vmin=vmin, vmax=vmax, s=18, alpha=0.85,
                    edgecolors="none")
    plt.colorbar(sc, ax=ax, label=label, fraction=0.05, pad=0.02)
    ref = getattr(result, "uniform", None)
    if ref is not None and np.isfinite(ref) and not hasattr(result, "uniform_by_layer"):
        ax.axvline(ref, color="0.4", ls="--", lw=1)
        ax.annotate(f"uniform: {ref:g}", xy=(ref, 0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                    textcoords="offset points", fontsize=8, color="0.3")
    ax.set_xlabel(f"mean attention distance ({_UNIT_LABEL.get(result.units, result.units)})")
    ax.set_ylabel("attention entropy / log N (1 = uniform)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(result.model or "", fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def distance_entropy_figure(results: Sequence):
    """One distance-against-entropy panel per model (coloured by depth), and, for models with prefix
    tokens, a second row coloured by the share of attention on them."""
    import matplotlib.pyplot as plt

    results = [r for r in results if getattr(r, "entropy", None) is not None]
    n = max(len(results), 1)
    prefix = any(r.prefix_share is not None and np.nanmax(np.nan_to_num(r.prefix_share)) > 0 for r in results)
    rows = 2 if prefix else 1
    fig, axes = plt.subplots(rows, n, figsize=(5.6 * n, 4.3 * rows), squeeze=False)
    for j, r in enumerate(results):
        plot_distance_entropy(r, ax=axes[0, j])
        if prefix:
            plot_distance_entropy(r, ax=axes[1, j], color_by="prefix_share", cmap="magma")
    fig.text(0.01, 0.005, "one dot per head, averaged over patch queries and images; entropy over all keys "
             "(a window's counted keys for windowed blocks) divided by log N", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
