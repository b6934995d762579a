"""Whether a run shows the paper's finding, read from its numbers.

Each paper figure gets a :class:`Reading`: sentences that state the numbers and, for each part of
the finding, whether these numbers show it (every verdict is a comparison of numbers, with the
thresholds below named), plus the key numbers as a table. Layers and heads are counted from 1.

Conventions (documented defaults; the papers read their figures by eye):

- a head is *local* when its mean attention distance is below ``LOCAL_FRACTION`` (0.5) times the
  distance of uniform attention over all patches, and *global* at or above ``GLOBAL_FRACTION`` (0.8)
  times it;
- a receptive field is *global* when its spread reaches ``GLOBAL_FRACTION`` of the spread of a
  map covering the whole input;
- embedding filters are *structured* when their first components explain at least
  ``FILTER_STRUCTURE`` (1.5) times the variance the same number of components explains for Gaussian
  random filters of the same shape (a seeded draw);
- position embeddings *encode distance* when the correlation of similarity with patch distance is
  at most ``POSITION_CORRELATION`` (-0.3);
- CKA layers are *far apart* when their depth fractions differ by at least 0.5;
- one distance is *longer* than another when it exceeds it by at least ``MARGIN`` (0.05) times the
  distance of uniform attention, and one mean CKA higher than another when it exceeds it by at
  least ``MARGIN``; smaller differences count as no difference;
- the ViT's skip ratios are *much higher* than the ResNet's when their mean over blocks, sub-layers
  and token kinds (finite values) is at least ``SKIP_FACTOR`` (2) times the ResNet's;
- final-block tokens *localise* when at least ``OWN_PATCH`` (half) of them are most similar to their
  own input patch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...presets import PaperFigure
from .analyses import PanelRun

__all__ = ["Reading", "read_figure", "LOCAL_FRACTION", "GLOBAL_FRACTION", "FILTER_STRUCTURE",
           "POSITION_CORRELATION", "FAR_APART", "MARGIN", "SKIP_FACTOR", "OWN_PATCH", "random_filter_share"]

LOCAL_FRACTION = 0.5
GLOBAL_FRACTION = 0.8
FILTER_STRUCTURE = 1.5
POSITION_CORRELATION = -0.3
FAR_APART = 0.5
MARGIN = 0.05
SKIP_FACTOR = 2.0
OWN_PATCH = 0.5

SHOWN, NOT_SHOWN, PARTLY, PENDING, NONE = "shown", "not shown", "partly shown", "pending", "no verdict"


@dataclass
class Reading:
    """What a run's numbers say about one paper figure.

    Attributes:
        lines: sentences stating the numbers and what they show.
        numbers: key numbers, ``(label, value)``.
        verdicts: one per part of the finding checked: True shown, False not shown.
        pending: analyses that could not run, with why.
    """

    lines: list[str] = field(default_factory=list)
    numbers: list[tuple[str, str]] = field(default_factory=list)
    verdicts: list[bool] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if not self.verdicts:
            return PENDING if self.pending else NONE
        if all(self.verdicts):
            return SHOWN if not self.pending else PARTLY
        return NOT_SHOWN if not any(self.verdicts) else PARTLY

    def summary(self) -> str:
        """One sentence: whether this run shows the finding."""
        return {SHOWN: "This run shows the paper's finding.",
                NOT_SHOWN: "This run does not show the paper's finding.",
                PARTLY: "This run shows part of the paper's finding (see each part above).",
                PENDING: "This figure's analyses are not part of this installation, so nothing was measured.",
                NONE: "No verdict is computed for this figure."}[self.verdict]

    def check(self, shown: bool, text: str, as_found: str = "as the paper found",
              unlike: str = "unlike the paper's finding") -> None:
        self.lines.append(f"{text}: {as_found}." if shown else f"{text}: {unlike}.")
        self.verdicts.append(bool(shown))


def _px(v: float, units: str = "px") -> str:
    return f"{v:.1f} {units}" if np.isfinite(v) else "n/a"


def _heads(d, layers: Sequence[int]) -> tuple[int, int, int]:
    """(local heads, global heads, heads) over ``layers`` of an attention distance result."""
    vals = np.asarray(d.distance)[list(layers)]
    with np.errstate(invalid="ignore"):
        return (int((vals < LOCAL_FRACTION * d.uniform).sum()), int((vals >= GLOBAL_FRACTION * d.uniform).sum()),
                int(np.isfinite(vals).sum()))


def _blocks(layers: Sequence[int]) -> str:
    ls = [i + 1 for i in layers]
    return f"block {ls[0]}" if len(ls) == 1 else f"blocks {ls[0]}-{ls[-1]}"


def _lowest(d, k: int = 2) -> list[int]:
    return list(range(min(k, d.num_layers)))


def _highest(d, k: int = 2) -> list[int]:
    return list(range(max(0, d.num_layers - k), d.num_layers))


def _later_half(d) -> list[int]:
    return list(range(d.num_layers // 2, d.num_layers))


# --------------------------------------------------------------------------- weights


def random_filter_share(shape: Sequence[int], k: int, seed: int = 0) -> float:
    """Variance share of the first ``k`` principal components of Gaussian random filters of ``shape``
    ``(dim, 3, patch_h, patch_w)``: what ``k`` components explain when there is no structure."""
    d = int(shape[0])
    x = np.random.default_rng(seed).standard_normal((d, int(np.prod(shape[1:]))))
    x -= x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False) ** 2
    return float(s[:k].sum() / s.sum())


def _filters(run: PanelRun, rd: Reading) -> None:
    for r in run.results:
        k = r.n_components
        share = float(np.sum(r.explained_variance_ratio))
        base = random_filter_share(r.filters_shape, k)
        rd.numbers += [(f"{r.model}: variance in PC1-{k}", f"{share:.1%}"),
                       (f"{r.model}: the same for Gaussian random filters", f"{base:.1%}")]
        rd.check(share >= FILTER_STRUCTURE * base,
                 f"{r.model}: the first {k} components of its {r.filters_shape[0]} filters explain {share:.1%} of "
                 f"their variance, {share / base:.2f} times the {base:.1%} they explain for random filters of the "
                 "same shape",
                 "the filters have the low-dimensional structure the paper's components show",
                 "no more structure than random filters, unlike the paper's filters")


def _posembed(run: PanelRun, rd: Reading) -> None:
    for r in run.results:
        c = r.distance_correlation
        rd.numbers.append((f"{r.model}: correlation of similarity with patch distance", f"{c:.3f}"))
        rd.check(np.isfinite(c) and c <= POSITION_CORRELATION,
                 f"{r.model}: the similarity of two patches' position embeddings correlates with their distance "
                 f"at r = {c:.2f}",
                 "nearby patches have the more similar embeddings, as the paper found",
                 "the embeddings do not encode distance, unlike the paper's")


# --------------------------------------------------------------------------- attention distance


def _fig7_distance(run: PanelRun, rd: Reading) -> None:
    for d in run.results:
        local, wide, n = _heads(d, [0])
        first = float(np.nanmean(d.distance[0]))
        later = float(np.nanmean(d.distance[_later_half(d)]))
        u = d.uniform
        rd.numbers += [(f"{d.model}: block 1 local / global heads", f"{local} / {wide} of {n}"),
                       (f"{d.model}: mean distance block 1 / {_blocks(_later_half(d))}",
                        f"{_px(first, d.units)} / {_px(later, d.units)} (uniform {_px(u, d.units)})")]
        rd.check(local >= 1 and wide >= 1,
                 f"{d.model}: lowest block: {local} of {n} heads below half the uniform distance (local) and "
                 f"{wide} at or above {GLOBAL_FRACTION:.0%} of it (global)",
                 "local and global heads side by side, as the paper found",
                 "not both kinds of head, unlike the paper's lowest layers")
        rd.check(later - first >= MARGIN * u,
                 f"{d.model}: mean distance {_px(first, d.units)} in block 1 and {_px(later, d.units)} over "
                 f"{_blocks(_later_half(d))}",
                 "distance grows with depth, as the paper found", "distance does not grow with depth, unlike the paper")


def _sorted_heads(run: PanelRun, rd: Reading) -> None:
    for d in run.results:
        lo, hi = _lowest(d), _highest(d)
        local, wide, n = _heads(d, lo)
        hlocal, hwide, hn = _heads(d, hi)
        rd.numbers += [(f"{d.model}: {_blocks(lo)} local / global heads", f"{local} / {wide} of {n}"),
                       (f"{d.model}: {_blocks(hi)} local / global heads", f"{hlocal} / {hwide} of {hn}")]
        rd.check(local >= 1 and wide >= 1 and hlocal == 0,
                 f"{d.model}: {_blocks(lo)}: {local} of {n} heads local and {wide} global; {_blocks(hi)}: {hlocal} "
                 f"of {hn} local and {hwide} global",
                 "local and global heads low down, none local at the top, as the paper found",
                 "not the paper's pattern (local and global heads low down, none local at the top)")


def _twins(run: PanelRun, rd: Reading, earlier: Sequence[PanelRun]) -> None:
    """Each ImageNet-1k model against its ImageNet-21k twin (same architecture) from ``earlier``."""
    bigger = {c: r for pr in earlier for c, r in zip(pr.checkpoints, pr.results)}
    for c, d in zip(run.checkpoints, run.results):
        twin = bigger.get(c.replace("_in1k", "_in21k"))
        local, _, n = _heads(d, _lowest(d))
        if twin is None:
            rd.lines.append(f"{d.model}: {local} of {n} heads local in {_blocks(_lowest(d))}; its ImageNet-21k twin "
                            "is not in this run, so there is nothing to compare with.")
            continue
        tlocal, _, tn = _heads(twin, _lowest(twin))
        rd.numbers.append((f"{d.model} / {twin.model}: local heads in {_blocks(_lowest(d))}",
                           f"{local} of {n} / {tlocal} of {tn}"))
        rd.check(local < tlocal,
                 f"{d.model} (ImageNet-1k): {local} of {n} heads local in {_blocks(_lowest(d))}, against {tlocal} of "
                 f"{tn} for {twin.model} (ImageNet-21k)",
                 "fewer local heads with less pre-training data, as the paper found",
                 "not fewer local heads with less data, unlike the paper's finding")


def _pretraining(run: PanelRun, rd: Reading) -> None:
    later = {c: float(np.nanmean(d.distance[_later_half(d)])) for c, d in zip(run.checkpoints, run.results)}
    for c, d in zip(run.checkpoints, run.results):
        rd.numbers.append((f"{d.model}: mean distance over {_blocks(_later_half(d))}",
                           f"{_px(later[c], d.units)} (uniform {_px(d.uniform, d.units)})"))
    mae = next((c for c in run.checkpoints if c.endswith(".mae")), None)
    others = [c for c in run.checkpoints if c != mae]
    if mae is None or not others:
        return
    name = dict(zip(run.checkpoints, run.names))
    u = max(d.uniform for d in run.results)
    rd.check(all(later[o] - later[mae] >= MARGIN * u for o in others),
             f"later half of the network: {name[mae]} attends at {_px(later[mae])} on average, against "
             + " and ".join(f"{_px(later[o])} for {name[o]}" for o in others),
             "masked image modelling keeps the shortest attention, as Park et al. found",
             "masked image modelling does not keep the shortest attention, unlike Park et al.'s finding")


def _entropy(run: PanelRun, rd: Reading) -> None:
    parts = []
    for d in run.results:
        e = float(np.nanmean(np.asarray(d.entropy)[_later_half(d)]))
        rd.numbers.append((f"{d.model}: mean normalised entropy over {_blocks(_later_half(d))}", f"{e:.3f}"))
        parts.append(f"{d.model} {e:.2f}")
    rd.lines.append("Normalised attention entropy over the later half (1: uniform attention, 0: one key): "
                    + ", ".join(parts) + "; the paper's finding concerns distance, so entropy gets no verdict.")


# --------------------------------------------------------------------------- receptive fields and CKA


def _global_depth(r) -> float:
    """The first depth fraction at which the spread reaches ``GLOBAL_FRACTION`` of a whole-input map's."""
    share = np.asarray(r.spread_px) / np.asarray(r.uniform_spread_px)
    hit = np.flatnonzero(share >= GLOBAL_FRACTION)
    return float(r.depth_fraction[hit[0]]) if hit.size else float("inf")


