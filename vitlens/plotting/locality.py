"""The locality figure: ViT attention distance and CNN/ViT receptive-field spread on one axis."""

from __future__ import annotations

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_locality", "locality_figure"]


def plot_locality(result, ax=None, *, heads: bool = True, band: bool = False, reference: bool = True):
    """x = relative depth (0 = first layer, 1 = last), y = pixels; one colour per model.

    The two quantities differ and are drawn apart: attention distance (a mean over all queries
    and images, ViTs only) as filled dots per head and a solid line of layer means; the gradient
    spread of the effective receptive field (one centre unit) as a dashed line with hollow markers,
    triangles for ViTs and squares for CNNs. ``band`` shades each ERF's r50 to r90 radii; ``reference`` draws the distance of
    uniform attention over the whole input (grey, dotted), where a head that looks everywhere sits.

    Args:
        result: a :class:`~vitlens.analyses.locality.Locality`.

    Returns:
        The axes.
    """
    ax = new_axes(ax, figsize=(7.0, 4.6))
    colors = {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(result.models)}
    top = 1.0
    drawn: set[float] = set()
    for d in result.distances:
        c = colors[d.model]
        L, H = d.distance.shape
        x, blocks, means = result.attention_by_depth(d)  # one point per block (parallel blocks: several layers)
        side = d.layout.input_size
        if heads:
            ax.scatter(np.repeat(x, H), d.distance.ravel(), s=12, color=c, alpha=0.45, edgecolors="none")
        ax.plot(blocks, means, color=c, lw=1.8, marker="o", ms=4,
                label=f"{d.model}: attention distance, mean over all queries ({side[0]} px input)")
        top = max(top, float(np.nanmax(d.distance, initial=0.0)), d.uniform)
        if reference and round(d.uniform, 3) not in drawn:  # one line and label per distinct reference
            drawn.add(round(d.uniform, 3))
            ax.axhline(d.uniform, color="0.5", ls=":", lw=1,
                       label=f"uniform attention over the whole {side[0]} px input: {d.uniform:.1f} px")
    for f in result.fields:
        c = colors[f.model]
        x = np.asarray(f.depth_fraction, dtype=float)
        vit = f.kind == "vit"
        ax.plot(x, f.spread_px, color=c, lw=1.4, ls="--", marker="^" if vit else "s", ms=5, mfc="white",
                label=f"{f.model}: gradient spread of the centre unit ({f.input_size[0]} px input)")
        top = max(top, float(np.nanmax(f.spread_px, initial=0.0)))
        if band:
            ax.fill_between(x, f.r50_px, f.r90_px, color=c, alpha=0.12, lw=0)
            top = max(top, float(np.nanmax(f.r90_px, initial=0.0)))
    ax.set_xlim(-0.04, 1.04)
    ax.set_ylim(0, 1.15 * top)
    ax.set_xlabel("relative depth (0 = first layer, 1 = last)")
    ax.set_ylabel("distance (input pixels)")
    ax.set_title("Two different measures on one pixel axis: attention distance (solid, filled) and\n"
                 "gradient spread of one centre unit (dashed, hollow)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1 if len(result.models) < 3 else 2,
              frameon=False)
    return ax


def locality_figure(result, **kwargs):
    """:func:`plot_locality` on a figure of its own: the axes keep their size, and the legend under
    them adds to the figure's height (saved with a tight bounding box) instead of squeezing them.
    Returns the figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7.5, 4.8))
    ax = fig.add_axes((0.1, 0.1, 0.86, 0.8))
    plot_locality(result, ax=ax, **kwargs)
    return fig
