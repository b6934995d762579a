"""Mean attention distance: how far each head looks, per layer, over a whole image set.

For one head of one layer and one image (Dosovitskiy et al. 2021, Appendix D.7):

    MAD = mean over query patches q of  sum over key patches k of  A[q, k] * ||p_q - p_k||

with ``p`` the patch centres of the token layout. Images are averaged last. Prefix tokens
(class, distillation, registers) are handled by a named convention:

- ``"renormalize"`` (default): drop prefix rows and columns, divide each row by its patch mass,
  so a head that parks attention on the class token is not mistaken for a local head;
- ``"discard"``: drop them without renormalising (rows sum to 1 - prefix mass; biased low).

Streaming: :class:`DistanceAccumulator` takes each layer's maps from the capture callback and
keeps only per-(layer, head) sums and a fixed-bin histogram, so memory does not grow with images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

import numpy as np
import torch

from ...models.tokens import TokenLayout
from ...runtime.frozen import freeze_arrays
from ...runtime.precision import float32_probabilities
from .conventions import PREFIX_CONVENTIONS, UNITS  # named here as well
from .entropy import attention_entropy, patch_centres, prefix_share, reduce_attention_rows

__all__ = ["PREFIX_CONVENTIONS", "UNITS", "check_prefix_convention", "distance_matrix", "uniform_distance", "mean_attention_distance",
           "DistanceAccumulator", "AttentionDistance"]

PrefixConvention = Literal["renormalize", "discard"]
Unit = Literal["px", "patches", "fraction"]
HIST_BINS = 2048


def distance_matrix(layout: TokenLayout, units: Unit = "px") -> np.ndarray:
    """Distances between patch centres, ``[query, key]``, in ``units``.

    ``px``: pixels of the model input. ``patches``: grid steps (row and column index).
    ``fraction``: each axis divided by the input side along it (the unit square of vit_analysis).
    """
    c = layout.patch_centers()
    if units == "patches":
        c = c / np.asarray(layout.patch_stride)
    elif units == "fraction":
        c = c / np.asarray(layout.input_size, dtype=float)
    elif units != "px":
        raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    return np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))


def uniform_distance(layout: TokenLayout, units: Unit = "px") -> float:
    """Mean attention distance of uniform attention over all patches (self included)."""
    return float(distance_matrix(layout, units).mean())


def check_prefix_convention(prefix_tokens: str) -> None:
    if prefix_tokens not in PREFIX_CONVENTIONS:
        raise ValueError(f"prefix_tokens must be 'renormalize' or 'discard', got {prefix_tokens!r}")


def mean_attention_distance(attn: torch.Tensor, layout: TokenLayout, *, prefix_tokens: PrefixConvention =
                            "renormalize", units: Unit = "px", dist: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image, per-head mean attention distance of one layer.

    Args:
        attn: ``[batch, head, query, key]`` probabilities over all tokens of ``layout``; bf16 or
            fp16 maps are upcast and their rows renormalised first (see ``float32_probabilities``).
        layout: the token layout the maps were captured with.
        prefix_tokens: ``"renormalize"`` or ``"discard"`` (see module docstring).
        units: ``"px"``, ``"patches"`` or ``"fraction"``.
        dist: a precomputed ``distance_matrix`` as a tensor on ``attn``'s device (speed only).

    Returns:
        ``[batch, head]`` float32. A query row with no mass on patches (possible only under
        ``renormalize`` when all mass sits on prefix tokens) is left out of the mean over queries.
        NaN where the maps hold NaN or Inf (an fp16 overflow, say), so it is never averaged in.
    """
    check_prefix_convention(prefix_tokens)
    if attn.shape[-1] != layout.num_tokens or attn.shape[-2] != layout.num_tokens:
        raise ValueError(f"attention has {attn.shape[-1]} tokens but the layout has {layout.num_tokens} "
                         f"({layout.describe()})")
    if dist is None:
        dist = torch.as_tensor(distance_matrix(layout, units), dtype=torch.float32, device=attn.device)
    p = layout.patch_slice
    a = float32_probabilities(attn)[..., p, p]        # [batch, head, query, key] over patches only
    per_query = torch.einsum("bhqk,qk->bhq", a, dist)  # [batch, head, query]
    corrupt = ~torch.isfinite(per_query).all(-1)       # [batch, head]: NaN or Inf in the maps
    if prefix_tokens == "renormalize":
        mass = a.sum(-1)
        per_query = torch.where(mass > 0, per_query / mass.clamp_min(torch.finfo(mass.dtype).tiny),
                                torch.full_like(per_query, float("nan")))
        out = torch.nanmean(per_query, dim=-1)
    else:
        out = per_query.mean(-1)
    return out.masked_fill(corrupt, float("nan"))


