"""The report's sections: each figure's two-line reading and its key numbers, worded from the results.

Line one of a reading says what the figure shows; line two says what these numbers show, with
every word that states a direction ("falls", "grows", "fewer") chosen from the numbers themselves.
Layers and heads are counted from 1 in the text; the CSV files count from 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..analyses.attention.distance import AttentionDistance
from .page import Figure, Section

__all__ = ["distance_section", "posembed_section", "rollout_section", "locality_section", "data_section",
           "local_heads", "head_spread", "explorer_section", "posembed_reading", "INDEXING",
           "WEAK_CORRELATION", "BORDER_CONTRAST", "ROW_COLUMN"]

INDEXING = ("Layers and heads are counted from 1 on this page and in its figures; the CSV files count "
            "them from 0.")
WEAK_CORRELATION = 0.1  # |r| below this: similarity "hardly changes" with distance
BORDER_CONTRAST = 0.2  # edge-edge minus edge-interior similarity at least this: a border ring
ROW_COLUMN = 0.05  # |row/column score| below this: sharing a row or column "hardly matters"


def _px(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.1f} px"


def distance_section(ds: Sequence[AttentionDistance]) -> Section:
    lines, numbers = [], []
    for d in ds:
        with np.errstate(all="ignore"):
            m = np.nanmean(d.distance, axis=1)
        if not np.isfinite(d.distance).any():
            lines.append(f"{d.model}: no finite attention distance (every map held NaN or Inf).")
            continue
        li, hi = np.unravel_index(np.nanargmin(d.distance), d.distance.shape)
        low = d.distance[li, hi]
        lines.append(f"{d.model}: heads average {_px(m[0])} in layer 1 and {_px(m[-1])} in layer {d.num_layers}, "
                     f"against {d.uniform:.1f} px for attention spread evenly; its most local head (layer {li + 1}, "
                     f"head {hi + 1}) looks {low:.1f} px ({low / d.uniform:.0%} of even).")
        numbers += [(f"{d.model}: head mean in layer 1 / layer {d.num_layers}", f"{m[0]:.2f} / {m[-1]:.2f} px"),
                    (f"{d.model}: most local head", f"{low:.2f} px (layer {li + 1}, head {hi + 1})")]
        if int(d.n_nonfinite.sum()):
            numbers.append((f"{d.model}: head-images left out (NaN or Inf attention)", str(int(d.n_nonfinite.sum()))))
    numbers.append(("uniform attention over all patches", ", ".join(sorted({f"{d.uniform:.2f} px" for d in ds}))))
    return Section(
        "Mean attention distance by depth",
        figures=[Figure("figures/attention_distance.png",
                        "Mean attention distance of every head against depth (left) and each model's heads "
                        "sorted in its lowest and highest layers (right).")],
        reading=["How far each head looks, in input pixels, averaged over queries and images (ViT paper "
                 "Fig. 7 right): low dots are local heads, dots near the dashed line attend everywhere.",
                 " ".join(lines)],
        numbers=numbers, files=[("attention_distance.csv", "data/attention_distance.csv")],
        anchor="attention-distance")


def _trend(r: float, long: bool = True) -> str:
    if not math.isfinite(r):
        return "cannot be related to distance (constant similarity or a one-patch grid)"
    what = f"r = {r:+.2f} between cosine similarity and patch distance" if long else f"r = {r:+.2f}"
    if abs(r) < WEAK_CORRELATION:
        return f"hardly changes with distance ({what})"
    return f"{'falls' if r < 0 else 'rises'} with distance ({what})"


def _border(c: float, bb: float, bi: float) -> str:
    if not math.isfinite(c):
        return "the grid has no interior patches to set its edge against"
    if c >= BORDER_CONTRAST:
        return (f"edge patches resemble each other (mean cosine {bb:+.2f}) and differ from interior ones "
                f"({bi:+.2f}): a border ring (contrast {c:+.2f})")
    if c <= -BORDER_CONTRAST:
        return (f"edge patches are less alike among themselves (mean cosine {bb:+.2f}) than with interior ones "
                f"({bi:+.2f}; contrast {c:+.2f})")
    return f"edge patches are not set apart from interior ones (contrast {c:+.2f})"


def _row_column(rc: float) -> str:
    if not math.isfinite(rc):
        return "patches cannot be compared by row and column"
    if abs(rc) < ROW_COLUMN:
        return f"sharing a row or column hardly matters (score {rc:+.2f})"
    return (f"patches in the same row or column have a mean similarity {abs(rc):.2f} "
            f"{'above' if rc >= 0 else 'below'} that of other patches")


def posembed_reading(summary: dict) -> str:
    """One model's reading, worded only from its ``summary()`` numbers (None for undefined)."""
    def num(key):
        v = summary.get(key)
        return float("nan") if v is None else float(v)

    r_all, r_in, c = num("distance_correlation_all"), num("distance_correlation_interior"), num("border_contrast")
    parts = [f"over all patches similarity {_trend(r_all)}"]
    if math.isfinite(r_in):
        parts.append(f"among interior patches it {_trend(r_in, long=False)}")
    parts.append(_border(c, num("border_border_mean"), num("border_interior_mean")))
    parts.append(_row_column(num("row_column_score")))
    text = f"{summary.get('model', '')}: " + "; ".join(parts) + "."
    if (math.isfinite(r_all) and math.isfinite(r_in) and c >= BORDER_CONTRAST
            and abs(r_in) >= WEAK_CORRELATION and abs(r_all) < abs(r_in) / 2):
        text += (" The correlation over all patches is weaker than among interior ones: it mixes the ring "
                 "(far-apart edge patches that are alike) with the fall-off inside it.")
    return text