def _erf(run: PanelRun, rd: Reading) -> None:
    at = {}
    for r in run.results:
        g = _global_depth(r)
        at[r.kind] = (r, g)
        first = float(r.spread_px[0] / r.uniform_spread_px[0])
        rd.numbers += [(f"{r.model}: spread at the first layer", f"{first:.0%} of a whole-input map"),
                       (f"{r.model}: global from depth", "never" if not np.isfinite(g) else f"{g:.2f}")]
    if "vit" not in at or "cnn" not in at:
        return
    (v, gv), (c, gc) = at["vit"], at["cnn"]

    def when(g):
        return "never" if not np.isfinite(g) else f"from depth {g:.2f} (0 first layer, 1 last)"

    rd.check(gv <= 0.5 and gc > gv,
             f"the receptive field covers {GLOBAL_FRACTION:.0%} of a whole-input map's spread: {v.model} "
             f"{when(gv)}, {c.model} {when(gc)}",
             "the ViT turns global within the first half and before the ResNet, as the paper found",
             "the ViT does not turn global both within the first half and before the ResNet, unlike the paper's "
             "finding")


def _far_mean(r) -> float:
    da, db = np.meshgrid(r.depth_fraction_a, r.depth_fraction_b, indexing="ij")
    far = np.abs(da - db) >= FAR_APART
    vals = np.asarray(r.cka)[far]
    return float(np.nanmean(vals)) if vals.size else float("nan")


