"""Figures for the effective receptive field: spread against depth, and the ERF heatmaps."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_spread", "draw_maps", "receptive_field_figure"]


HATCHES = ["//", "\\\\", "..", "xx", "--", "||", "++", "oo"]


def _label(r) -> str:
    n = f"{r.n_images} image" + ("" if r.n_images == 1 else "s")
    return f"{r.model} ({n})" if r.model else n


def plot_spread(results: Sequence, ax=None, *, x: str = "auto", band: bool = True, uniform: bool = True):
    """x = depth, y = ERF spread in pixels (line), with the r50 to r90 radii as a band.

    Args:
        results: one :class:`~vitlens.analyses.fields.effective.ReceptiveField` per model; they share the axes.
        x: ``"depth"`` (layer index, labelled with module names for one model), ``"depth_fraction"``
            (0 = first layer, 1 = last; lines up models of different depths), or ``"auto"``: depth for
            one model, depth fraction for several.
        band: shade between ``r50_px`` and ``r90_px``.
        uniform: a dotted line at each model's ``uniform_spread_px`` (a map spread over the whole input).

    Returns:
        The axes.
    """
    ax = new_axes(ax, figsize=(6.0, 4.2))
    if x == "auto":
        x = "depth" if len(results) == 1 else "depth_fraction"
    if x not in ("depth", "depth_fraction"):
        raise ValueError(f"x must be 'auto', 'depth' or 'depth_fraction', got {x!r}")
    top = 1.0
    for i, r in enumerate(results):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        xs = np.asarray(getattr(r, x), dtype=float)
        ax.plot(xs, r.spread_px, marker="o", ms=4, lw=1.5, color=color, label=_label(r))
        top = max(top, float(np.nanmax(r.spread_px, initial=0.0)))
        if band:  # each model's band: its own hatch and edge lines, so overlapping bands stay apart
            ax.fill_between(xs, r.r50_px, r.r90_px, facecolor=color, alpha=0.10, lw=0)
            ax.fill_between(xs, r.r50_px, r.r90_px, facecolor="none", edgecolor=color, alpha=0.45, lw=0,
                            hatch=HATCHES[i % len(HATCHES)])
            ax.plot(xs, r.r50_px, color=color, lw=0.8, ls=(0, (1, 1)))
            ax.plot(xs, r.r90_px, color=color, lw=0.8, ls=(0, (4, 2)))
            top = max(top, float(np.nanmax(r.r90_px, initial=0.0)))
        if uniform and len(r.uniform_spread_px):
            u = float(np.mean(r.uniform_spread_px))
            ax.axhline(u, color=color, ls=":", lw=1)
            top = max(top, u)
    if x == "depth" and len(results) == 1:
        r = results[0]
        ax.set_xticks(np.asarray(r.depth, dtype=float))
        many = r.num_layers > 6
        ax.set_xticklabels(r.layers, rotation=45 if many else 0, ha="right" if many else "center", fontsize=7)
        ax.set_xlabel("layer (depth)")
    else:
        ax.set_xlabel("network depth (0 = first layer, 1 = last)" if x == "depth_fraction" else "network depth (layer)")
    ax.set_ylabel("distance from the centre unit (pixels)")
    ax.set_ylim(0, 1.05 * top)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += _style_key(band, uniform)
    labels += [h.get_label() for h in _style_key(band, uniform)]
    # the legend sits outside the axes, never over the data; its last entries say what each style means
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              borderaxespad=0)
    return ax


def _style_key(band: bool, uniform: bool) -> list:
    """Grey legend entries that say what each line style means (colours name the models)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    key = [Line2D([], [], color="0.3", marker="o", ms=4, lw=1.5, label="spread (line with dots)")]
    if band:
        key += [Patch(facecolor="0.85", edgecolor="0.45", hatch="//", lw=0, label="r50 to r90 (hatched band)"),
                Line2D([], [], color="0.3", lw=0.8, ls=(0, (1, 1)), label="r50 (dotted edge)"),
                Line2D([], [], color="0.3", lw=0.8, ls=(0, (4, 2)), label="r90 (dashed edge)")]
    if uniform:
        key.append(Line2D([], [], color="0.3", lw=1, ls=":", label="spread of a map even over the image"))
    return key


