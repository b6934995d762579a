"""Figures for windowed mean attention distance (Swin, Swin-V2, SAM's encoder): depth across all
stages, stage boundaries marked, and each block's uniform-attention reference drawn."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes
from .distance import legend_below, plot_distance_by_depth

__all__ = ["plot_windowed_distance", "windowed_distance_figure", "is_windowed"]

_UNIT_LABEL = {"px": "pixels", "patches": "steps of the block's feature map", "fraction": "fraction of image side"}


def is_windowed(result) -> bool:
    """Whether a distance result is per window and stage (it carries ``stage`` and ``uniform_by_layer``)."""
    return hasattr(result, "uniform_by_layer") and hasattr(result, "stage")


def plot_windowed_distance(result, ax=None, *, color: str | None = None, show_mean: bool = True,
                           reference: bool = True, label: str | None = None):
    """x = attention block in forward order across all stages (1-based), y = mean attention distance;
    one dot per head. Dotted vertical lines separate stages; the dashed step line is each block's
    reference, uniform attention over the keys its own mask allows (one window; the query's shift
    region in a shifted block; the whole map in a global block).
    Returns the axes."""
    ax = new_axes(ax, figsize=(7.0, 4.2))
    color = color or MODEL_COLORS[0]
    L = result.num_layers
    x = np.arange(1, L + 1)
    for layer in range(L):
        h = int(result.heads[layer])
        ax.scatter(np.full(h, layer + 1), result.distance[layer, :h], s=16, color=color, alpha=0.8,
                   edgecolors="none", label=(label or f"{result.model} ({result.n_images} images)")
                   if layer == 0 else None)
    if show_mean:
        with np.errstate(all="ignore"):
            ax.plot(x, np.nanmean(result.distance, axis=1), color=color, lw=1, alpha=0.6)
    top = float(np.nanmax(result.distance)) if np.isfinite(result.distance).any() else 1.0
    if reference:
        u = np.asarray(result.uniform_by_layer, dtype=float)
        ax.step(np.concatenate([[0.5], x + 0.5]), np.concatenate([u[:1], u]), where="pre", color="0.4",
                ls="--", lw=1, label="uniform attention over the keys each block's mask allows")
        top = max(top, float(np.nanmax(u)))
    stages = np.asarray(result.stage)
    for boundary in np.flatnonzero(np.diff(stages)) + 1:
        ax.axvline(boundary + 0.5, color="0.6", ls=":", lw=1)
    for s in np.unique(stages):
        idx = np.flatnonzero(stages == s)
        g = result.layout[int(idx[0])]
        ax.annotate(f"stage {int(s) + 1}\n{g.grid_size[0]}x{g.grid_size[1]}, {g.stride[0]:g} px",
                    xy=((idx[0] + idx[-1]) / 2 + 1, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -3), textcoords="offset points", ha="center", va="top", fontsize=7, color="0.3")
    ax.set_xlabel("network depth (attention block, all stages)")
    ax.set_ylabel(f"mean attention distance ({_UNIT_LABEL.get(result.units, result.units)})")
    ax.set_xticks(range(1, L + 1, max(1, L // 12)))
    ax.set_xlim(0.4, L + 0.6)
    ax.set_ylim(0, 1.25 * top)
    ax.grid(alpha=0.3, axis="y")
    legend_below(ax, markerscale=1.5)
    return ax


def windowed_distance_figure(results: Sequence):
    """One panel per model: windowed results by block across stages, global ViT results with the
    ViT paper's plot. Returns the figure."""
    import matplotlib.pyplot as plt


    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(6.6 * n, 5.0), squeeze=False)
    for i, (ax, r) in enumerate(zip(axes[0], results)):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        if is_windowed(r):
            plot_windowed_distance(r, ax=ax, color=color)
        else:
            plot_distance_by_depth([r], ax=ax)
        ax.set_title(f"{r.model}: mean attention distance by depth" if r.model else "mean attention distance",
                     fontsize=9)
    fig.text(0.01, 0.005, "windowed blocks: distances in each block's un-shifted feature map, shift-mask pairs and "
             "padding not counted\none dot per head, averaged over images; dashed: uniform attention over one "
             "window; dotted: stage boundaries", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
