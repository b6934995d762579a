"""A streaming histogram of vector norms on fixed, log-spaced bins, with exact moments and extremes.

Token norms span orders of magnitude (a random ViT's first block and a trained ViT's high-norm
outliers differ by 10^3), so the bins are log-spaced: ``BINS_PER_DECADE`` bins per factor of ten
from ``LOW`` to ``HIGH``, plus one bin ``[0, LOW)`` and one ``[HIGH, inf)``. Each bin is
``10^(1/BINS_PER_DECADE) - 1`` = 0.46% wide relative to its lower edge. The ``q`` quantile of ``n``
values is read in the bin that holds the value of rank ``ceil(q n)`` (for the median of an even count,
the lower of the two middle values), interpolated geometrically inside that bin and kept within the
smallest and largest value seen, so it is within 0.46% of that value. The count, sum, sum of squares, minimum and
maximum are exact. Memory is fixed: it does not grow with the number of values added.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["LOW", "HIGH", "BINS_PER_DECADE", "RELATIVE_BIN_WIDTH", "norm_edges", "NormHistogram",
           "quantile_from_histogram"]

LOW, HIGH = 1e-6, 1e8
BINS_PER_DECADE = 500
RELATIVE_BIN_WIDTH = 10 ** (1 / BINS_PER_DECADE) - 1


def norm_edges() -> np.ndarray:
    """Bin edges ``[bin + 1]``: 0, then log-spaced from ``LOW`` to ``HIGH``, then inf."""
    decades = int(round(np.log10(HIGH / LOW)))
    inner = LOW * 10.0 ** (np.arange(decades * BINS_PER_DECADE + 1) / BINS_PER_DECADE)
    return np.concatenate([[0.0], inner, [np.inf]])


class NormHistogram:
    """Per-row streaming histograms of non-negative values (rows: blocks x token kinds, say).

    Args:
        rows: the leading shape of the statistics, e.g. ``(block, kind)``.
    """

    SUMMED = ("hist", "count", "sum", "sumsq")

    def __init__(self, rows: tuple[int, ...]):
        self.edges = norm_edges()
        self._inner = torch.as_tensor(self.edges[1:-1], dtype=torch.float64)
        nb = len(self.edges) - 1
        self.hist = np.zeros(rows + (nb,), dtype=np.int64)
        self.count = np.zeros(rows, dtype=np.int64)
        self.sum = np.zeros(rows, dtype=np.float64)
        self.sumsq = np.zeros(rows, dtype=np.float64)
        self.min = np.full(rows, np.inf)
        self.max = np.full(rows, -np.inf)

    def add(self, row: tuple[int, ...], values: torch.Tensor) -> None:
        """Add ``values`` (any shape, finite and non-negative) to the statistics of ``row``."""
        v = values.detach().reshape(-1).to(torch.float64)
        if v.numel() == 0:
            return
        if self._inner.device != v.device:
            self._inner = self._inner.to(v.device)
        idx = torch.bucketize(v, self._inner, right=True)       # 0: [0, LOW); k: [edge k, edge k+1)
        counts = torch.bincount(idx, minlength=self.hist.shape[-1]).cpu().numpy()
        s = torch.stack([v.sum(), (v * v).sum(), v.min(), v.max()]).cpu().numpy()
        self.hist[row] += counts
        self.count[row] += v.numel()
        self.sum[row] += s[0]
        self.sumsq[row] += s[1]
        self.min[row] = min(self.min[row], s[2])
        self.max[row] = max(self.max[row], s[3])

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)

    def std(self) -> np.ndarray:
        """Standard deviation over the values (ddof=0); NaN for an empty row."""
        n = np.maximum(self.count, 1)
        var = np.maximum(self.sumsq / n - (self.sum / n) ** 2, 0.0)
        return np.where(self.count > 0, np.sqrt(var), np.nan)

    def quantile(self, q: float) -> np.ndarray:
        """The ``q`` quantile of each row (see the module docstring for its resolution); NaN for an
        empty row. Within the bin holding the target rank the value is interpolated geometrically
        (linearly in ``[0, LOW)``) and kept within the row's minimum and maximum."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be between 0 and 1, got {q}")
        return quantile_from_histogram(self.hist, self.edges, q, self.min, self.max)

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.SUMMED + ("min", "max")}


def quantile_from_histogram(hist: np.ndarray, edges: np.ndarray, q: float, lo: np.ndarray,
                            hi: np.ndarray) -> np.ndarray:
    """The ``q`` quantile of each row of ``hist`` ``[..., bin]`` on ``edges`` (see
    :meth:`NormHistogram.quantile`)."""
    cdf = np.cumsum(hist, axis=-1)
    n = cdf[..., -1]
    target = q * n
    idx = np.minimum((cdf < target[..., None]).sum(-1), hist.shape[-1] - 1)  # first bin reaching the rank
    before = np.where(idx > 0, np.take_along_axis(cdf, np.maximum(idx - 1, 0)[..., None], -1)[..., 0], 0)
    inbin = np.take_along_axis(hist, idx[..., None], -1)[..., 0]
    frac = np.clip(np.where(inbin > 0, (target - before) / np.maximum(inbin, 1), 0.5), 0.0, 1.0)
    left, right = edges[idx], edges[np.minimum(idx + 1, len(edges) - 1)]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        geometric = left * (right / np.where(left > 0, left, 1.0)) ** frac
        value = np.where(left > 0, geometric, left + frac * right)
    value = np.where(np.isfinite(value), value, hi)                      # the [HIGH, inf) bin
    value = np.clip(value, lo, hi)
    return np.where(n > 0, value, np.nan)
