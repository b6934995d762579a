"""Figures made for the report: rollout mask scores, and local heads with a threshold line."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..plotting import MODEL_COLORS, new_axes
from ..plotting.distance import plot_distance_by_depth

__all__ = ["plot_mask_scores", "plot_local_heads"]


def plot_mask_scores(shares: Mapping[str, np.ndarray], chance: Mapping[str, np.ndarray], ax=None):
    """One column per model: every image's share of rollout mass on its object (dots) and its median
    (bar), beside the share a map blind to the object would put there (the object's area share,
    grey diamonds). Returns the axes."""
    ax = new_axes(ax, figsize=(1.6 + 1.8 * len(shares), 3.8))
    rng = np.random.default_rng(0)  # jitter only
    for i, (name, s) in enumerate(shares.items()):
        s = np.asarray(s, dtype=float)
        c = np.asarray(chance[name], dtype=float)
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        jitter = rng.uniform(-0.12, 0.12, size=s.shape)
        ax.scatter(i - 0.15 + jitter, s, s=10, color=color, alpha=0.6, edgecolors="none",
                   label="rollout mass on the object" if i == 0 else None)
        ax.hlines(np.nanmedian(s), i - 0.35, i + 0.05, color=color, lw=2.5)
        ax.scatter(i + 0.2 + jitter, c, s=10, marker="D", color="0.55", alpha=0.6, edgecolors="none",
                   label="object's area (a blind map)" if i == 0 else None)
        ax.hlines(np.nanmedian(c), i + 0.05, i + 0.35, color="0.45", lw=2.5)
    ax.set_xticks(range(len(shares)))
    ax.set_xticklabels([n.split("/")[-1] for n in shares], fontsize=8)
    ax.set_xlim(-0.6, len(shares) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the map on the object")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_title("rollout mass on the object, per image (bars: medians)", fontsize=9)
    return ax


def plot_local_heads(results: Sequence, local_fraction: float, ax=None):
    """Mean attention distance by depth for several ViTs, with the line below which a head counts
    as local (``local_fraction`` times uniform attention's distance). Returns the axes."""
    ax = plot_distance_by_depth(results, ax=ax)
    for u in sorted({round(r.uniform, 6) for r in results}):
        ax.axhline(local_fraction * u, color="#D55E00", ls="-.", lw=1)
        ax.annotate(f"local heads below {local_fraction:g} x uniform = {local_fraction * u:.1f}",
                    xy=(0, local_fraction * u), xycoords=("axes fraction", "data"), xytext=(4, -10),
                    textcoords="offset points", fontsize=7, color="#D55E00")
    return ax