def _pick(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, always keeping the first and the last."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, k)})


def draw_maps(result, axes=None, *, max_maps: int = 8, gamma: float = 0.5, circles: bool = True):
    """One ERF heatmap per layer (at most ``max_maps``, evenly spaced through depth).

    Each map is divided by its own maximum and drawn on a power scale (``gamma``; 0.5 is a square
    root, which shows the tails). The cross is the centre unit's input position; the solid and
    dashed circles are ``r50_px`` and ``r90_px``. Axes are in input pixels.

    Returns:
        The axes used, one per map drawn.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Circle

    idx = _pick(result.num_layers, max_maps)
    if axes is None:
        _, axes = plt.subplots(1, len(idx), figsize=(1.9 * len(idx), 2.2), squeeze=False)
        axes = axes[0]
    axes = list(np.atleast_1d(axes))[:len(idx)]
    H, W = result.input_size
    im = None
    for ax, li in zip(axes, idx):
        m = result.maps[li]
        peak = m.max()
        shown = m / peak if peak > 0 else m
        im = ax.imshow(shown, cmap="magma", norm=PowerNorm(gamma, vmin=0, vmax=1), extent=(0, W, H, 0),
                       interpolation="nearest")
        cy, cx = result.centre_px[li]
        ax.plot([cx], [cy], marker="+", color="#56B4E9", ms=7, mew=1.2)
        if circles:
            for rad, ls in ((result.r50_px[li], "-"), (result.r90_px[li], "--")):
                if np.isfinite(rad):
                    ax.add_patch(Circle((cx, cy), rad, fill=False, color="#56B4E9", lw=0.9, ls=ls))
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_title(f"{result.layers[li]}\nspread {result.spread_px[li]:.1f} px", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return axes, im


def receptive_field_figure(results: Sequence, *, max_maps: int = 8):
    """Spread against depth for all models on top, then a row of ERF heatmaps per model."""
    import matplotlib.pyplot as plt

    n = len(results)
    cols = max(len(_pick(r.num_layers, max_maps)) for r in results)
    width = max(7.0, 1.7 * cols + 0.8)
    fig = plt.figure(figsize=(width, 4.2 + 2.1 * n))
    gs = fig.add_gridspec(1 + n, cols + 1, height_ratios=[2.0] + [1.0] * n,
                          width_ratios=[1.0] * cols + [0.06], hspace=0.55, wspace=0.12,
                          top=1 - 0.45 / fig.get_figheight(), bottom=0.5 / fig.get_figheight())
    ax = fig.add_subplot(gs[0, :cols])
    plot_spread(results, ax=ax)
    ax.set_title("effective receptive field by depth", fontsize=9)
    im = None
    for row, r in enumerate(results):
        k = len(_pick(r.num_layers, max_maps))
        axes = [fig.add_subplot(gs[1 + row, c]) for c in range(k)]
        _, im = draw_maps(r, axes=axes, max_maps=max_maps)
        color = MODEL_COLORS[row % len(MODEL_COLORS)]
        axes[0].set_ylabel(r.model, fontsize=8, color=color)
    if im is not None:
        cax = fig.add_subplot(gs[1:, cols])
        cb = fig.colorbar(im, cax=cax)
        cb.set_label("|input gradient| / max", fontsize=7)
        cb.ax.tick_params(labelsize=6)
    conv = results[0].conventions if results else {}
    fig.text(0.01, 0.005, f"mean over images of |d centre unit / d input| ({conv.get('objective', '')} over channels, "
             f"{conv.get('input_gradient', '')} summed over colours); square-root colour scale; "
             "+ centre unit, circles r50 (solid) and r90 (dashed)", fontsize=6.5, color="0.35")
    return fig
