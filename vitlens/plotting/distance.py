"""Figures for mean attention distance: the ViT paper's Fig. 7 (right) and Raghu et al.'s per-head view."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_distance_by_depth", "plot_sorted_heads", "distance_figure", "legend_below"]

_UNIT_LABEL = {"px": "pixels", "patches": "patches", "fraction": "fraction of image side"}


def _limits(results) -> tuple[float, float]:
    """A y range that spans the data and the uniform-attention line, with a margin, rather than
    starting at 0: heads that differ by a few pixels stay apart."""
    vals = [v for r in results if r.distance.size for v in (np.nanmin(r.distance), np.nanmax(r.distance), r.uniform)]
    vals = [float(v) for v in vals if np.isfinite(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) if hi > lo else max(0.5, 0.1 * abs(hi))
    return max(0.0, lo - pad), hi + pad


def _images(r) -> str:
    return f"{r.n_images} image" + ("" if r.n_images == 1 else "s")


def plot_distance_by_depth(results: Sequence, ax=None, *, reference: bool = True, show_mean: bool = True):
    """x = network depth (layer, 1-based), y = mean attention distance; one dot per head.

    Several results (models) share the axes, each in its own colour, slightly offset; the dashed
    line is uniform attention over all patches, the distance a head that looks everywhere has. The
    legend (models, and the dashed line's value) sits under the axes, never over a head.
    """
    ax = new_axes(ax, figsize=(6.0, 4.2))
    n = len(results)
    for i, r in enumerate(results):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        L, H = r.distance.shape
        offset = (i - (n - 1) / 2) * min(0.25, 0.6 / max(n, 1))
        x = np.repeat(np.arange(1, L + 1), H) + offset
        ax.scatter(x, r.distance.ravel(), s=16, color=color, alpha=0.8, edgecolors="none",
                   label=f"{r.model} ({_images(r)})" if r.model else _images(r))
        if show_mean:
            ax.plot(np.arange(1, L + 1) + offset, np.nanmean(r.distance, axis=1), color=color, lw=1, alpha=0.6)
    units = results[0].units if results else "px"
    if reference:
        for u in sorted({round(r.uniform, 2) for r in results}):
            ax.axhline(u, color="0.4", ls="--", lw=1, label=f"uniform attention over all patches: {u:g}"
                       f"{ {'px': ' px', 'patches': ' patches'}.get(units, '')}")
    L = max(r.num_layers for r in results) if results else 1
    ax.set_xlabel("network depth (layer, from 1)")
    ax.set_ylabel(f"mean attention distance ({_UNIT_LABEL.get(units, units)})")
    ax.set_xticks(range(1, L + 1, max(1, L // 12)))
    ax.set_xlim(0.4, L + 0.6)
    ax.set_ylim(*_limits(results))
    ax.grid(alpha=0.3)
    legend_below(ax, markerscale=1.5)
    return ax


def legend_below(ax, ncol: int = 1, **kwargs) -> None:
    """The legend under the axes (below the x label), where it cannot hide a data point."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), frameon=False, ncol=ncol,
              borderaxespad=0, **kwargs)


def plot_sorted_heads(result, ax=None, *, layers: Sequence[int] | None = None):
    """Raghu et al. style: each selected layer's heads sorted by distance (default: the two
    lowest and the two highest layers); x counts the sorted heads from 1, the most local first.
    Returns the axes."""
    import matplotlib.pyplot as plt

    ax = new_axes(ax, figsize=(5.0, 4.2))
    L, H = result.distance.shape
    if layers is None:
        layers = sorted({0, min(1, L - 1), max(L - 2, 0), L - 1})
    low = plt.get_cmap("Blues")
    high = plt.get_cmap("Reds")
    for k, layer in enumerate(layers):
        cmap = low if layer < L / 2 else high
        shade = 0.55 + 0.35 * (k % 2)
        vals = np.sort(result.distance[layer])
        ax.plot(np.arange(1, H + 1), vals, marker="o", ms=4, lw=1, color=cmap(shade), label=f"layer {layer + 1}")
    ax.axhline(result.uniform, color="0.4", ls="--", lw=1, label="uniform attention")
    ax.set_xlabel("heads sorted by distance (1 = most local)")
    ax.set_ylabel(f"mean attention distance ({_UNIT_LABEL.get(result.units, result.units)})")
    ax.set_title(result.model or "", fontsize=9)
    ax.set_ylim(*_limits([result]))
    ax.set_xticks(range(1, H + 1, max(1, H // 12)))
    ax.set_xlim(0.5, H + 0.5)
    ax.grid(alpha=0.3)
    legend_below(ax, ncol=min(3, len(layers) + 1))
    return ax


def distance_figure(results: Sequence):
    """The full figure: the paper's plot for all models, then one sorted-heads panel per model."""
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, 1 + n, figsize=(6.2 + 4.3 * n, 5.0),
                             gridspec_kw={"width_ratios": [1.45] + [1] * n})
    axes = np.atleast_1d(axes)
    plot_distance_by_depth(results, ax=axes[0])
    axes[0].set_title("mean attention distance by depth", fontsize=10)
    for ax, r in zip(axes[1:], results):
        plot_sorted_heads(r, ax=ax)
        ax.set_title(f"{r.model}: lowest and highest layers" if r.model else "lowest and highest layers",
                     fontsize=9)
    prefix = results[0].prefix_tokens if results else ""
    fig.text(0.01, 0.005, f"prefix tokens: {prefix}; one dot per head, averaged over images; "
             "dashed: uniform attention over all patches", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
