"""The position-embedding similarity figure (ViT paper, Fig. 7 centre).

A grid of small tiles: the tile at (row i, column j) is the similarity of patch (i, j)'s position
embedding to every patch, drawn as a small image of the grid. All tiles and all models share one
colour scale. Large grids (DINOv2's 37 x 37) draw every k-th tile so the figure stays readable.
"""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np

__all__ = ["position_embedding_figure", "auto_tile_step"]

MAX_TILES = 16  # per side, before tiles are thinned automatically


def auto_tile_step(grid_size: Sequence[int], max_tiles: int = MAX_TILES) -> int:
    """Smallest step k such that drawing every k-th tile gives at most ``max_tiles`` per side."""
    return max(1, math.ceil(max(grid_size) / max_tiles))


def _mosaic(similarity: np.ndarray, step: int, gap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile image with NaN gaps, and the query rows and columns shown."""
    gh, gw = similarity.shape[:2]
    rows = np.arange(0, gh, step)
    cols = np.arange(0, gw, step)
    img = np.full((len(rows) * (gh + gap) - gap, len(cols) * (gw + gap) - gap), np.nan, dtype=np.float32)
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            y, x = a * (gh + gap), b * (gw + gap)
            img[y:y + gh, x:x + gw] = similarity[i, j]
    return img, rows, cols


def _ticks(ax, axis: str, shown: np.ndarray, tile: int, gap: int) -> None:
    centres = np.arange(len(shown)) * (tile + gap) + (tile - 1) / 2
    every = max(1, math.ceil(len(shown) / 16))
    labels = [str(v + 1) if k % every == 0 else "" for k, v in enumerate(shown)]
    if axis == "x":
        ax.set_xticks(centres, labels)
    else:
        ax.set_yticks(centres, labels)
    ax.tick_params(length=0, labelsize=8 if len(shown) <= 16 else 7)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    text = f"{v:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def position_embedding_figure(results, *, tile_step: int | None = None, axes=None,
                              cmap: str = "viridis", vmin: float = -1.0, vmax: float = 1.0,
                              show_summary: bool = True, colorbar: bool = True,
                              panel_size: float = 5.0):
    """Tile figure of one or several :class:`~vitlens.analyses.embeddings.position.PositionEmbeddingSimilarity` results.

    Args:
        results: one result or a sequence, drawn side by side.
        tile_step: draw the tiles of every k-th patch row and column (each tile still shows the full
            grid). None chooses the smallest step that keeps at most 16 tiles per side.
        axes: one axes per result to draw into; None makes a new figure.
        cmap: colour map; the colour scale is shared by all tiles and all models.
        vmin, vmax: colour scale limits (cosine similarity lies in [-1, 1]).
        show_summary: add the distance correlation, the row/column score and any notes.
        colorbar: add one colour bar for all panels.
        panel_size: width of one panel in inches when a new figure is made.

    Returns:
        The figure; its first axes are the panels, one per result, in order.
    """
    import matplotlib.pyplot as plt

    if not isinstance(results, (list, tuple)):
        results = [results]
    if not results:
        raise ValueError("no results to plot")
    if axes is None:
        aspect = max(min(r.similarity.shape[0] / r.similarity.shape[1], 2.0) for r in results)
        height = panel_size * max(aspect, 0.5) + 1.3
        fig, axs = plt.subplots(1, len(results), figsize=(panel_size * len(results) + 1.2, height),
                                squeeze=False, layout="constrained")
        axes = list(axs[0])
    else:
        axes = list(axes)
        if len(axes) != len(results):
            raise ValueError(f"{len(results)} results but {len(axes)} axes")
        fig = axes[0].figure
    cm = plt.get_cmap(cmap).with_extremes(bad=(0.0, 0.0, 0.0, 0.0))   # gaps between tiles: blank

    image = None
    for ax, res in zip(axes, results):
        gh, gw = res.similarity.shape[:2]
        step = tile_step if tile_step is not None else auto_tile_step((gh, gw))
        if step < 1:
            raise ValueError(f"tile_step must be at least 1, got {step}")
        gap = max(1, round(0.15 * max(gh, gw)))
        img, rows, cols = _mosaic(res.similarity, step, gap)
        image = ax.imshow(img, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest")
        _ticks(ax, "x", cols, gw, gap)
        _ticks(ax, "y", rows, gh, gap)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel("Input patch column")
        ax.set_ylabel("Input patch row")
        title = f"{res.model or 'position embeddings'}"
        sub = f"{gh} x {gw} patches" + (f", tiles of every {_ordinal(step)} row and column" if step > 1 else "")
        if show_summary:
            s = res.summary()
            sub += (f"\nsimilarity vs distance r = {_fmt(s['distance_correlation'])}"
                    f"\nrow/column score {_fmt(s['row_column_score'])} "
                    f"({_fmt(s['row_column_excess'])} beyond distance)")
        ax.set_title(f"{title}\n{sub}", fontsize=9)
        if show_summary and res.notes:
            text = "\n".join(textwrap.fill("Note: " + n, 70) for n in res.notes)
            ax.annotate(text, xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -4),
                        textcoords="offset points", ha="center", va="top", fontsize=7, color="#444444")
    if colorbar and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="Cosine similarity")
    return fig
