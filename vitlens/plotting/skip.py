"""Skip-connection norm ratios laid out like Raghu et al. 2021, Fig. 7.

Left: a ViT's per-token ratio ``||x|| / ||f(x)||`` for the first tokens (token 0 the class token
where there is one) by sub-layer, blocks counted from 1, first block at the top, on a log colour
scale. Right: the mean ratio by depth, attention against MLP sub-layers (line style), prefix against
patch tokens (marker), one colour per model, CNN residual units beside the ViTs; log y axis.
Infinite ratios (a branch that adds zero) are left blank and said so in the title.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_skip_tokens", "plot_skip_ratios", "skip_figure", "CMAP", "LINESTYLES", "MARKERS"]

CMAP = "viridis"
LINESTYLES = {"attention": "-", "mlp": "--", "residual": ":"}
MARKERS = {"prefix": "o", "patch": "s", "position": "^"}
SHORT = {"attention": "attn", "mlp": "mlp", "residual": "res"}
KIND_LABEL = {"prefix": "prefix (CLS)", "patch": "patch tokens", "position": "positions"}


def _token_label(result, t: int) -> str:
    """``CLS``, ``DIST``, ``REG`` for prefix tokens, the sequence index for patch tokens."""
    kinds = tuple(result.prefix_kinds)
    return kinds[t].upper() if t < len(kinds) else str(t)


def plot_skip_tokens(result, ax=None, *, colorbar: bool = True, title: bool = True):
    """Heatmap of ``result.token_ratio`` ``[block, sublayer, token]``: rows block x sub-layer (first
    block at the top), columns the first tokens, log10 colour scale. Returns the axes."""
    from matplotlib.colors import LogNorm

    tr = np.asarray(result.token_ratio, dtype=np.float64)
    nb, ns, nt = tr.shape
    ax = new_axes(ax, figsize=(1.5 + 0.32 * max(nt, 1), 1.2 + 0.18 * nb * ns))
    rows = tr.reshape(nb * ns, nt)
    finite = np.isfinite(rows) & (rows > 0)
    shown = np.ma.masked_where(~finite, rows)
    norm = LogNorm(vmin=rows[finite].min(), vmax=rows[finite].max()) if finite.any() else None
    im = ax.imshow(shown, aspect="auto", cmap=CMAP, norm=norm, interpolation="nearest")
    labels = [f"{b + 1} {SHORT.get(s, s)}" for b in range(nb) for s in result.sublayers]
    every = max(1, int(np.ceil(len(labels) / 24)))
    ax.set_yticks(range(0, len(labels), every), labels[::every], fontsize=6)
    ax.set_xticks(range(nt), [_token_label(result, t) for t in range(nt)], fontsize=6)
    ax.set_xlabel("token (sequence order)")
    ax.set_ylabel("block, sub-layer")
    if colorbar and norm is not None:
        ax.figure.colorbar(im, ax=ax, label="||x|| / ||f(x)||", fraction=0.05)
    if title:
        blank = " (blank: infinite)" if np.isinf(rows).any() else ""
        ax.set_title(f"{result.model}: per-token ratio, {result.n_images} images{blank}", fontsize=8)
    return ax


def plot_skip_ratios(results: Sequence, ax=None, *, depth: str | None = None, title: bool = True):
    """Mean ratio by block of every result: one colour per model, line style per sub-layer, marker per
    token kind; log y axis. ``depth``: ``"block"`` (blocks from 1) or ``"fraction"`` (0 to 1;
    default when the models have different depths). Returns the axes."""
    results = list(results)
    ax = new_axes(ax, figsize=(6.0, 4.0))
    if depth is None:
        depth = "block" if len({len(r.blocks) for r in results}) == 1 else "fraction"
    any_inf = False
    for mi, r in enumerate(results):
        color = MODEL_COLORS[mi % len(MODEL_COLORS)]
        x = np.arange(1, len(r.blocks) + 1) if depth == "block" else np.asarray(r.depth_fraction)
        for si, s in enumerate(r.sublayers):
            for ki, k in enumerate(r.token_kinds):
                y = np.asarray(r.ratio[:, si, ki], dtype=np.float64)
                any_inf |= bool(np.isinf(y).any())
                y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
                ax.plot(x, y, color=color, linestyle=LINESTYLES.get(s, "-"), marker=MARKERS.get(k, "o"),
                        markersize=3.5, linewidth=1.3, label=f"{r.model} ({r.kind.upper()}): {s}, {KIND_LABEL.get(k, k)}")
    ax.set_yscale("log")
    ax.set_xlabel("block" if depth == "block" else "depth (fraction of blocks)")
    ax.set_ylabel("mean ||x|| / ||f(x)||")
    ax.grid(alpha=0.3, which="both", linewidth=0.5)
    ax.legend(fontsize=6, loc="best")
    if title:
        note = "; infinite values not drawn" if any_inf else ""
        ax.set_title(f"skip-connection norm ratio by depth{note}", fontsize=8)
    return ax


def skip_figure(results: Sequence):
    """Fig. 7: the per-token heatmap of every ViT (left) beside the ratio by depth of every model
    (right, ViTs and CNNs on one axis). Returns the figure."""
    import matplotlib.pyplot as plt

    results = list(results)
    vits = [r for r in results if r.kind == "vit" and r.token_ratio.shape[-1] > 0]
    n = len(vits) + 1
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * len(vits) + [1.2]})
    for ax, r in zip(axes[0], vits):
        plot_skip_tokens(r, ax=ax)
    plot_skip_ratios(results, ax=axes[0, -1])
    fig.tight_layout()
    return fig