def _cka_self(runs: Sequence[PanelRun], rd: Reading) -> None:
    res = [(pr.checkpoints[i], r) for pr in runs for i, r in enumerate(pr.results)]
    means = {c: _far_mean(r) for c, r in res}
    for c, r in res:
        rd.numbers.append((f"{r.model_a}: mean CKA between layers at least {FAR_APART} of the depth apart",
                           f"{means[c]:.3f}"))
    if len(res) == 2:
        (cv, v), (cc, c) = res
        rd.check(means[cv] - means[cc] >= MARGIN,
                 f"layers far apart in depth: mean CKA {means[cv]:.2f} in {v.model_a} and {means[cc]:.2f} in "
                 f"{c.model_a}",
                 "the ViT's representations are the more uniform across depth, as the paper found",
                 "the ViT's representations are not the more uniform, unlike the paper's finding")


def _cka_cross(run: PanelRun, rd: Reading) -> None:
    for r in run.results:
        lower = np.flatnonzero(np.asarray(r.depth_fraction_b) <= 0.5)
        cka = np.asarray(r.cka)[:, lower]
        if not lower.size or not np.isfinite(cka).any(axis=0).all():
            rd.lines.append(f"{r.model_a} vs {r.model_b}: no finite CKA for the ResNet's lower layers.")
            continue
        best = np.asarray(r.depth_fraction_a)[np.nanargmax(cka, axis=0)]
        own = float(np.mean(np.asarray(r.depth_fraction_b)[lower]))
        label = f"{r.model_b}'s lower-half layers: mean depth / mean depth of the most similar {r.model_a} layer"
        rd.numbers.append((label, f"{own:.2f} / {float(best.mean()):.2f}"))
        rd.check(float(best.mean()) < own,
                 f"the lower half of {r.model_b}'s layers (mean depth {own:.2f}) is most similar to {r.model_a} "
                 f"layers at mean depth {float(best.mean()):.2f}",
                 "they match lower ViT layers, as the paper found",
                 "they do not match lower ViT layers, unlike the paper's finding")