@dataclass(frozen=True)
class AttentionDistance:
    """Mean attention distance of every head of every layer, over an image set.

    Attributes:
        distance: ``[layer, head]`` mean over images.
        std: ``[layer, head]`` standard deviation across images (ddof=1; 0 for one image).
        low, high: ``[layer, head]`` 2.5th and 97.5th percentiles across images (the range that
            holds 95% of images; from a fixed-bin histogram, exact to one bin of ``max_distance / 2048``,
            and kept within the smallest and largest value seen).
        n_images: images averaged.
        n_nonfinite: ``[layer, head]`` images left out because their attention held NaN or Inf.
        units: ``px``, ``patches`` or ``fraction``.
        prefix_tokens: the prefix-token convention.
        uniform: the distance of uniform attention over all patches, in ``units``.
        layout: the token layout the maps were captured with.
        model: the model's name as given by the user.
        layer_names: module name of each layer's attention.
        depths: the index of the transformer block each layer belongs to (its family adapter's
            ``AttentionBlock.depth``), for placing layers on a depth axis.
        entropy: ``[layer, head]`` mean over patch queries and images of each row's entropy over all
            keys divided by ``log N`` (1 for uniform attention, 0 for one-hot;
            :mod:`vitlens.analyses.attention.entropy`); None when not computed.
        prefix_share: ``[layer, head]`` mean over patch queries and images of each row's mass on
            prefix tokens (class, distillation, registers; 0 where the model has none); None when not
            computed.
        attention_path: how the probabilities were read: ``"chunked"`` (from each block's queries
            and keys a block of rows at a time) or ``"full"`` (whole maps), with why in
            ``attention_path_note``.
    """

    distance: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_images: int
    n_nonfinite: np.ndarray
    units: str
    prefix_tokens: str
    uniform: float
    layout: TokenLayout
    model: str = ""
    layer_names: tuple[str, ...] = field(default_factory=tuple)
    depths: tuple[int, ...] = field(default_factory=tuple)
    entropy: np.ndarray | None = None
    prefix_share: np.ndarray | None = None
    attention_path: str = ""
    attention_path_note: str = ""

    def __post_init__(self):
        freeze_arrays(self)

    @property
    def num_layers(self) -> int:
        return self.distance.shape[0]

    @property
    def num_heads(self) -> int:
        return self.distance.shape[1]

    def local_heads(self, fraction: float = 0.5) -> np.ndarray:
        """``[layer, head]`` True where a head is local: its distance is below ``fraction`` times the
        distance of uniform attention (Raghu et al.'s reading of the ViT paper's Fig. 7)."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        with np.errstate(invalid="ignore"):
            return self.distance < fraction * self.uniform

    def local_head_counts(self, fraction: float = 0.5) -> np.ndarray:
        """``[layer]`` the number of local heads in each layer (see :meth:`local_heads`)."""
        return self.local_heads(fraction).sum(axis=1)

    def row_columns(self, rows=None) -> dict:
        """``entropy`` and ``prefix_share`` columns for frame rows ``rows`` (``(layer, head)`` index
        arrays; every cell by default), where computed."""
        out = {}
        for name in ("entropy", "prefix_share"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v.ravel() if rows is None else v[rows]
        return out

    def to_frame(self):
        """Tidy frame: one row per (layer, head), 0-based, with ``distance_<unit>``, ``std_<unit>``,
        the 95% range across images, ``entropy`` and ``prefix_share`` (where computed) and ``n_images``."""
        import pandas as pd

        L, H = self.distance.shape
        u = self.units
        return pd.DataFrame({
            "model": [self.model] * (L * H),
            "layer": np.repeat(np.arange(L), H),
            "head": np.tile(np.arange(H), L),
            f"distance_{u}": self.distance.ravel(),
            f"std_{u}": self.std.ravel(),
            f"low95_{u}": self.low.ravel(),
            f"high95_{u}": self.high.ravel(),
            **self.row_columns(),
            "n_images": self.n_images,
            "prefix_tokens": self.prefix_tokens,
        })

    def to_dict(self) -> dict:
        """Metadata for a run record (not the arrays)."""
        return {"model": self.model, "units": self.units, "prefix_tokens": self.prefix_tokens,
                "n_images": self.n_images, "uniform_distance": self.uniform,
                "token_layout": self.layout.to_dict(), "n_nonfinite": int(self.n_nonfinite.sum()),
                "attention_path": self.attention_path, "attention_path_note": self.attention_path_note,
                "entropy": "mean over patch queries and images of -sum_k A log A over all keys / log N",
                "prefix_share": "mean over patch queries and images of the row's mass on prefix tokens"}

    def plot(self, ax=None, **kwargs):
        """The paper's plot: one dot per head against depth. Returns the axes."""
        from ...plotting.distance import plot_distance_by_depth
        return plot_distance_by_depth([self], ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ...runtime.display import result_html

        return result_html(self)


class DistanceAccumulator:
    """Streaming per-(layer, head) statistics of mean attention distance over images.

    Feed it every layer's maps through ``update(layer, attn)`` (the signature of a
    :func:`capture_attention` callback). Holds float64 sums, sums of squares and a histogram per
    (layer, head); partial states add up (``merge``), which is what resuming and multi-process
    runs rely on.
    """

    def __init__(self, layout: TokenLayout, num_layers: int, num_heads: int, *,
                 prefix_tokens: PrefixConvention = "renormalize", units: Unit = "px",
                 device: str | torch.device = "cpu"):
        check_prefix_convention(prefix_tokens)
        self.layout, self.prefix_tokens, self.units = layout, prefix_tokens, units
        self._centres = patch_centres(layout, units)                   # [patch, 2] float64
        c = self._centres.numpy()                                      # farthest pair: opposite corners
        self.max_distance = float(np.sqrt(((c.max(0) - c.min(0)) ** 2).sum())) if len(c) else 1.0
        self.max_distance = self.max_distance or 1.0
        self._device = torch.device(device)
        self._dist: torch.Tensor | None = None                         # [patch, patch], the full-map path's only
        self.attention_path, self.attention_path_note = "full", ""
        self.attention_memory = None
        self._allocate((num_layers, num_heads))

    def _distances(self, device: torch.device) -> torch.Tensor:
        if self._dist is None or self._dist.device != device:
            d = distance_matrix(self.layout, self.units)
            self._dist = torch.as_tensor(d, dtype=torch.float32, device=device)
        return self._dist

    def _allocate(self, shape: tuple[int, int]) -> None:
        """Empty per-(layer, head) sums, sums of squares, histograms and extremes."""
        self.count = np.zeros(shape, dtype=np.int64)
        self.nonfinite = np.zeros(shape, dtype=np.int64)
        self.sum = np.zeros(shape, dtype=np.float64)
        self.sumsq = np.zeros(shape, dtype=np.float64)
        self.hist = np.zeros(shape + (HIST_BINS,), dtype=np.int64)
        self.min = np.full(shape, np.inf)
        self.max = np.full(shape, -np.inf)
        self.entropy_sum = np.zeros(shape, dtype=np.float64)
        self.prefix_sum = np.zeros(shape, dtype=np.float64)
        self.row_count = np.zeros(shape, dtype=np.int64)
        self._pending: list[tuple[int, torch.Tensor]] = []  # (layer, [3, batch, head] or distances [batch, head])

    def update(self, layer: int, attn: torch.Tensor) -> None:
        """Add the ``[batch, head, query, key]`` maps of ``layer`` for one batch of images.

        On an accelerator the per-head distances stay on the device until :meth:`flush` (called
        once per batch by :func:`stream_distance`, and by every method that reads the sums), so the
        forward pass is not stopped at every layer to copy a few numbers to the host."""
        mad = mean_attention_distance(attn, self.layout, prefix_tokens=self.prefix_tokens,
                                      units=self.units, dist=self._distances(attn.device))  # [batch, head] float32
        self._queue(layer, torch.stack([mad, attention_entropy(attn, self.layout), prefix_share(attn, self.layout)]))

    def update_rows(self, layer: int, rows) -> None:
        """Add one batch of ``layer`` from its :class:`~vitlens.capture.chunked.AttentionRows` (the
        chunked path: a block of query rows at a time, never the full map); the same numbers as
        :meth:`update` on the full maps, to float32 rounding."""
        mad, ent, pre = reduce_attention_rows(rows.chunks(), num_prefix=self.layout.num_prefix_tokens,
                                              centres=self._centres, renormalize=self.prefix_tokens == "renormalize")
        self._queue(layer, torch.stack([mad, ent, pre]))

    def _queue(self, layer: int, values: torch.Tensor) -> None:
        self._pending.append((layer, values))
        if values.device.type == "cpu":
            self.flush()

    def flush(self) -> None:
        """Move the distances held on the device into the sums (one copy for all of them)."""
        if not self._pending:
            return
        layers = [l for l, _ in self._pending]
        same = len({tuple(m.shape) for _, m in self._pending}) == 1
        values = (torch.stack([m for _, m in self._pending]).double().cpu().numpy() if same else
                  [m.double().cpu().numpy() for _, m in self._pending])
        self._pending = []
        for layer, v in zip(layers, values):
            if v.ndim == 2:                      # distances alone [batch, head]
                self._add(layer, v)
                continue
            self._add(layer, v[0])               # [distance, entropy, prefix share] x [batch, head]
            self._add_rows(layer, v[1], v[2])

    def _add_rows(self, layer: int, entropy: np.ndarray, prefix: np.ndarray) -> None:
        """Add ``[batch, head]`` entropies and prefix shares (images with non-finite values left out)."""
        h = entropy.shape[1]
        ok = np.isfinite(entropy) & np.isfinite(prefix)
        self.entropy_sum[layer, :h] += np.where(ok, entropy, 0.0).sum(0)
        self.prefix_sum[layer, :h] += np.where(ok, prefix, 0.0).sum(0)
        self.row_count[layer, :h] += ok.sum(0)

    def _add(self, layer: int, mad: np.ndarray) -> None:
        ok = np.isfinite(mad)
        self.nonfinite[layer] += (~ok).sum(0)
        v = np.where(ok, mad, 0.0)
        self.count[layer] += ok.sum(0)
        self.sum[layer] += v.sum(0)
        self.sumsq[layer] += (v * v).sum(0)
        self.min[layer] = np.minimum(self.min[layer], np.where(ok, mad, np.inf).min(0))
        self.max[layer] = np.maximum(self.max[layer], np.where(ok, mad, -np.inf).max(0))
        bins = np.clip((v / self.max_distance * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
        for h in range(v.shape[1]):
            np.add.at(self.hist[layer, h], bins[ok[:, h], h], 1)

    SUMMED = ("count", "nonfinite", "sum", "sumsq", "hist", "entropy_sum", "prefix_sum", "row_count")

    def merge(self, other: "DistanceAccumulator") -> None:
        """Add another accumulator's images to this one."""
        self.flush()
        other.flush()
        for name in self.SUMMED:
            getattr(self, name).__iadd__(getattr(other, name))
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def state(self) -> dict[str, np.ndarray]:
        """The partial state as arrays (to save, resume, or all-reduce: ``min``/``max`` by min/max,
        the rest by sum)."""
        self.flush()
        return {k: getattr(self, k) for k in self.SUMMED + ("min", "max")}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.flush()
        for k, v in state.items():
            getattr(self, k)[...] = v

    def row_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """``(entropy, prefix_share)`` per ``[layer, head]``: means over images (NaN where none)."""
        self.flush()
        n = self.row_count
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.where(n > 0, self.entropy_sum / np.maximum(n, 1), np.nan),
                    np.where(n > 0, self.prefix_sum / np.maximum(n, 1), np.nan))

    def path_fields(self) -> dict:
        """The result's ``attention_path`` and ``attention_path_note``."""
        path, note = self.attention_path, self.attention_path_note
        used = getattr(self, "paths_used", set())
        if path == "chunked" and used == {"full"}:
            path, note = "full", ("full maps: every batch's whole map of a block fit the memory budget, so the "
                                  "model's own probabilities were read (larger maps are formed a block of query "
                                  "rows at a time)")
        elif path == "chunked" and used == {"full", "chunked"}:
            path, note = "full and chunked", ("full maps for the batches whose whole map fit the memory budget, "
                                              "chunked rows for the others")
        if "chunked" in path and self.attention_memory is not None:
            note += f" (memory budget {self.attention_memory:g} MB per block)"
        return {"attention_path": path, "attention_path_note": note}

    def _quantile(self, q: float) -> np.ndarray:
        cdf = np.cumsum(self.hist, axis=-1)
        n = np.maximum(cdf[..., -1:], 1)
        target = q * n
        idx = (cdf < target).sum(-1)                    # first bin whose cumulative count reaches q
        idx = np.minimum(idx, HIST_BINS - 1)
        before = np.take_along_axis(cdf, np.maximum(idx - 1, 0)[..., None], -1)[..., 0] * (idx > 0)
        inbin = np.take_along_axis(self.hist, idx[..., None], -1)[..., 0]
        frac = np.where(inbin > 0, (target[..., 0] - before) / np.maximum(inbin, 1), 0.5)
        return (idx + np.clip(frac, 0, 1)) * self.max_distance / HIST_BINS

    def statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, variance, low, high)`` per ``[layer, head]`` from the sums (ddof=1; the 95%
        range from the histogram, kept inside what was seen and around the mean, since bins are
        coarse when images agree closely)."""
        self.flush()
        n = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.sum / np.maximum(n, 1), np.nan)
            var = np.where(n > 1, (self.sumsq - n * mean ** 2) / np.maximum(n - 1, 1), 0.0)
        low = np.minimum(np.maximum(self._quantile(0.025), self.min), mean)
        high = np.maximum(np.minimum(self._quantile(0.975), self.max), mean)
        return mean, var, low, high

    def result(self, model: str = "", layer_names: Iterable[str] = ()) -> AttentionDistance:
        layer_names = tuple(layer_names) or getattr(self, "layer_names", ())
        mean, var, low, high = self.statistics()
        entropy, prefix = self.row_statistics()
        n = self.count
        return AttentionDistance(distance=mean, std=np.sqrt(np.maximum(var, 0.0)), low=low, high=high,
                                 n_images=int(n.max()) if n.size else 0, n_nonfinite=self.nonfinite.copy(),
                                 units=self.units, prefix_tokens=self.prefix_tokens,
                                 uniform=uniform_distance(self.layout, self.units), layout=self.layout,
                                 model=model, layer_names=tuple(layer_names),
                                 depths=tuple(getattr(self, "depths", ())), entropy=entropy, prefix_share=prefix,
                                 **self.path_fields())