def posembed_section(results, skipped: Sequence[str]) -> Section:
    if not results:
        return Section("Position-embedding similarity", note="No ViT here has an absolute position-embedding "
                       "table: " + "; ".join(skipped), anchor="position-embeddings")
    lines, numbers, notes = [], [], []

    def f(v, fmt="+.3f"):
        return "n/a" if v is None else format(v, fmt)

    for r in results:
        s = r.summary()
        lines.append(posembed_reading(s))
        numbers += [(f"{r.model}: correlation of similarity with distance, all / interior patches",
                     f"{f(s['distance_correlation_all'])} / {f(s['distance_correlation_interior'])}"),
                    (f"{r.model}: border contrast (edge-edge {f(s['border_border_mean'], '+.2f')}, "
                     f"edge-interior {f(s['border_interior_mean'], '+.2f')})", f(s["border_contrast"])),
                    (f"{r.model}: same row/column minus other patches", f(s["row_column_score"]))]
        notes += [f"{r.model}: {n}" for n in r.notes]
    notes += [f"not shown: {s}" for s in skipped]
    return Section(
        "Position-embedding similarity",
        figures=[Figure("figures/position_embeddings.png",
                        "Each tile: cosine similarity of one patch's position embedding with every patch's.")],
        reading=["Each tile is one patch; its colours show how similar that patch's position embedding is to "
                 "every other patch's (ViT paper Fig. 7 centre). Edge patches form the border ring; the others "
                 "are interior.", " ".join(lines)],
        numbers=numbers, files=[("position_embeddings.json", "data/position_embeddings.json")],
        note="; ".join(notes), anchor="position-embeddings")


def rollout_section(scores: pd.DataFrame, sheets) -> Section:
    """``scores``: one row per (model, image) with ``readout`` and, where masks were scored,
    ``mask_share``, ``mask_area`` and ``pointing_hit``; ``sheets``: ``(model, figure path)`` of each
    model's contact sheet (one model name alone: ``figures/rollout.png``)."""
    if isinstance(sheets, str):
        sheets = [(sheets, "figures/rollout.png")]
    lines, numbers, unscored = [], [], []
    for name, g in scores.groupby("model", sort=False):
        if "mask_share" in g and g.mask_share.notna().any():
            share, chance, hit = g.mask_share.mean(), g.mask_area.mean(), g.pointing_hit.astype(float).mean()
            lines.append(f"{name}: {share:.0%} of the rollout mass lies on the object, which covers {chance:.0%} "
                         f"of the input (a map blind to the object would put {chance:.0%} there); the map's "
                         f"peak is on the object in {hit:.0%} of images.")
            numbers += [(f"{name}: mean mask share (chance)", f"{share:.3f} ({chance:.3f})"),
                        (f"{name}: pointing game hits", f"{hit:.1%} of {len(g)} images")]
        else:
            unscored.append(name)
        if "correct" in g and g.correct.notna().any():
            acc = g.correct.dropna().astype(float).mean()
            numbers.append((f"{name}: correct on these images", f"{acc:.1%} of {int(g.correct.notna().sum())}"))
    if unscored:
        lines.append(f"No object masks for {', '.join(unscored)} on these images, so only the maps are shown.")
    readouts = set(scores.readout)
    target = ("the class token" if readouts == {"cls"} else "the patch tokens (mean over patch queries: no class "
              "token)" if readouts == {"patch_mean"} else "the class token, or the patch tokens for models without one")
    figures = [Figure(src, f"Attention rollout of {name} over the first images, each titled with its file name"
                      f"{_titles(scores[scores.model == name])} (each map scaled from its minimum to its maximum; "
                      "colour bar: 0 is a map's minimum, 1 its maximum).") for name, src in sheets]
    if "mask_share" in scores and scores.mask_share.notna().any():
        figures.append(Figure("figures/rollout_mask_share.png",
                              "Each image's share of rollout mass on its object (coloured dots) beside the object's "
                              "share of the input (grey diamonds, where a map blind to the object would put it); "
                              "bars: the means quoted in the table."))
    return Section(
        "Attention rollout",
        figures=figures,
        reading=[f"Attention flow from the input patches to {target} through all layers (Abnar & Zuidema "
                 "2020), with half of each layer's weight on the residual path.", " ".join(lines)],
        numbers=numbers, files=[("rollout_scores.csv", "data/rollout_scores.csv")], anchor="rollout")


