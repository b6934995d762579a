"""ViT versus CNN locality on one axis: relative depth against pixels.

The ViT paper calls mean attention distance "analogous to receptive field size in CNNs"; Raghu et
al. (2021) contrast ViT heads that are global from the first layer with CNN receptive fields that
grow slowly. :func:`locality` puts both on one tidy table, from results already computed:

- a ViT's mean attention distance per head and per layer (:mod:`vitlens.analyses.attention.distance`), and the head
  mean per layer;
- the effective receptive field (:mod:`vitlens.analyses.fields.effective`) of a ViT's blocks or a CNN's
  stages: spread, r50 and r90 in pixels.

Relative depth is ``i / (n - 1)`` for an attention layer in block ``i`` of ``n`` blocks (the same
value as that block's ERF; see :func:`attention_depth`), and the ERF's own ``depth_fraction``
otherwise (0 = first measured stage of the model, 1 = last). Distances are in input pixels of each model's
own input; ``input_px`` (the input side) lets a reader compare models of different input sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .attention.distance import AttentionDistance
from .fields.effective import ReceptiveField

__all__ = ["Locality", "locality", "attention_depth", "METRICS", "COLUMNS"]

METRICS = {
    "attention_distance": "mean attention distance of one head (ViT)",
    "attention_distance_mean": "mean attention distance averaged over a layer's heads (ViT)",
    "erf_spread": "effective receptive field: gradient-mass-weighted mean distance from the centre unit",
    "erf_r50": "effective receptive field: radius holding 50% of the gradient mass",
    "erf_r90": "effective receptive field: radius holding 90% of the gradient mass",
}
COLUMNS = ["model", "kind", "metric", "layer", "depth", "depth_fraction", "head", "value_px", "input_px",
           "n_images"]


def attention_depth(d: AttentionDistance) -> tuple[np.ndarray, np.ndarray]:
    """Depth and relative depth of each attention layer: the index of the transformer block that holds
    it, as its family adapter numbers blocks (so two attentions of one parallel block share a depth,
    and each sits where its block's ERF does), over ``n - 1`` for ``n`` blocks; the layer's order
    where the result does not say."""
    L = d.distance.shape[0]
    depth = np.array(d.depths) if len(d.depths) == L else np.arange(L)
    return depth, depth / max(int(depth.max(initial=0)), 1)


def _side(size: Sequence[int]) -> float:
    """One number for an input's side: the side of a square, the geometric mean otherwise."""
    return float(np.sqrt(float(size[0]) * float(size[1])))


@dataclass(frozen=True)
class Locality:
    """Attention distances and receptive fields of several models on one depth axis.

    Attributes:
        distances: one :class:`AttentionDistance` per ViT, in pixels.
        fields: one :class:`ReceptiveField` per model (ViT or CNN).
    """

    distances: tuple[AttentionDistance, ...]
    fields: tuple[ReceptiveField, ...]

    def attention_by_depth(self, d: AttentionDistance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For one of :attr:`distances`: each layer's relative depth ``[layer]``, the distinct block
        depths ``[block]``, and the mean distance over heads (and over the layers of one block, for
        parallel blocks) at each ``[block]`` -- what the locality figure draws."""
        _, x = attention_depth(d)
        blocks = np.unique(x)
        with np.errstate(all="ignore"):
            means = np.array([np.nanmean(d.distance[x == v]) for v in blocks])
        return x, blocks, means

    @property
    def models(self) -> list[str]:
        """Model names in the order first seen (attention distances, then fields)."""
        names = [d.model for d in self.distances] + [f.model for f in self.fields]
        return list(dict.fromkeys(names))

    def to_frame(self):
        """Tidy frame, one row per value: the columns of :data:`COLUMNS`.

        ``kind`` is ``vit`` or ``cnn``; ``metric`` one of :data:`METRICS`; ``head`` is the head index
        for ``attention_distance`` rows and -1 otherwise; ``layer`` is the module name (the attention
        module for attention rows, the block or stage for ERF rows).
        """
        import pandas as pd

        rows = []
        for d in self.distances:
            L, H = d.distance.shape
            depth, frac = attention_depth(d)
            names = list(d.layer_names) or [str(i) for i in range(L)]
            side = _side(d.layout.input_size)
            for layer in range(L):
                base = {"model": d.model, "kind": "vit", "layer": names[layer], "depth": int(depth[layer]),
                        "depth_fraction": float(frac[layer]), "input_px": side, "n_images": d.n_images}
                for h in range(H):
                    rows.append({**base, "metric": "attention_distance", "head": h,
                                 "value_px": float(d.distance[layer, h])})
                rows.append({**base, "metric": "attention_distance_mean", "head": -1,
                             "value_px": float(np.nanmean(d.distance[layer]))})
        for f in self.fields:
            side = _side(f.input_size)
            for i, layer in enumerate(f.layers):
                base = {"model": f.model, "kind": f.kind, "layer": layer, "depth": int(f.depth[i]),
                        "depth_fraction": float(f.depth_fraction[i]), "head": -1, "input_px": side,
                        "n_images": f.n_images}
                for metric, values in (("erf_spread", f.spread_px), ("erf_r50", f.r50_px), ("erf_r90", f.r90_px)):
                    rows.append({**base, "metric": metric, "value_px": float(values[i])})
        return pd.DataFrame(rows, columns=COLUMNS)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per model: the first and last layer's head-mean attention distance (ViTs) and ERF spread,
        in pixels, and the input side; the key numbers a reader compares."""
        out: dict[str, dict[str, float]] = {}
        for d in self.distances:
            with np.errstate(all="ignore"):
                m = np.nanmean(d.distance, axis=1)
            out.setdefault(d.model, {}).update({
                "kind": "vit", "input_px": _side(d.layout.input_size),
                "attention_first_px": float(m[0]), "attention_last_px": float(m[-1]),
                "attention_min_head_first_px": float(np.nanmin(d.distance[0])),
                "uniform_attention_px": float(d.uniform)})
        for f in self.fields:
            out.setdefault(f.model, {}).update({
                "kind": f.kind, "input_px": _side(f.input_size),
                "erf_first_px": float(f.spread_px[0]), "erf_last_px": float(f.spread_px[-1]),
                "uniform_erf_px": float(np.mean(f.uniform_spread_px))})
        return out

    def to_dict(self) -> dict:
        """Metadata for a run record."""
        return {"models": self.models, "metrics": METRICS, "summary": self.summary(),
                "distances": [d.to_dict() for d in self.distances], "fields": [f.to_dict() for f in self.fields]}

    def plot(self, ax=None, **kwargs):
        """Relative depth against pixels, all models on one axes. Returns the axes."""
        from ..plotting.locality import plot_locality
        return plot_locality(self, ax=ax, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the figure and a short summary (:mod:`vitlens.runtime.display`)."""
        from ..runtime.display import result_html

        return result_html(self)


def locality(distances: Sequence[AttentionDistance] = (), fields: Sequence[ReceptiveField] = ()) -> Locality:
    """Combine attention distances (ViTs) and receptive fields (ViTs and CNNs) into one result.

    Raises:
        ValueError: nothing given, or a distance not in pixels (the shared axis is pixels).
    """
    distances, fields = tuple(distances), tuple(fields)
    if not distances and not fields:
        raise ValueError("locality needs at least one attention distance or receptive field")
    for d in distances:
        if d.units != "px":
            raise ValueError(f"attention distance of {d.model or 'a model'} is in {d.units}; locality compares "
                             "pixels, compute it with units='px'")
    return Locality(distances, fields)
