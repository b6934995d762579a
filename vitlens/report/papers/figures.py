"""One figure file per paper figure: the panels side by side, each drawn by its analysis's plot.

Panels draw through :mod:`vitlens.plotting` (and a result's own ``.plot(ax=)`` for analyses added
later); a panel whose analysis did not run is a blank box that says what it waits for.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from ...plotting import MODEL_COLORS
from ...presets import PaperFigure
from .analyses import PanelRun

__all__ = ["paper_figure", "plot_entropy_by_depth", "WHOLE_FIGURES"]

#: Analyses whose plotting module draws the paper's whole figure, by ``module:function`` under
#: :mod:`vitlens.plotting`; a figure of one such panel is drawn by it (by a panel per result when the
#: module is not part of this installation).
WHOLE_FIGURES = {"skip_ratios": "skip:skip_figure", "spatial_localization": "localization:localization_figure"}


def _slots(run: PanelRun) -> int:
    """How many axes a panel takes."""
    if run.pending or not run.results:
        return 1
    a = run.panel.analysis
    if a == "attention_distance" and run.panel.option("sorted"):
        return len(run.results)
    if a in ("embedding_filters", "position_embedding_similarity", "layer_cka"):
        return len(run.results)
    if a in ("attention_distance", "attention_entropy", "effective_receptive_field"):
        return 1
    return len(run.results)


def plot_entropy_by_depth(results: Sequence, ax=None):
    """Mean normalised attention entropy per layer (line) and every head (dots), one colour per
    model; 1 is uniform attention, 0 attention on a single key. Returns the axes."""
    from ...plotting import new_axes

    ax = new_axes(ax)
    for i, r in enumerate(results):
        e = np.asarray(r.entropy)
        L, H = e.shape
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        ax.scatter(np.repeat(np.arange(1, L + 1), H), e.ravel(), s=10, color=color, alpha=0.5, edgecolors="none")
        ax.plot(np.arange(1, L + 1), np.nanmean(e, axis=1), color=color, lw=1.5, label=r.model)
    ax.set_xlabel("network depth (layer, from 1)")
    ax.set_ylabel("normalised attention entropy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax


def _draw(run: PanelRun, axes) -> None:
    from ...plotting.cka import plot_cka
    from ...plotting.distance import plot_distance_by_depth, plot_sorted_heads
    from ...plotting.filters import plot_filters
    from ...plotting.posembed import position_embedding_figure
    from ...plotting.receptive_field import plot_spread

    a = run.panel.analysis
    if run.pending:
        ax = axes[0]
        ax.set_axis_off()
        ax.text(0.5, 0.5, textwrap.fill(f"{run.panel.title}: not measured ({run.pending})", 40),
                ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
        return
    if a == "embedding_filters":
        for ax, r in zip(axes, run.results):
            plot_filters(r, ax=ax, max_components=run.panel.option("n_components", 28))
    elif a == "position_embedding_similarity":
        position_embedding_figure(run.results, axes=axes, panel_size=3.5)
    elif a == "attention_distance" and run.panel.option("sorted"):
        for ax, r in zip(axes, run.results):
            plot_sorted_heads(r, ax=ax)
    elif a == "attention_distance":
        plot_distance_by_depth(run.results, ax=axes[0])
    elif a == "attention_entropy":
        plot_entropy_by_depth(run.results, ax=axes[0])
    elif a == "effective_receptive_field":
        plot_spread(run.results, ax=axes[0], x="depth_fraction")
    elif a == "layer_cka":
        for ax, r in zip(axes, run.results):
            plot_cka(r, ax=ax)
    else:
        for ax, r in zip(axes, run.results):
            r.plot(ax=ax)
    if len(axes) == 1:
        axes[0].set_title(run.panel.title, fontsize=9)


def _whole_figure(runs: Sequence[PanelRun]):
    """The plotting function that draws the whole figure of a one-panel figure, if there is one."""
    import importlib

    if len(runs) != 1 or runs[0].pending or runs[0].panel.analysis not in WHOLE_FIGURES:
        return None
    module, function = WHOLE_FIGURES[runs[0].panel.analysis].split(":")
    try:
        return getattr(importlib.import_module(f"vitlens.plotting.{module}"), function)
    except (ImportError, AttributeError):
        return None


def paper_figure(figure: PaperFigure, runs: Sequence[PanelRun], caption: str = ""):
    """The paper figure's panels, left to right, in one matplotlib figure."""
    import matplotlib.pyplot as plt

    whole = _whole_figure(runs)
    if whole is not None:
        fig = whole(runs[0].results)
        fig.suptitle(f"{figure.label}" + (f": {caption}" if caption else f": {runs[0].panel.title}"), fontsize=10, y=1.03)
        return fig
    widths = [_slots(r) for r in runs]
    n = sum(widths)
    fig, axs = plt.subplots(1, n, figsize=(4.6 * n + 0.8, 4.8), squeeze=False, layout="constrained")
    axs = list(axs[0])
    k = 0
    for run, w in zip(runs, widths):
        _draw(run, axs[k:k + w])
        k += w
    fig.suptitle(f"{figure.label}" + (f": {caption}" if caption else ""), fontsize=10)
    return fig