def _by_kind(run: PanelRun) -> dict:
    return {getattr(r, "kind", ""): r for r in run.results}


def _skip(run: PanelRun, rd: Reading) -> None:
    means = {}
    for r in run.results:
        vals = np.asarray(r.ratio, dtype=float)
        vals = vals[np.isfinite(vals)]
        means[r.kind] = float(vals.mean()) if vals.size else float("nan")
        rd.numbers.append((f"{r.model}: mean skip-connection norm ratio", f"{means[r.kind]:.2f}"))
    kinds = _by_kind(run)
    if "vit" in kinds and "cnn" in kinds:
        v, c = means["vit"], means["cnn"]
        rd.check(np.isfinite(v) and np.isfinite(c) and v >= SKIP_FACTOR * c,
                 f"mean ratio of skip path to branch norm: {v:.2f} in {kinds['vit'].model}, {c:.2f} in "
                 f"{kinds['cnn'].model}",
                 f"the ViT's is at least {SKIP_FACTOR:g} times the ResNet's, as the paper found",
                 f"the ViT's is not {SKIP_FACTOR:g} times the ResNet's, unlike the paper's finding")


def _localization(run: PanelRun, rd: Reading) -> None:
    for r in run.results:
        rd.numbers += [(f"{r.model}: tokens most similar to their own input patch", f"{r.own_patch_share:.0%}"),
                       (f"{r.model}: CKA with the own patch / with the others", f"{r.cka_own:.3f} / {r.cka_other:.3f}")]
    kinds = _by_kind(run)
    if "vit" in kinds and "cnn" in kinds:
        v, c = kinds["vit"], kinds["cnn"]
        enough, more = v.own_patch_share >= OWN_PATCH, v.own_patch_share > c.own_patch_share
        why = " and ".join(w for w, bad in ((f"fewer than {OWN_PATCH:.0%} of the ViT's tokens find their own patch",
                                             not enough), ("the ViT's share is not above the ResNet's", not more))
                           if bad)
        rd.check(enough and more,
                 f"{v.own_patch_share:.0%} of {v.model}'s tokens in {v.layer} are most similar to their own input "
                 f"patch, against {c.own_patch_share:.0%} of {c.model}'s positions",
                 "the ViT localises, and more than the ResNet, as the paper found",
                 f"{why}, unlike the paper's finding")


