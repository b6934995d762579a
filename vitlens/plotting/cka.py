"""The CKA heatmap (Raghu et al. 2021, Fig. 1 and 2): layers of model A against layers of model B.

Rows are model A's layers (first layer at the bottom), columns model B's (first layer at the left),
both in forward order; every panel of a figure shares one colour scale from 0 to 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import new_axes

__all__ = ["plot_cka", "cka_figure", "CMAP"]

CMAP = "magma"


def _ticks(layers: Sequence[str], max_labels: int = 12) -> list[str]:
    every = max(1, int(np.ceil(len(layers) / max_labels)))
    return [name if i % every == 0 or i == len(layers) - 1 else "" for i, name in enumerate(layers)]


def plot_cka(result, ax=None, *, colorbar: bool = True, cbar_ax=None, title: bool = True, annotate: bool | None = None):
    """Seaborn heatmap of ``result.cka`` ``[layer_a, layer_b]`` on a fixed 0..1 colour scale.

    Args:
        result: a :class:`~vitlens.analyses.representations.cka.CKAResult`.
        colorbar: draw a colour bar (into ``cbar_ax`` when given).
        title: name the models, the representation, the images and the minibatch size.
        annotate: write each value in its cell (default: when both axes have at most 8 layers).

    Returns:
        The axes.
    """
    import seaborn as sns

    la, lb = result.cka.shape
    ax = new_axes(ax, figsize=(1.2 + 0.45 * lb + (1.0 if colorbar else 0.0), 1.0 + 0.45 * la))
    annotate = max(la, lb) <= 8 if annotate is None else annotate
    sns.heatmap(np.asarray(result.cka), ax=ax, vmin=0.0, vmax=1.0, cmap=CMAP, square=True,
                xticklabels=_ticks(result.layers_b), yticklabels=_ticks(result.layers_a),
                cbar=colorbar, cbar_ax=cbar_ax, cbar_kws={"label": "CKA"} if colorbar else None,
                annot=annotate, fmt=".2f", annot_kws={"fontsize": 6}, mask=~np.isfinite(result.cka))
    ax.invert_yaxis()                                # first layer at the bottom left
    ax.tick_params(labelsize=7, length=0)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel(f"{result.model_b} layer")
    ax.set_ylabel(f"{result.model_a} layer")
    if title:
        ax.set_title(f"{result.representation} representation, {result.n_images} images, "
                     f"minibatch {result.batch_size}", fontsize=8)
    return ax


def cka_figure(results: Sequence):
    """One heatmap per result side by side, all on the one 0..1 colour scale with a single colour bar.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("cka_figure needs at least one result")
    widths = [max(2.0, 0.45 * r.cka.shape[1] + 1.2) for r in results]
    height = max(2.5, max(0.45 * r.cka.shape[0] + 1.4 for r in results))
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(sum(widths) + 0.6, height), squeeze=False,
                             gridspec_kw={"width_ratios": [*widths, 0.12]})
    for i, (ax, r) in enumerate(zip(axes[0], results)):
        plot_cka(r, ax=ax, colorbar=i == 0, cbar_ax=axes[0][-1] if i == 0 else None)
    fig.suptitle("linear CKA (unbiased HSIC, minibatch), colour scale 0 to 1", fontsize=9)
    fig.tight_layout()
    return fig
