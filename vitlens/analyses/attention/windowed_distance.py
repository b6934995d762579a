"""Streaming mean attention distance of windowed and hierarchical models (Swin, Swin-V2, SAM).

:class:`WindowedDistanceAccumulator` keeps the statistics :class:`~vitlens.analyses.attention.distance.DistanceAccumulator`
keeps (float64 sums and sums of squares, a fixed-bin histogram for the 95% range, minimum and
maximum, per block and head), fed with window maps ``[batch * window, head, query, key]`` that
are reduced where they are captured (:func:`vitlens.analyses.attention.windowed_distance.windowed_mean_attention_distance`).
Stages have different head counts: the head axis is as long as the widest block's and holds NaN
beyond each block's own heads, whose counts the result records.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from ...models.windows import (BlockGeometry, Unit, WindowLayout, _positions, _scale, counted_pairs, pair_distances,
                               token_positions)
from ...runtime.precision import float32_probabilities
from .entropy import reduce_attention_rows
from .distance import HIST_BINS, AttentionDistance, DistanceAccumulator, PrefixConvention, check_prefix_convention

__all__ = ["WindowedAttentionDistance", "WindowedDistanceAccumulator", "windowed_mean_attention_distance",
           "ReductionTables", "reduction_tables"]


# --------------------------------------------------------------------------- the reduction


@dataclass(frozen=True)
class ReductionTables:
    """What one block's reduction needs, on the maps' device: ``pairs [window, query, key, 2]``,
    the counted pairs' distance (0 where a pair does not count) and 1 where a pair counts, and
    ``valid_query [window, query]``."""

    pairs: torch.Tensor
    valid_query: torch.Tensor
    max_distance: float


def _farthest(g: BlockGeometry, units: Unit) -> float:
    """The largest distance between two tokens of a global block (opposite corners), in ``units``."""
    c = np.asarray(g.grid_size, dtype=np.float64) - 1
    return float(np.sqrt(((c * _scale(g, units)) ** 2).sum()))


def reduction_tables(g: BlockGeometry, units: Unit = "px", device: str | torch.device = "cpu") -> ReductionTables:
    counted = counted_pairs(g)
    d = pair_distances(g, units)
    _, valid = _positions(g)
    as_t = functools.partial(torch.as_tensor, dtype=torch.float32, device=device)
    both = np.stack([np.where(counted, d, 0.0), counted.astype(np.float64)], axis=-1)
    return ReductionTables(pairs=as_t(both), valid_query=torch.as_tensor(valid, device=device),
                           max_distance=float(np.where(counted, d, 0.0).max(initial=0.0)))


def windowed_mean_attention_distance(attn: torch.Tensor, geometry: BlockGeometry, *, units: Unit = "px",
                                     tables: ReductionTables | None = None) -> torch.Tensor:
    """Per-image, per-head mean attention distance of one windowed (or global) block.

    Args:
        attn: ``[batch * window, head, query, key]`` probabilities, windows in the block's order
            (row-major, batch outermost); bf16/fp16 maps are upcast and renormalised first.
        geometry: the block's :class:`BlockGeometry`.
        units: ``"px"``, ``"patches"`` (steps of the block's map) or ``"fraction"``.
        tables: :func:`reduction_tables` of the block on ``attn``'s device (speed only).

    Returns:
        ``[batch, head]`` float32: the mean over every real query token of every window of the
        counted-pair-weighted distance, each row renormalised over its counted keys. A row with no
        counted mass (never from a softmax) is left out of the mean; NaN where the maps hold NaN or Inf.
    """
    nw, wt = geometry.num_windows, geometry.window_tokens
    if attn.ndim != 4 or tuple(attn.shape[-2:]) != (wt, wt) or attn.shape[0] % nw:
        raise ValueError(f"attention of shape {tuple(attn.shape)} does not fit {geometry.describe()}: expected "
                         f"[batch * {nw} windows, head, {wt}, {wt}]")
    if tables is None:
        tables = reduction_tables(geometry, units, attn.device)
    heads = attn.shape[1]
    a = float32_probabilities(attn).reshape(-1, nw, heads, wt, wt)           # [batch, window, head, query, key]
    # one broadcast matmul per block: [b, w, h, q, 1, k] @ [1, w, 1, q, k, 2] -> [b, w, h, q, 1, 2]
    both = torch.matmul(a.unsqueeze(-2), tables.pairs[None, :, None])[..., 0, :]
    num, mass = both[..., 0], both[..., 1]                                   # [batch, window, head, query]
    total = num + mass
    finite = (total - total) == 0        # x - x == 0 exactly where x is finite (cheaper than isfinite)
    ok = (mass > 0) & finite & tables.valid_query[None, :, None, :]
    per_query = torch.where(ok, num, 0.0) / torch.where(ok, mass, 1.0)
    n = ok.sum((1, 3)).to(per_query.dtype)                                   # [batch, head]
    out = per_query.sum((1, 3)) / n
    seen = total.sum((1, 3))                                                 # non-finite if any map entry was
    corrupt = (seen - seen) != 0                                             # [batch, head]
    return out.masked_fill(corrupt | (n == 0), float("nan"))


def windowed_entropy(attn: torch.Tensor, geometry: BlockGeometry, *, tables: ReductionTables | None = None,
                     units: Unit = "px") -> torch.Tensor:
    """``[batch, head]`` mean over every real query token of every window of its row's entropy over
    the counted keys (shift-mask pairs and padding keys left out), divided by ``log`` of the window's
    token count: 1 for uniform attention over a whole window, 0 for one-hot.

    Args:
        attn: ``[batch * window, head, query, key]`` probabilities, as for
            :func:`windowed_mean_attention_distance`.
    """
    nw, wt = geometry.num_windows, geometry.window_tokens
    if tables is None:
        tables = reduction_tables(geometry, units, attn.device)
    heads = attn.shape[1]
    a = float32_probabilities(attn).reshape(-1, nw, heads, wt, wt)             # [batch, window, head, query, key]
    counted = tables.pairs[..., 1][None, :, None]                              # [1, window, 1, query, key]
    h = -(torch.xlogy(a, a) * counted).sum(-1) / math.log(wt) if wt > 1 else torch.full(a.shape[:-1], float("nan"))
    valid = tables.valid_query[None, :, None, :]                               # [1, window, 1, query]
    return torch.where(valid, h, 0.0).sum((1, 3)) / valid.sum((1, 3))


# --------------------------------------------------------------------------- the accumulator

def _ints(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


@dataclass(frozen=True)
class WindowedAttentionDistance(AttentionDistance):
    """Mean attention distance of every head of every attention block of a windowed model.

    The arrays of :class:`~vitlens.analyses.attention.distance.AttentionDistance` are ``[layer, head]`` with layers the
    attention blocks in forward order across all stages (0-based) and ``head`` as long as the widest
    block's; ``distance[layer, heads[layer]:]`` is NaN. ``layout`` is the :class:`~vitlens.models.windows.WindowLayout`;
    ``uniform`` is the last block's reference.

    Attributes:
        stage: ``[layer]`` 0-based stage of each block.
        block: ``[layer]`` 0-based index of each block within its stage.
        heads: ``[layer]`` head count of each block.
        uniform_by_layer: ``[layer]`` each block's reference, uniform attention over the keys its own
            mask allows (:func:`~vitlens.models.windows.window_uniform_distance`), in ``units``.
    """

    stage: np.ndarray = field(default_factory=_ints)
    block: np.ndarray = field(default_factory=_ints)
    heads: np.ndarray = field(default_factory=_ints)
    uniform_by_layer: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self):
        for name in ("distance", "std", "low", "high", "n_nonfinite", "stage", "block", "heads", "uniform_by_layer",
                     "entropy", "prefix_share"):
            if getattr(self, name) is not None:
                getattr(self, name).setflags(write=False)

    def stage_uniform(self) -> dict[int, float]:
        """Each stage's reference: its first (unshifted) block's, uniform attention over one window."""
        out: dict[int, float] = {}
        for s, u in zip(self.stage.tolist(), self.uniform_by_layer.tolist()):
            out.setdefault(int(s), float(u))
        return out

    def local_heads(self, fraction: float = 0.5) -> np.ndarray:
        """``[layer, head]`` True where a head's distance is below ``fraction`` times its own block's
        uniform reference (False for the padding of the head axis)."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        with np.errstate(invalid="ignore"):
            return self.distance < fraction * self.uniform_by_layer[:, None]

    def to_frame(self):
        """Tidy frame: one row per (layer, head) of the block's own heads, 0-based, with the block's
        ``stage`` and ``block`` (within the stage) beside ``layer``, then the columns of the global
        result and ``uniform_<unit>``, the block's reference."""
        import pandas as pd

        rows = [(l, h) for l in range(self.num_layers) for h in range(int(self.heads[l]))]
        L = np.array([r[0] for r in rows], dtype=np.int64)
        H = np.array([r[1] for r in rows], dtype=np.int64)
        u = self.units
        return pd.DataFrame({
            "model": [self.model] * len(rows),
            "layer": L,
            "stage": self.stage[L],
            "block": self.block[L],
            "head": H,
            f"distance_{u}": self.distance[L, H],
            f"std_{u}": self.std[L, H],
            f"low95_{u}": self.low[L, H],
            f"high95_{u}": self.high[L, H],
            f"uniform_{u}": self.uniform_by_layer[L],
            **self.row_columns((L, H)),
            "n_images": self.n_images,
            "prefix_tokens": self.prefix_tokens,
        })

    def to_dict(self) -> dict:
        d = {k: v for k, v in super().to_dict().items() if k != "token_layout"}
        d["entropy"] = ("mean over every real query token of every window and images of -sum A log A over the "
                        "counted keys (shift-mask pairs and padding keys left out) / log(window tokens)")
        d["prefix_share"] = "0: windowed models have no prefix tokens"
        d.update(window_layout=self.layout.to_dict(), heads=self.heads.tolist(),
                 uniform_by_layer=self.uniform_by_layer.tolist(),
                 distance="mean over every real query token of every window of the attention-weighted "
                          "distance to counted keys in the un-shifted feature map (shift-mask pairs not "
                          "counted, padding excluded, rows renormalised); images averaged last")
        return d

    def plot(self, ax=None, **kwargs):
        """Distance by depth across all stages, stage boundaries and references drawn. Returns the axes."""
        from ...plotting.windows import plot_windowed_distance
        return plot_windowed_distance(self, ax=ax, **kwargs)


class WindowedDistanceAccumulator(DistanceAccumulator):
    """Streaming per-(block, head) statistics of windowed mean attention distance over images.

    ``update(layer, attn)`` has the signature of a :func:`~vitlens.capture.attention.capture_attention`
    callback and takes ``[batch * window, head, query, key]`` maps of block ``layer``; ``merge``,
    ``state`` and ``load_state`` behave as the global accumulator's.
    """

    def __init__(self, layout: WindowLayout, num_heads: Sequence[int], *,
                 prefix_tokens: PrefixConvention = "renormalize", units: Unit = "px",
                 device: str | torch.device = "cpu"):
        check_prefix_convention(prefix_tokens)
        if len(num_heads) != len(layout):
            raise ValueError(f"{len(num_heads)} head counts for {len(layout)} attention blocks")
        self.layout, self.prefix_tokens, self.units = layout, prefix_tokens, units
        self.num_heads = np.asarray(num_heads, dtype=np.int64)
        self._device = torch.device(device)
        self._tables: dict[tuple[int, str], ReductionTables] = {}
        self._centres: dict[int, torch.Tensor] = {}
        maxima = [_farthest(layout[i], units) if layout[i].is_global else self._table(i, self._device).max_distance
                  for i in range(len(layout))]           # no [query, key] table for a global block
        self.max_distance = float(max(maxima, default=0.0)) or 1.0
        self.attention_path, self.attention_path_note, self.attention_memory = "full", "", None
        self._allocate((len(layout), int(self.num_heads.max(initial=1))))

    def _table(self, layer: int, device: torch.device) -> ReductionTables:
        key = (layer, str(device))
        if key not in self._tables:
            self._tables[key] = reduction_tables(self.layout[layer], self.units, device)
        return self._tables[key]

    def update(self, layer: int, attn: torch.Tensor) -> None:
        """Add the window maps ``[batch * window, head, query, key]`` of block ``layer`` for one batch."""
        if attn.shape[1] != self.num_heads[layer]:
            raise ValueError(f"block {layer} has {self.num_heads[layer]} heads but its maps have {attn.shape[1]}")
        g, tables = self.layout[layer], self._table(layer, attn.device)
        mad = windowed_mean_attention_distance(attn, g, units=self.units, tables=tables)  # [batch, head]
        ent = windowed_entropy(attn, g, tables=tables)
        self._queue(layer, torch.stack([mad, ent, torch.zeros_like(ent)]))

    def update_rows(self, layer: int, rows) -> None:
        """Add one batch of block ``layer`` from its :class:`~vitlens.capture.chunked.AttentionRows`:
        a global block (SAM's) a block of query rows at a time, never its full map; a windowed block
        from its window maps, formed whole (one window's tokens squared)."""
        g = self.layout[layer]
        if not g.is_global:
            self.update(layer, rows.full())
            return
        if layer not in self._centres:
            pos, _ = token_positions(g)
            self._centres[layer] = torch.as_tensor(pos[0] * _scale(g, self.units), dtype=torch.float64)
        mad, ent, _ = reduce_attention_rows(rows.chunks(), num_prefix=0, centres=self._centres[layer], renormalize=True)
        self._queue(layer, torch.stack([mad, ent, torch.zeros_like(ent)]))

    def _add(self, layer: int, mad: np.ndarray) -> None:
        h = mad.shape[1]
        ok = np.isfinite(mad)
        v = np.where(ok, mad, 0.0)
        self.nonfinite[layer, :h] += (~ok).sum(0)
        self.count[layer, :h] += ok.sum(0)
        self.sum[layer, :h] += v.sum(0)
        self.sumsq[layer, :h] += (v * v).sum(0)
        self.min[layer, :h] = np.minimum(self.min[layer, :h], np.where(ok, mad, np.inf).min(0))
        self.max[layer, :h] = np.maximum(self.max[layer, :h], np.where(ok, mad, -np.inf).max(0))
        bins = np.clip((v / self.max_distance * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
        for head in range(h):
            np.add.at(self.hist[layer, head], bins[ok[:, head], head], 1)

    def result(self, model: str = "", layer_names: Iterable[str] = ()) -> WindowedAttentionDistance:
        layer_names = tuple(layer_names) or getattr(self, "layer_names", ())
        mean, var, low, high = self.statistics()
        entropy, prefix = self.row_statistics()
        n = self.count
        real = np.arange(n.shape[1])[None, :] < self.num_heads[:, None]       # [layer, head]
        std = np.where(real, np.sqrt(np.maximum(var, 0.0)), np.nan)
        uniform = self.layout.uniform(self.units)
        return WindowedAttentionDistance(
            distance=mean, std=std, low=np.where(real, low, np.nan), high=np.where(real, high, np.nan),
            n_images=int(n.max()) if n.size else 0, n_nonfinite=self.nonfinite.copy(), units=self.units,
            prefix_tokens=self.prefix_tokens, uniform=float(uniform[-1]) if uniform.size else float("nan"),
            layout=self.layout, model=model, layer_names=tuple(layer_names), depths=tuple(getattr(self, "depths", ())),
            stage=self.layout.stages,
            block=self.layout.block_in_stage, heads=self.num_heads.copy(), uniform_by_layer=uniform,
            entropy=np.where(real, entropy, np.nan), prefix_share=np.where(real, prefix, np.nan), **self.path_fields())