def _titles(g: pd.DataFrame) -> str:
    """What a contact sheet's titles say beyond the file name: the true class only where it is known."""
    known = lambda col: col in g and g[col].notna().any()  # noqa: E731
    if known("label") and known("predicted"):
        return " and its true and predicted class"
    if known("predicted"):
        return " and the model's predicted class (the true class of these images is not known)"
    return ""


def locality_section(res) -> Section:
    s = res.summary()
    parts, numbers = [], []
    for n, v in s.items():
        a, e0, e1 = v.get("attention_first_px"), v["erf_first_px"], v["erf_last_px"]
        grow = "grows" if e1 > e0 else "shrinks" if e1 < e0 else "stays"
        if a is not None:
            link = "but" if e0 < a else "and"
            parts.append(f"{n}'s first-layer heads average {a:.1f} px of attention distance, {link} its first "
                         f"block's gradient receptive field spreads {e0:.1f} px ({grow} to {e1:.1f} px by its last)")
            numbers.append((f"{n}: attention distance, first / last layer",
                            f"{a:.2f} / {v['attention_last_px']:.2f} px"))
        else:
            parts.append(f"{n}'s receptive field {grow} from {e0:.1f} px in its first stage to {e1:.1f} px in its last")
        numbers.append((f"{n}: receptive-field spread, first / last layer",
                        f"{e0:.2f} / {e1:.2f} px ({v['input_px']:.0f} px input)"))
    return Section(
        "ViT versus CNN locality",
        figures=[Figure("figures/locality.png", "Two different quantities on one pixel axis, against relative "
                        "depth: attention distance (ViTs; filled dots per head, solid line of layer means), a mean "
                        "over all queries and images; and gradient spread (dashed lines, hollow markers), the "
                        "effective receptive field of one centre unit. Equal pixels do not mean equal behaviour."),
                 Figure("figures/receptive_field.png", "Effective receptive field by depth, and its maps.")],
        reading=["How far each layer looks, on one axis: ViT heads by attention distance, every model by the "
                 "spread of its effective receptive field (Luo et al. 2016; Raghu et al. 2021).",
                 "; ".join(parts) + "."],
        numbers=numbers,
        files=[("locality.csv", "data/locality.csv"), ("receptive_field.csv", "data/receptive_field.csv")],
        anchor="locality")


