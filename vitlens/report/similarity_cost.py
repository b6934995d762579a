"""The report's representation-similarity (CKA) and cost sections: what they compute, what they
save and how their readings are worded from the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..runtime.io import save_csv, save_figure, write_json
from .cost_plan import COST_SCALES
from .page import Figure, Section

__all__ = ["cka_section", "cka_reading", "cost_section", "cost_base_px", "COST_SCALES"]



def cka_reading(self_cka, cross_cka=None) -> list[str]:
    """Readings of a ViT's CKA against itself and against a CNN, from the matrices alone."""
    c = np.asarray(self_cka.cka)
    n = c.shape[0]
    adjacent = float(np.mean([c[i, i + 1] for i in range(n - 1)])) if n > 1 else float("nan")
    lines = [f"{self_cka.model_a} against itself: neighbouring blocks have a mean CKA of {adjacent:.2f}, its first "
             f"and last blocks {c[0, -1]:.2f}" + (" (representations change gradually with depth)."
                                                  if n > 2 and c[0, -1] < adjacent else ".")]
    if cross_cka is not None:
        x = np.asarray(cross_cka.cka)
        best = x.argmax(axis=1)
        rows = [(i, int(best[i]), float(x[i, best[i]])) for i in (0, x.shape[0] - 1)]
        a, b = cross_cka.layers_a, cross_cka.layers_b
        parts = [f"its {'first' if i == 0 else 'last'} block ({a[i]}) is most similar to {cross_cka.model_b}'s "
                 f"{b[j]} (CKA {v:.2f})" for i, j, v in rows]
        i, j = np.unravel_index(np.argmax(x), x.shape)
        lines.append(f"{cross_cka.model_a} against {cross_cka.model_b}: " + "; ".join(parts)
                     + f"; the highest CKA between the two is {x[i, j]:.2f} ({a[i]} and {b[j]}).")
        monotone = bool(np.all(np.diff(best) >= 0))
        lines.append(f"Along the ViT's blocks the best-matching CNN layer goes {', '.join(b[k] for k in best)}: "
                     + ("it never moves to an earlier layer as the ViT gets deeper." if monotone else
                        "not in the CNN's order, so depth in one does not map onto depth in the other."))
    return lines


def cka_section(vit, cnn, images, out: Path, *, batch_size: int, precision: str, workers: int,
                names: tuple[str, str]) -> Section:
    """CKA of ``vit`` against itself and against ``cnn`` over ``images`` (one ImageSet per model,
    the same files), saved under ``out/data`` and ``out/figures``."""
    import matplotlib.pyplot as plt

    from ..analyses.representations.cka import MIN_BATCH, layer_cka
    from ..plotting.cka import cka_figure, colour_scale

    if len(images[0]) < MIN_BATCH or batch_size < MIN_BATCH:
        return Section("Representation similarity (CKA)", anchor="cka", reading=[
            f"Not computed: the unbiased HSIC estimator behind CKA needs minibatches of at least {MIN_BATCH} images, "
            f"and this report has {len(images[0])} images in minibatches of {batch_size}."])
    self_cka = layer_cka(vit, images[0], batch_size=batch_size, precision=precision, workers=workers,
                         name_a=names[0])
    results = [self_cka]
    cross = None
    if cnn is not None:
        cross = layer_cka(vit, images[0], cnn, images_b=images[1], batch_size=batch_size, precision=precision,
                          workers=workers, name_a=names[0], name_b=names[1])
        results.append(cross)
    save_csv(out / "data" / "cka.csv", pd.concat([r.to_frame() for r in results], ignore_index=True))
    fig = cka_figure(results)
    save_figure(fig, out / "figures" / "cka.png")
    plt.close(fig)
    first = results[-1]
    numbers = [(f"{r.model_a} x {r.model_b}: CKA range", f"{np.min(r.cka):.2f} to {np.max(r.cka):.2f}") for r in results]
    numbers.append(("images and minibatches", first.minibatches()))
    low = colour_scale(results)[0]
    scale = "0 to 1" if low >= 0 else f"{low:g} to 1, values below 0 in blues"
    note = [first.reliability_note()] if first.small_minibatch() else []
    return Section(
        "Representation similarity (CKA)",
        figures=[Figure("figures/cka.png", "Linear CKA between every pair of layers (unbiased HSIC per minibatch, "
                        f"averaged over minibatches; Nguyen, Raghu and Kornblith 2021), on one {scale} scale.")],
        reading=["How the layers' representations relate, as Raghu et al. (2021) compare ViTs and ResNets: CKA 1 "
                 "means the same representation up to rotation and scale."] + cka_reading(self_cka, cross) + note,
        numbers=numbers, files=[("cka.csv", "data/cka.csv")], anchor="cka")


def cost_section(models: Sequence, names: Sequence[str], out: Path, *, plan, device: str,
                 precision: str) -> Section:
    """Parameters, FLOPs, peak memory and throughput of ``models`` at the sizes, batch and repeats of
    ``plan`` (:func:`vitlens.report.cost_plan.plan_cost`), saved under ``out/data`` and ``out/figures``."""
    import matplotlib.pyplot as plt

    from ..analyses.cost import cost_profile
    from ..plotting.cost import cost_figure

    sizes = list(plan.sizes)
    profile = cost_profile(list(models), sizes, batch_size=plan.batch_size, device=device, precision=precision,
                           repeats=plan.repeats, warmup=plan.warmup, name=list(names))
    save_csv(out / "data" / "cost.csv", profile.to_frame())
    write_json(out / "data" / "cost.json", {**profile.to_dict(), "plan": plan.to_dict()})
    fig = cost_figure(profile)
    save_figure(fig, out / "figures" / "cost.png")
    plt.close(fig)
    return Section(
        "What a ViT costs next to a CNN",
        figures=[Figure("figures/cost.png", "FLOPs and peak forward memory against input size (log-log), the share "
                        "of a ViT's FLOPs in attention's score and value products against the number of tokens, "
                        "and throughput. FLOPs and parameters are exact counts; memory and speed are measured here.")],
        reading=[f"Cost as the input grows from {sizes[0]} to {sizes[-1]} px: attention's products grow with the "
                 "square of the number of tokens, the rest of a transformer linearly."] + profile.reading(),
        numbers=[(f"{n}: parameters", f"{int(profile.select(n, 'parameters', 'total')[2][0]):,}") for n in names],
        files=[("cost.csv", "data/cost.csv"), ("cost.json", "data/cost.json")], note=plan.describe(), anchor="cost")


def cost_base_px(models: Sequence) -> int:
    """The input side the cost scales multiply: the first ViT's own (64 px without one)."""
    from ..models.layout import token_layout

    own = [int(token_layout(m).input_size[0]) if _has_layout(m) else None for m in models]
    return next((s for s in own if s), 64)


def _has_layout(model) -> bool:
    from ..models.layout import is_vit
    return is_vit(model)
