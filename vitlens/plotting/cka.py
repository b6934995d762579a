"""The CKA heatmap (Raghu et al. 2021, Fig. 1 and 2): layers of model A against layers of model B.

Rows are model A's layers (first layer at the bottom), columns model B's (first layer at the left),
both in forward order; every panel of a figure shares one colour scale from 0 to 1. The unbiased
estimator can give values below 0 (unrelated features, or few images per minibatch): the scale then
reaches down to the lowest value, in blues, so that a negative value never looks like 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import new_axes

__all__ = ["plot_cka", "cka_figure", "CMAP", "colour_scale"]

CMAP = "magma"


def _ticks(layers: Sequence[str], max_labels: int = 12) -> list[str]:
    every = max(1, int(np.ceil(len(layers) / max_labels)))
    return [name if i % every == 0 or i == len(layers) - 1 else "" for i, name in enumerate(layers)]


def colour_scale(results: Sequence) -> tuple[float, object]:
    """The lower end of the shared colour scale and its colour map: 0 and :data:`CMAP` when every
    value is at least 0; otherwise the lowest value (rounded down to 0.05) and a map whose part
    below 0 runs in blues (light at the lowest value, dark at 0) and whose part above 0 is
    :data:`CMAP`."""
    import matplotlib as mpl
    from matplotlib.colors import ListedColormap

    finite = [float(np.nanmin(np.where(np.isfinite(r.cka), r.cka, np.nan))) for r in results
              if np.isfinite(r.cka).any()]
    low = min(finite, default=0.0)
    if not low < 0:
        return 0.0, CMAP
    vmin = float(np.floor(low * 20) / 20)
    n_neg = max(1, int(round(256 * -vmin / (1 - vmin))))
    neg = mpl.colormaps["Blues"](np.linspace(0.45, 1.0, n_neg))
    pos = mpl.colormaps[CMAP](np.linspace(0.0, 1.0, 256 - n_neg))
    return vmin, ListedColormap(np.vstack([neg, pos]), name="cka_signed")


def plot_cka(result, ax=None, *, colorbar: bool = True, cbar_ax=None, title: bool = True, annotate: bool | None = None,
             vmin: float | None = None, cmap=None):
    """Seaborn heatmap of ``result.cka`` ``[layer_a, layer_b]`` on a colour scale up to 1, from 0,
    or from the lowest value when some are negative (:func:`colour_scale`).

    Args:
        result: a :class:`~vitlens.analyses.representations.cka.CKAResult`.
        colorbar: draw a colour bar (into ``cbar_ax`` when given).
        title: name the models, the representation, the images and the minibatch size.
        annotate: write each value in its cell (default: when both axes have at most 8 layers).
        vmin, cmap: the scale's lower end and colour map (default: :func:`colour_scale` of ``result``).

    Returns:
        The axes.
    """
    import seaborn as sns

    la, lb = result.cka.shape
    ax = new_axes(ax, figsize=(1.2 + 0.45 * lb + (1.0 if colorbar else 0.0), 1.0 + 0.45 * la))
    annotate = max(la, lb) <= 8 if annotate is None else annotate
    if vmin is None or cmap is None:
        auto_vmin, auto_cmap = colour_scale([result])
        vmin = auto_vmin if vmin is None else vmin
        cmap = auto_cmap if cmap is None else cmap
    label = "CKA" if vmin >= 0 else "CKA (blues: below 0)"
    sns.heatmap(np.asarray(result.cka), ax=ax, vmin=vmin, vmax=1.0, cmap=cmap, square=True,
                xticklabels=_ticks(result.layers_b), yticklabels=_ticks(result.layers_a),
                cbar=colorbar, cbar_ax=cbar_ax, cbar_kws={"label": label} if colorbar else None,
                annot=annotate, fmt=".2f", annot_kws={"fontsize": 6}, mask=~np.isfinite(result.cka))
    ax.invert_yaxis()                                # first layer at the bottom left
    ax.tick_params(labelsize=7, length=0)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel(f"{result.model_b} layer")
    ax.set_ylabel(f"{result.model_a} layer")
    if title:
        import textwrap

        note = result.small_minibatch()
        lines = [f"{result.representation} representation", result.minibatches()]
        lines += ["small minibatches: values are noisy"] if note else []
        width = max(24, int(15 * (0.45 * lb + 1.0)))  # characters that fit over the panel
        ax.set_title("\n".join(textwrap.fill(t, width) for t in lines), fontsize=8,
                     color="#B00000" if note else "black")
    return ax


def cka_figure(results: Sequence):
    """One heatmap per result side by side, all on one colour scale (0 to 1, or from the lowest
    negative value to 1) with a single colour bar.

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
    vmin, cmap = colour_scale(results)
    for i, (ax, r) in enumerate(zip(axes[0], results)):
        plot_cka(r, ax=ax, colorbar=i == 0, cbar_ax=axes[0][-1] if i == 0 else None, vmin=vmin, cmap=cmap)
    fig.suptitle(f"linear CKA (unbiased HSIC, minibatch), colour scale {vmin:g} to 1", fontsize=9)
    fig.tight_layout()
    return fig
