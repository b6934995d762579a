"""Radius geometry of an input-pixel map: its mass-weighted mean radius and mass radii.

Pixel ``x`` covers ``[x, x + 1)``; its centre is ``x + 0.5``. Positions are ``(y, x)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["pixel_distances", "spread_and_radii"]



def pixel_distances(size: tuple[int, int], centre: Sequence[float]) -> np.ndarray:
    """Distance of every input pixel centre ``(y + 0.5, x + 0.5)`` from ``centre``, ``[height, width]``."""
    h, w = size
    ys = np.arange(h, dtype=np.float64) + 0.5 - float(centre[0])
    xs = np.arange(w, dtype=np.float64) + 0.5 - float(centre[1])
    return np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)


def spread_and_radii(weights: np.ndarray, centre: Sequence[float], quantiles: Sequence[float] = (0.5, 0.9),
                     ) -> tuple[float, np.ndarray]:
    """Mean radius and mass radii of a non-negative map ``[height, width]`` around ``centre``.

    Args:
        weights: non-negative mass per input pixel.
        centre: ``(y, x)`` in pixels; pixel ``(i, j)`` sits at ``(i + 0.5, j + 0.5)``.
        quantiles: fractions ``q`` of the mass, each in ``(0, 1]``.

    Returns:
        ``(spread, radii)``: ``sum g d / sum g`` over pixel-centre distances ``d``, and ``radii[k]``,
        the smallest radius holding ``quantiles[k]`` of the mass, where each pixel's mass counts as
        spread evenly over the radii ``[d - 0.5, d + 0.5]`` (a ring one pixel wide, clipped at 0),
        so the enclosed mass grows piecewise linearly with the radius instead of in steps. This
        matches the continuous closed forms (a Gaussian's ``r50 = 1.1774 sigma``) to about 1% from
        ``sigma = 2`` px. NaN throughout for a map of zero mass.
    """
    g = np.asarray(weights, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"weights must be [height, width], got shape {g.shape}")
    if (g < 0).any():
        raise ValueError("weights must be non-negative")
    q = np.asarray(quantiles, dtype=np.float64)
    total = g.sum()
    if not total > 0 or not np.isfinite(total):
        return float("nan"), np.full(q.shape, np.nan)
    d = pixel_distances(g.shape, centre).ravel()
    m = g.ravel() / total
    spread = float((m * d).sum())
    # Each pixel's mass is spread evenly over the radii [d - 0.5, d + 0.5] (clipped at 0): the
    # enclosed mass F(r) is then piecewise linear with breakpoints at those ends.
    lo, hi = np.maximum(d - 0.5, 0.0), d + 0.5
    rate = m / (hi - lo)
    pos = np.concatenate([lo, hi])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    slope = np.cumsum(np.concatenate([rate, -rate])[order])  # dF/dr just after each breakpoint
    mass = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(pos))])
    mass = np.maximum.accumulate(np.clip(mass, 0.0, 1.0))
    mass[-1] = 1.0  # all mass lies within the farthest pixel's ring
    radii = np.empty(q.shape)
    for k, qk in enumerate(q):
        if not 0.0 < qk <= 1.0:
            raise ValueError(f"quantiles must be in (0, 1], got {qk}")
        i = max(int(np.searchsorted(mass, qk, side="left")), 1)  # first breakpoint with F >= q
        lo_r, hi_r, lo_m, hi_m = pos[i - 1], pos[i], mass[i - 1], mass[i]
        radii[k] = hi_r if hi_m <= lo_m else lo_r + (qk - lo_m) / (hi_m - lo_m) * (hi_r - lo_r)
    return spread, radii