def _generic(run: PanelRun, rd: Reading) -> None:
    rd.lines.append(f"{run.panel.title}: measured for {', '.join(run.names)}; vitlens words no verdict for "
                    "this analysis yet; the figure and the CSV hold the numbers.")


# --------------------------------------------------------------------------- one figure


def read_figure(figure: PaperFigure, runs: Sequence[PanelRun], earlier: dict[str, Sequence[PanelRun]]
                ) -> Reading:
    """The reading of one paper figure from its panels' runs; ``earlier`` holds the runs of the
    preset's figures read before it, by figure key (for comparisons across figures)."""
    rd = Reading()
    ran = [r for r in runs if not r.pending]
    for r in runs:
        if r.pending:
            rd.pending.append(f"{r.panel.title}: not measured: {r.pending}.")
    cka_self = [r for r in ran if r.panel.analysis == "layer_cka" and r.panel.option("pairs") == "self"]
    if cka_self:
        _cka_self(cka_self, rd)
    for r in ran:
        a = r.panel.analysis
        if a == "embedding_filters":
            _filters(r, rd)
        elif a == "position_embedding_similarity":
            _posembed(r, rd)
        elif a == "attention_distance" and r.panel.option("twins_of"):
            _twins(r, rd, earlier.get(r.panel.option("twins_of"), ()))
        elif a == "attention_distance" and r.panel.option("sorted"):
            _sorted_heads(r, rd)
        elif a == "attention_distance" and any(c.endswith(".mae") for c in r.panel.checkpoints):
            _pretraining(r, rd)
        elif a == "attention_distance":
            _fig7_distance(r, rd)
        elif a == "attention_entropy":
            _entropy(r, rd)
        elif a == "effective_receptive_field":
            _erf(r, rd)
        elif a == "layer_cka" and r.panel.option("pairs") == "cross":
            _cka_cross(r, rd)
        elif a == "skip_ratios":
            _skip(r, rd)
        elif a == "spatial_localization":
            _localization(r, rd)
        elif a != "layer_cka":
            _generic(r, rd)
    return rd
