"""Figures made for the report: rollout mask scores, local heads with a threshold line, and the
contact sheets' class labels."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..plotting import MODEL_COLORS, new_axes
from ..plotting.distance import legend_below, plot_distance_by_depth

__all__ = ["plot_mask_scores", "plot_local_heads", "sheet_labels"]


def plot_mask_scores(shares: Mapping[str, np.ndarray], chance: Mapping[str, np.ndarray], ax=None):
    """One column per model: every image's share of rollout mass on its object (dots) and their mean
    (bar), beside the share a map blind to the object would put there (the object's area share,
    grey diamonds, and their mean). Returns the axes."""
    ax = new_axes(ax, figsize=(1.6 + 1.8 * len(shares), 3.8))
    rng = np.random.default_rng(0)  # jitter only
    for i, (name, s) in enumerate(shares.items()):
        s = np.asarray(s, dtype=float)
        c = np.asarray(chance[name], dtype=float)
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        jitter = rng.uniform(-0.12, 0.12, size=s.shape)
        ax.scatter(i - 0.15 + jitter, s, s=10, color=color, alpha=0.6, edgecolors="none",
                   label="rollout mass on the object" if i == 0 else None)
        ax.hlines(np.nanmean(s), i - 0.35, i + 0.05, color=color, lw=2.5)
        ax.scatter(i + 0.2 + jitter, c, s=10, marker="D", color="0.55", alpha=0.6, edgecolors="none",
                   label="object's area (a blind map)" if i == 0 else None)
        ax.hlines(np.nanmean(c), i + 0.05, i + 0.35, color="0.45", lw=2.5)
    ax.set_xticks(range(len(shares)))
    ax.set_xticklabels([n.split("/")[-1] for n in shares], fontsize=8)
    ax.set_xlim(-0.6, len(shares) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the map on the object")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", frameon=False)
    ax.set_title("rollout mass on the object, per image (bars: means)", fontsize=9)
    return ax


def plot_local_heads(results: Sequence, local_fraction: float, ax=None):
    """Mean attention distance by depth for several ViTs, with the line below which a head counts
    as local (``local_fraction`` times uniform attention's distance). Returns the axes."""
    ax = plot_distance_by_depth(results, ax=ax)
    for u in sorted({round(r.uniform, 6) for r in results}):
        ax.axhline(local_fraction * u, color="#D55E00", ls="-.", lw=1,
                   label=f"local heads below {local_fraction:g} x uniform = {local_fraction * u:.1f}")
    legend_below(ax, markerscale=1.5)  # the legend again, with the threshold line in it
    lo, hi = ax.get_ylim()  # the range shows the data; widen it to show the local-head line too
    ax.set_ylim(min(lo, 0.9 * local_fraction * min(r.uniform for r in results)), hi)
    return ax


def sheet_labels(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """One line per image: its true class (when known) and the model's predicted class, by the
    model's label names where it has them, else by class index."""
    def cls(i) -> str:
        return names[int(i)] if 0 <= int(i) < len(names) else f"class {int(i)}"

    out = []
    for _, row in frame.iterrows():
        pred = "" if row.get("predicted") is None or pd.isna(row.get("predicted")) else f"predicted {cls(row['predicted'])}"
        true = row.get("label")
        true = "" if true is None or pd.isna(true) else f"true {cls(true)}"
        out.append(" / ".join(s for s in (true, pred) if s))
    return out


def plot_sweep_runs(runs, ax=None):
    """The data-size sweep (one row per run): the lower layers' mean attention distance and the most
    local head against distinct training images (log x), one colour per patch grid, with uniform
    attention's distance and the local-head threshold. Returns the axes."""
    ax = new_axes(ax, figsize=(6.5, 4.3))
    for k, (grid, g) in enumerate(runs.groupby("grid", sort=True)):
        g = g.sort_values("distinct_images")
        c = MODEL_COLORS[k % len(MODEL_COLORS)]
        label = f"{grid} x {grid} grid, {int(g.steps.iloc[0])} steps"
        ax.plot(g.distinct_images, g.mean_distance_lower_px, color=c, marker="o", label=f"{label}: lower layers' mean")
        ax.plot(g.distinct_images, g.min_distance_px, color=c, marker="v", ls=":", label=f"{label}: most local head")
        ax.axhline(float(g.uniform_px.iloc[0]), color=c, ls="-.", lw=0.8)
        ax.axhline(float(g.local_threshold_px.iloc[0]), color=c, ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("distinct training images")
    ax.set_ylabel("attention distance (px, held-out images)")
    ax.set_ylim(0, 1.1 * float(runs.uniform_px.max()))
    ax.set_title("Data-size sweep: dash-dot = uniform attention, dashed = local-head threshold", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return ax
