"""Figures for token norms: the norm histogram in the manner of Darcet et al. (ICLR 2024) and the
grid positions of the high-norm tokens.

The histogram has a log norm axis (bins of equal width on it) and a log count axis, so a small mode
of outliers an order of magnitude above the bulk stays visible; the dashed line is the stated
threshold. Blocks count from 1 on figures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import MODEL_COLORS, new_axes

__all__ = ["plot_norm_histogram", "plot_high_norm_positions", "token_norms_figure", "high_norm_positions_figure",
           "default_blocks"]

_KIND_COLORS = {"patch": MODEL_COLORS[0], "prefix": MODEL_COLORS[1]}


def default_blocks(result, count: int = 4) -> list[int]:
    """``count`` blocks (0-based) spread evenly over depth, the last included."""
    n = result.num_blocks
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(count, n))})


def _busiest(result) -> int:
    share = np.asarray(result.high_norm_share)
    return int(len(share) - 1 - np.argmax(share[::-1])) if share.size else 0


def _coarse(result, block: int, kind: str, span: tuple[int, int], bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, tokens per image)`` of one block and kind over the fine bins ``span`` (first, last),
    merged into about ``bins`` display bins of equal width on a log axis."""
    k = ("prefix", "patch").index(kind)                  # the result's kind axis
    first, last = span
    step = max(1, -(-(last - first + 1) // bins))
    m = -(-(last - first + 1) // step)
    fine = np.zeros(m * step)
    part = np.asarray(result.hist[block, k, first:last + 1], dtype=float)
    fine[:len(part)] = part
    counts = fine.reshape(m, step).sum(1) / max(result.n_images, 1)
    edges = np.asarray(result.edges)
    idx = np.minimum(first + np.arange(m + 1) * step, len(edges) - 2)   # the last finite edge at most
    return edges[idx], counts


def _span(result, block: int, kinds) -> tuple[int, int] | None:
    """The first and last fine bin holding a token of ``kinds`` in ``block`` (the bins [0, low) and
    [high, inf) excluded: a log axis cannot show them)."""
    ks = [("prefix", "patch").index(k) for k in kinds]
    total = np.asarray(result.hist[block, ks], dtype=np.int64).sum(0)
    total[0] = total[-1] = 0
    nz = np.nonzero(total)[0]
    return (int(nz[0]), int(nz[-1])) if nz.size else None


def plot_norm_histogram(result, ax=None, *, block: int | None = None, kinds: Sequence[str] = ("patch", "prefix"),
                        title: bool = True, legend: bool = True, bins: int = 60):
    """Histogram of one block's output-token norms (0-based ``block``; default: the block with the
    largest high-norm share), patch and prefix tokens apart, log norm and log count axes; y is tokens
    per image per bin (about ``bins`` bins over the norms seen). The dashed line is the high-norm
    threshold. Returns the axes."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax = new_axes(ax, figsize=(5.0, 3.4))
    b = _busiest(result) if block is None else int(block)
    if not 0 <= b < result.num_blocks:
        raise ValueError(f"block {b} is out of range: {result.num_blocks} blocks, counted from 0")
    kinds = [k for k in kinds if k == "patch" or result.layout.num_prefix_tokens > 0]
    span = _span(result, b, kinds)
    lo, hi = np.inf, 0.0
    for kind in kinds if span is not None else ():
        edges, counts = _coarse(result, b, kind, span, bins)
        lo, hi = min(lo, edges[0]), max(hi, edges[-1])
        label = f"{kind} tokens" + (f" ({result.layout.num_prefix_tokens} per image)" if kind == "prefix" else "")
        ax.stairs(np.where(counts > 0, counts, np.nan), edges, fill=kind == "patch", alpha=0.6 if kind == "patch" else 1,
                  color=_KIND_COLORS[kind], label=label, linewidth=1.2)
    t = float(result.threshold[b])
    if np.isfinite(t):
        ax.axvline(t, color="0.2", ls="--", lw=1,
                   label=f"threshold {t:.3g} ({result.norm_factor:g} x median)")
        lo, hi = min(lo, t), max(hi, t)
    if np.isfinite(lo) and hi > 0:
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.set_xlabel("output token norm (L2)")
    ax.set_ylabel("tokens per image per bin")
    if title:
        ax.set_title(f"{result.model}, block {b + 1}: {result.high_norm_share[b]:.2%} of patch tokens high-norm",
                     fontsize=8)
    if legend:
        ax.legend(fontsize=6, frameon=False, loc="upper right")
    return ax


def plot_high_norm_positions(result, ax=None, *, block: int | None = None, vmax: float | None = None,
                             colorbar: bool = True, title: bool = True):
    """Where one block's high-norm tokens lie: per grid position, the share of images in which the
    patch token there is high-norm (0-based ``block``; default: the block with the largest share).
    Returns the axes."""
    ax = new_axes(ax, figsize=(3.6, 3.2))
    b = _busiest(result) if block is None else int(block)
    if not 0 <= b < result.num_blocks:
        raise ValueError(f"block {b} is out of range: {result.num_blocks} blocks, counted from 0")
    share = np.asarray(result.positions[b], dtype=float) / max(result.n_images, 1)
    top = vmax if vmax is not None else (float(share.max()) or 1.0)
    im = ax.imshow(share, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of images high-norm")
    if title:
        ax.set_title(f"{result.model}, block {b + 1}: {result.high_norm_per_image[b]:.2f} per image", fontsize=8)
    return ax


def _grid(results, blocks, per_panel):
    import matplotlib.pyplot as plt

    chosen = [default_blocks(r) if blocks is None else list(blocks) for r in results]
    cols = max(len(c) for c in chosen)
    fig, axes = plt.subplots(len(results), cols, figsize=(per_panel[0] * cols, per_panel[1] * len(results)),
                             squeeze=False)
    for i, (r, bs) in enumerate(zip(results, chosen)):
        for j in range(cols):
            if j >= len(bs):
                axes[i, j].set_axis_off()
        yield fig, axes[i], r, bs


def token_norms_figure(results: Sequence, blocks: Sequence[int] | None = None):
    """One row per model, one histogram per chosen block (0-based; default: four spread over depth)."""
    fig = None
    for fig, row, r, bs in _grid(results, blocks, (3.4, 2.7)):
        for j, b in enumerate(bs):
            plot_norm_histogram(r, ax=row[j], block=b, title=False, legend=j == len(bs) - 1)
            row[j].set_title(f"block {b + 1}: {r.high_norm_share[b]:.2%} high-norm", fontsize=8)
            if j:
                row[j].set_ylabel("")
            else:
                row[j].set_ylabel(f"{r.model}\ntokens per image per bin", fontsize=8)
    fig.suptitle(f"Output token norms ({results[0].n_images} images); high-norm: above "
                 f"{results[0].norm_factor:g} x the block's median patch norm", fontsize=9)
    fig.tight_layout()
    return fig


def high_norm_positions_figure(results: Sequence, blocks: Sequence[int] | None = None):
    """One row per model, one position map per chosen block, on one colour scale per model."""
    fig = None
    for fig, row, r, bs in _grid(results, blocks, (2.6, 2.5)):
        top = max(float(np.asarray(r.positions[b]).max()) for b in bs) / max(r.n_images, 1)
        for j, b in enumerate(bs):
            plot_high_norm_positions(r, ax=row[j], block=b, vmax=top or 1.0, colorbar=j == len(bs) - 1,
                                     title=False)
            row[j].set_title(f"block {b + 1}: {r.high_norm_per_image[b]:.2f} per image", fontsize=8)
            if not j:
                row[j].set_ylabel(r.model, fontsize=8)
    fig.suptitle("Where the high-norm patch tokens lie: share of images, per grid position", fontsize=9)
    fig.tight_layout()
    return fig
