"""The structure of a position-embedding similarity table, read as separate parts.

Small ViTs often learn a border ring: patches on the edge of the grid have embeddings like each
other's and unlike the interior's. One correlation of similarity with distance over all patches
then mixes the ring (far-apart edge patches that are alike) with the fall-off among interior
patches, and can come out near zero while the tiles plainly show both. So the table is read in
parts, each a pure function of a ``[grid_h, grid_w, grid_h, grid_w]`` similarity array:

- :func:`distance_correlation` over all patches and over interior patches only (both members of
  every pair off the outer ring): Pearson r between similarity and Euclidean distance in grid
  steps, over ordered pairs of distinct patches;
- :func:`border_means` and :func:`border_contrast`: the mean similarity between two distinct edge
  patches minus the mean similarity between an edge patch and an interior patch;
- :func:`row_column_score`: the mean similarity to patches sharing a row or a column minus the
  mean similarity to patches sharing neither (self excluded).

Everything is NaN where its pairs do not exist (no interior on a grid of fewer than 3 rows or
columns; no "neither" pair on a single row).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["border_ring", "distance_correlation", "border_means", "border_contrast", "row_column_score",
           "structure"]


def _flat(similarity) -> tuple[np.ndarray, int, int]:
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim != 4 or s.shape[:2] != s.shape[2:]:
        raise ValueError(f"similarity must be [grid_h, grid_w, grid_h, grid_w], got shape {s.shape}")
    gh, gw = s.shape[:2]
    return s.reshape(gh * gw, gh * gw), gh, gw


def border_ring(grid_size: tuple[int, int]) -> np.ndarray:
    """``[grid_h * grid_w]`` bool, row-major: True for patches in the first or last row or column."""
    gh, gw = grid_size
    r, c = np.divmod(np.arange(gh * gw), gw)
    return (r == 0) | (r == gh - 1) | (c == 0) | (c == gw - 1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def distance_correlation(similarity, patches: str = "all") -> float:
    """Pearson r between similarity and distance (grid steps) over ordered pairs of distinct patches.

    Args:
        similarity: ``[grid_h, grid_w, grid_h, grid_w]``.
        patches: ``"all"``, or ``"interior"``: only pairs whose two patches are both off the border ring.

    Returns:
        r in [-1, 1], negative when nearby patches are more alike; NaN when no pairs or a constant.
    """
    if patches not in ("all", "interior"):
        raise ValueError(f"patches must be 'all' or 'interior', got {patches!r}")
    s, gh, gw = _flat(similarity)
    r, c = np.divmod(np.arange(gh * gw), gw)
    dist = np.sqrt((r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2)   # [query, key]
    use = ~np.eye(gh * gw, dtype=bool)
    if patches == "interior":
        inner = ~border_ring((gh, gw))
        use &= inner[:, None] & inner[None, :]
    return _pearson(s[use], dist[use])


def border_means(similarity) -> dict[str, float]:
    """Mean similarity of distinct edge-edge pairs, edge-interior pairs and distinct interior-interior
    pairs: ``{"border_border", "border_interior", "interior_interior"}`` (NaN where none exist)."""
    s, gh, gw = _flat(similarity)
    ring = border_ring((gh, gw))
    off = ~np.eye(gh * gw, dtype=bool)

    def mean(mask):
        return float(s[mask].mean()) if mask.any() else float("nan")

    return {"border_border": mean(ring[:, None] & ring[None, :] & off),
            "border_interior": mean(ring[:, None] & ~ring[None, :]),
            "interior_interior": mean(~ring[:, None] & ~ring[None, :] & off)}


def border_contrast(similarity) -> float:
    """Mean edge-edge similarity minus mean edge-interior similarity: large and positive for a border
    ring (edge patches alike, and unlike the interior); NaN on a grid with no interior."""
    m = border_means(similarity)
    return m["border_border"] - m["border_interior"]


def row_column_score(similarity) -> float:
    """Mean similarity to patches sharing a row or a column (self excluded) minus the mean
    similarity to patches sharing neither; NaN when either set is empty."""
    s, gh, gw = _flat(similarity)
    r, c = np.divmod(np.arange(gh * gw), gw)
    shares = (r[:, None] == r[None, :]) | (c[:, None] == c[None, :])
    line = shares & ~np.eye(gh * gw, dtype=bool)
    if not line.any() or shares.all():
        return float("nan")
    return float(s[line].mean() - s[~shares].mean())


def structure(similarity) -> dict[str, float]:
    """Every reading at once: ``distance_correlation_all``, ``distance_correlation_interior``,
    ``border_contrast``, ``row_column_score`` and the three border means (floats, NaN where undefined)."""
    means = border_means(similarity)
    return {"distance_correlation_all": distance_correlation(similarity, "all"),
            "distance_correlation_interior": distance_correlation(similarity, "interior"),
            "border_contrast": means["border_border"] - means["border_interior"],
            "row_column_score": row_column_score(similarity),
            "border_border_mean": means["border_border"],
            "border_interior_mean": means["border_interior"],
            "interior_interior_mean": means["interior_interior"]}