def head_spread(d: AttentionDistance) -> float:
    """Standard deviation across the heads of the lower half of the layers, in px (ddof=1; 0 for one head)."""
    low = d.distance[:max(1, d.num_layers // 2)].ravel()
    low = low[np.isfinite(low)]
    return float(np.std(low, ddof=1)) if low.size > 1 else 0.0


def local_heads(d: AttentionDistance, fraction: float) -> tuple[int, int, float]:
    """Local heads in the lower half of the layers (distance below ``fraction`` times uniform
    attention's): ``(count, heads there, their mean distance in px)``."""
    half = max(1, d.num_layers // 2)
    low = d.distance[:half]
    with np.errstate(all="ignore"):
        return int(d.local_head_counts(fraction)[:half].sum()), int(low.size), float(np.nanmean(low))


def sweep_reading(runs: pd.DataFrame) -> str:
    """The data-size sweep in one sentence, from its run table (one row per run)."""
    n_local = int(runs.local_heads_lower.sum() + runs.local_heads_upper.sum())
    lo, hi = runs.distinct_images.min(), runs.distinct_images.max()
    parts = []
    for grid, g in runs.groupby("grid", sort=True):
        parts.append(f"on the {grid} x {grid} grid the lower layers' mean distance stays between "
                     f"{g.mean_distance_lower_px.min():.1f} and {g.mean_distance_lower_px.max():.1f} px (uniform "
                     f"{g.uniform_px.iloc[0]:.1f} px) at {100 * g.accuracy.min():.0f} to {100 * g.accuracy.max():.0f}% "
                     "held-out accuracy")
    head = (f"In the data-size sweep ({len(runs)} runs of the same ViT trained from scratch on {lo:,} to {hi:,} "
            "distinct images) " + ("no run grows a local head in any layer" if n_local == 0 else
                                  f"{n_local} local heads appear across the runs"))
    return head + ": " + "; ".join(parts) + "."


def data_section(full: AttentionDistance, less: AttentionDistance, fraction: float,
                 sweep: pd.DataFrame | None = None) -> Section:
    nf, total, mf = local_heads(full, fraction)
    nl, _, ml = local_heads(less, fraction)
    half = max(1, full.num_layers // 2)
    sf, sl = head_spread(full), head_spread(less)
    diff = (f"{abs(ml - mf):.1f} px {'farther' if ml > mf else 'nearer'} (while their heads spread with a "
            f"standard deviation of {sl:.1f} and {sf:.1f} px)")
    if nf == 0 and nl == 0:
        verdict = (f"Neither model has a local head in layers 1-{half} (none below {fraction:g} x uniform), so "
                   "these models cannot show the loss of local heads Raghu et al. report; with a tenth of the "
                   f"data the lower-layer heads look {diff} on average ({ml:.1f} against {mf:.1f} px).")
    elif nl < nf:
        verdict = (f"With a tenth of the data the ViT has {nl} local heads in layers 1-{half} against {nf} with all "
                   f"of it, and its lower-layer heads look {diff} on average: fewer local heads with less data, "
                   "the direction Raghu et al. found.")
    else:
        verdict = (f"With a tenth of the data the ViT has {nl} local heads in layers 1-{half} against {nf} with all "
                   f"of it (its lower-layer heads look {diff} on average): here less data did not cost local heads.")
    figures = [Figure("figures/less_data.png", "Attention distance by depth of the ViT trained on all the images "
                      "and of the same ViT trained on a tenth of them, with the local-head line.")]
    reading = ["Raghu et al. (2021) found that ViTs trained on less data lose the local heads of their lower "
               "layers; here the same ViT is trained on all and on a tenth of the shapes images, for as many steps.",
               verdict]
    if sweep is not None and len(sweep):
        figures.append(Figure("figures/locality_sweep.png", "The data-size sweep shipped with vitlens "
                              "(analyses/locality_sweep.py): attention distance of the lower layers and of the most "
                              "local head against distinct training images."))
        reading.append(sweep_reading(sweep))
    return Section(
        "Less training data: local heads",
        figures=figures,
        reading=reading,
        numbers=[(f"{full.model}: local heads in layers 1-{half}", f"{nf} of {total} (mean {mf:.2f} px, "
                  f"sd across heads {sf:.2f} px)"),
                 (f"{less.model}: local heads in layers 1-{half}", f"{nl} of {total} (mean {ml:.2f} px, "
                  f"sd across heads {sl:.2f} px)"),
                 ("local-head threshold", f"{fraction:g} x uniform = {fraction * full.uniform:.2f} px")],
        anchor="less-data")


def explorer_section(data: dict, viewer: str, quantisation: str) -> Section:
    """The attention explorer: the viewer and what its data holds."""
    n = len(data["images"])
    return Section(
        "Attention explorer",
        reading=[f"Pick an image, a layer and a head, then click a patch: the overlay is that head's attention "
                 f"from the chosen query patch over the image's {data['grid'][0]} x {data['grid'][1]} patches, "
                 f"for {data['model']} on the first {n} image{'' if n == 1 else 's'}; the line below it gives the "
                 f"head's mean attention distance over {data['distance_images']} images.",
                 f"Values are the captured post-softmax attention on patch keys (prefix-token columns left "
                 f"out, rows not renormalised), stored as {quantisation}."],
        html=viewer, files=[("explorer.js", "data/explorer.js")], anchor="explorer")

