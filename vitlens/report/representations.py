"""The report's sections on how representations travel: skip ratios, spatial localisation, probes.

Each reading says what the figure shows, then what these numbers show beside the finding of Raghu
et al. 2021 (Figs. 7, 9, 11 and 13), with every comparison word chosen from the numbers. A finding
the run does not show is said not to be shown; nothing is claimed from a model that is missing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .page import Figure, Section

__all__ = ["skip_section", "localization_section", "probe_section", "halves", "cls_vs_patch"]


def _mean(a) -> float:
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def halves(n: int) -> tuple[slice, slice]:
    """The first and second half of ``n`` blocks (the middle block of an odd count in neither)."""
    return slice(0, n // 2), slice(n - n // 2, n)


def cls_vs_patch(r) -> tuple[float, float, float, float] | None:
    """Mean ratio over both sub-layers of the class token and of the patch tokens, in the first and
    second half of the blocks: ``(cls_first, patch_first, cls_second, patch_second)``; None without
    a class token."""
    if "prefix" not in r.token_kinds or "cls" not in r.prefix_kinds:
        return None
    pi, ti = r.token_kinds.index("prefix"), r.token_kinds.index("patch")
    first, second = halves(len(r.blocks))
    return (_mean(r.ratio[first, :, pi]), _mean(r.ratio[first, :, ti]),
            _mean(r.ratio[second, :, pi]), _mean(r.ratio[second, :, ti]))


def _more(a: float, b: float) -> str:
    return "more" if a > b else "less"


def skip_section(results: Sequence) -> Section:
    """Skip-connection norm ratios (Raghu Fig. 7), ViTs beside CNNs."""
    vits = [r for r in results if r.kind == "vit"]
    cnns = [r for r in results if r.kind != "vit"]
    lines, numbers = [], []
    for r in results:
        means = ", ".join(f"{s} {_mean(r.ratio[:, i, :]):.2f}" for i, s in enumerate(r.sublayers))
        numbers.append((f"{r.model}: mean ratio ||x|| / ||f(x)|| ({r.n_images} images)", means))
    for v in vits:
        vm = _mean(v.ratio)
        for c in cnns:
            cm = _mean(c.ratio)
            agree = "as Raghu et al. found" if vm > cm else "unlike Raghu et al., who found the ViT's far higher"
            lines.append(f"{v.model}'s sub-layers average a ratio of {vm:.2f} against {cm:.2f} for {c.model}'s "
                         f"residual units: its skip path carries {_more(vm, cm)} of each block's output "
                         f"than the CNN's does, {agree}.")
        halves_ = cls_vs_patch(v)
        if halves_ is None:
            lines.append(f"{v.model} has no class token, so the paper's contrast of the class token with the "
                         "spatial tokens cannot be read from it.")
            continue
        cf, pf, cs, ps = halves_
        shown = cf > pf and cs < ps
        lines.append(f"In its first half the class token's ratio is {cf:.2f} against {pf:.2f} for the patch "
                     f"tokens, and in its second half {cs:.2f} against {ps:.2f}: "
                     + ("the class token leans on the skip path early and the patch tokens late, the reversal "
                        "the paper found." if shown else
                        "the paper's reversal (class token carried by the skip path in the first half, the "
                        "spatial tokens in the second) does not appear."))
    if not vits or not cnns:
        lines.append("The comparison of a ViT with a CNN needs one of each.")
    return Section(
        "How much passes through skip connections",
        figures=[Figure("figures/skip.png",
                        "Norm ratio of the skip path to the branch, ||x|| / ||f(x)||, per block: the first tokens "
                        "of each ViT (left; token 0 is the class token) and the mean over images and tokens by "
                        "sub-layer and token kind against depth, ViTs beside CNNs (right).")],
        reading=["A ratio above 1 means the block's input outweighs what its attention, MLP or residual branch "
                 "adds (Raghu et al. 2021, Fig. 7): high ratios say the representation travels mostly through "
                 "the skip connections.", " ".join(lines)],
        numbers=numbers, files=[("skip_ratio.csv", "data/skip_ratio.csv")], anchor="skip")


def localization_section(results: Sequence) -> Section:
    """Spatial localisation (Raghu Fig. 9): CKA of final-block tokens with every input patch."""
    lines, numbers = [], []
    for r in results:
        gh, gw = r.grid
        lines.append(f"{r.model} ({r.layer}, a {gh} x {gw} grid): {r.own_patch_share:.0%} of its token positions "
                     f"resemble their own input patch most, with CKA {r.cka_own:.2f} at the own patch against "
                     f"{r.cka_other:.2f} elsewhere.")
        numbers.append((f"{r.model}: own patch most similar / CKA own / CKA elsewhere",
                        f"{r.own_patch_share:.0%} / {r.cka_own:.3f} / {r.cka_other:.3f} "
                        f"({r.n_images - r.n_images_dropped} images in {r.n_batches} minibatches of {r.batch_size})"))
    vits = [r for r in results if r.kind == "vit"]
    cnns = [r for r in results if r.kind != "vit"]
    for v in vits:
        for c in cnns:
            gap_v, gap_c = v.cka_own - v.cka_other, c.cka_own - c.cka_other
            shown = gap_v > gap_c
            lines.append(f"{v.model}'s tokens separate their own patch from the others by {gap_v:+.2f} in CKA, "
                         f"{c.model}'s positions by {gap_c:+.2f}: "
                         + ("the ViT keeps spatial information where it came from more than the CNN, as the "
                            "paper found." if shown else
                            "the paper's finding (ViT tokens more localised than CNN positions) does not appear."))
    for c in cnns:
        if min(c.grid) <= 3:
            lines.append(f"{c.model}'s last feature map is only {c.grid[0]} x {c.grid[1]}, so each of its positions "
                         "covers a large part of the input.")
    return Section(
        "Where spatial information stays",
        figures=[Figure("figures/localization.png",
                        "Linear CKA between four tokens of the last block and every input patch, per model: a "
                        "bright cell at the token's own position means the token still resembles its patch.")],
        reading=["Each heatmap holds, for one token position of the last block, its CKA over the images with the "
                 "pixels of every input patch (Raghu et al. 2021, Fig. 9).", " ".join(lines)],
        numbers=numbers, files=[("localization.csv", "data/localization.csv")], anchor="localization")


def probe_section(results: Sequence, skipped: str | None = None) -> Section:
    """Few-shot linear probes per layer (Raghu Figs. 11 and 13)."""
    if not results:
        return Section("Few-shot linear probes by layer", figures=[],
                       reading=["Linear probes need labelled images.", skipped or "No model was probed."],
                       numbers=[], files=[], anchor="probes")
    lines, numbers = [], []
    for r in results:
        chance = 1.0 / r.n_classes
        parts = []
        for j, rep in enumerate(r.representations):
            acc = r.accuracy[:, j]
            if not np.isfinite(acc).any():
                continue
            best = int(np.nanargmax(acc))
            parts.append(f"{rep} {acc[0]:.0%} in the first layer and {acc[-1]:.0%} in the last "
                         f"(best {acc[best]:.0%} at depth {r.depth_fraction[best]:.2f})")
            numbers.append((f"{r.model}: {rep} accuracy, first / last layer",
                            f"{acc[0]:.3f} / {acc[-1]:.3f} (std {r.accuracy_std[-1, j]:.3f} over {r.repeats} draws)"))
        lines.append(f"{r.model} ({r.shots} shots per class, {r.n_classes} classes, chance {chance:.1%}): "
                     + "; ".join(parts) + ".")
        if "cls" in r.representations and "gap" in r.representations:
            ci, gi = r.representations.index("cls"), r.representations.index("gap")
            c, g = r.accuracy[-1, ci], r.accuracy[-1, gi]
            lines.append(f"In its last layer the class token probes {c:.0%} and the mean of the patch tokens "
                         f"{g:.0%}: " + ("the class token holds more of the class than the spatial tokens, as "
                                         "Raghu et al. found for ViTs trained with a class token." if c > g else
                                         "the paper's finding (the class token ahead of the pooled patch tokens "
                                         "in late layers) does not appear."))
    if skipped:
        lines.append(skipped)
    return Section(
        "Few-shot linear probes by layer",
        figures=[Figure("figures/probes.png",
                        "Accuracy of closed-form few-shot linear probes on each layer's frozen features against "
                        "normalised depth, per representation (class token, mean of the patch tokens, single "
                        "tokens), with their spread over shot draws and the chance level.")],
        reading=["What a linear read-out of few labelled images finds in each layer (the ViT paper's few-shot "
                 "evaluation; Raghu et al. 2021, Figs. 11 and 13).", " ".join(lines)],
        numbers=numbers, files=[("probe.csv", "data/probe.csv")], anchor="probes")
