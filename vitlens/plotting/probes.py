"""Few-shot linear-probe accuracy against depth (Raghu et al. 2021, Figs. 11 and 13).

One panel per model, ViT beside CNN as given; in each, one line per representation (class token,
patch-token mean, single tokens) against normalised depth, a band of one standard deviation over
the repeated shot draws around it, and chance (``1 / classes``) as a dashed line. Layers count from
1 in the titles; the axis is the depth fraction (0 first layer, 1 last).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import new_axes

__all__ = ["plot_probes", "probes_figure", "REPRESENTATION_STYLE"]

#: colour, marker and legend label of each representation.
REPRESENTATION_STYLE = {
    "cls": ("#0072B2", "o", "cls: class token"),
    "gap": ("#D55E00", "s", "gap: patch-token mean"),
    "token": ("#009E73", "^", "token: each alone, mean"),
}


_MAP_LABELS = {"gap": "gap: spatial mean", "token": "token: each position alone, mean"}


def plot_probes(result, ax=None, *, band: bool = True, chance: bool = True, legend: bool = True,
                title: bool = True):
    """Accuracy ``[layer, representation]`` against ``depth_fraction``.

    Args:
        result: a :class:`~vitlens.analyses.representations.probes.ProbeResult`.
        band: shade mean +- one standard deviation over repeats (none with one repeat).
        chance: a dashed line at ``1 / n_classes``.

    Returns:
        The axes.
    """
    ax = new_axes(ax, figsize=(5.0, 3.8))
    x = np.asarray(result.depth_fraction, dtype=float)
    for j, rep in enumerate(result.representations):
        color, marker, label = REPRESENTATION_STYLE.get(rep, ("#000000", "o", rep))
        if result.kind != "vit" or (rep != "cls" and result.conventions.get("feature_maps")):
            label = _MAP_LABELS.get(rep, label)
        if rep == "token" and len(result.n_tokens_probed) and result.n_tokens_probed.max() < result.n_positions.max():
            label += f", {int(result.n_tokens_probed.max())} sampled"
        m, s = np.asarray(result.accuracy[:, j], float), np.asarray(result.accuracy_std[:, j], float)
        ax.plot(x, m, marker=marker, ms=4, lw=1.5, color=color, label=label)
        if band and np.isfinite(s).any():
            ax.fill_between(x, np.clip(m - s, 0, 1), np.clip(m + s, 0, 1), color=color, alpha=0.18, lw=0)
    if chance:
        ax.axhline(result.chance, color="0.35", ls="--", lw=1, label=f"chance 1/{result.n_classes}")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("network depth (0 = first layer, 1 = last)")
    ax.set_ylabel(f"{result.shots}-shot linear probe accuracy")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(f"{result.model} ({result.kind.upper()}, {len(result.layers)} layers)\n"
                     f"{result.n_classes} classes, {result.n_test} test images, {result.repeats} draws",
                     fontsize=8)
    if legend:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # never on a curve
    return ax


def probes_figure(results: Sequence):
    """One :func:`plot_probes` panel per result, side by side, sharing the accuracy axis.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("probes_figure needs at least one result")
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4.5), squeeze=False, sharey=True)
    for i, (ax, r) in enumerate(zip(axes[0], results)):
        plot_probes(r, ax=ax)
        if i:
            ax.set_ylabel("")
    shots = sorted({r.shots for r in results})
    fig.suptitle(f"few-shot linear probes per layer ({'/'.join(map(str, shots))} shots per class, "
                 "closed-form least squares), band: std over shot draws", fontsize=9)
    fig.tight_layout()
    return fig
