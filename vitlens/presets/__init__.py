"""The papers' figures as named presets: which public checkpoints, which analyses, which finding.

A preset names a paper, the figures of it that vitlens redraws, the checkpoints (timm names with
their pretrained tags) each panel runs on, the number of images the paper averaged over, and the
paper's finding in one sentence. It is data only: :func:`vitlens.reproduce` runs it, and the
command line lists it (``vitlens reproduce --help``) without importing torch.

Panels name their analysis by the public function that computes it (``attention_distance``,
``layer_cka``, ...); :mod:`vitlens.report.reproduce.analyses` maps each name to the code that runs
it, so an analysis that is added later plugs in under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..runtime.errors import VitlensError

__all__ = ["Panel", "PaperFigure", "Preset", "PRESETS", "get_preset", "preset_help", "UNSTATED_IMAGES"]

#: Images an analysis uses by default where its paper does not say how many it used.
UNSTATED_IMAGES = 1000


@dataclass(frozen=True)
class Panel:
    """One panel of a paper figure: one analysis over one or several checkpoints.

    Attributes:
        analysis: the public function that computes it (``attention_distance``, ``layer_cka``, ...).
        checkpoints: timm names with their pretrained tags, in the order the panel draws them.
        title: what the panel shows, as the paper labels it.
        paper_images: images the paper averaged over for this panel (None where the paper does not say;
            a run then uses ``UNSTATED_IMAGES``).
        options: analysis options (for example ``{"pairs": "self"}`` for CKA).
    """

    analysis: str
    checkpoints: tuple[str, ...]
    title: str
    paper_images: int | None = None
    options: Mapping = None

    def option(self, key: str, default=None):
        return (self.options or {}).get(key, default)


@dataclass(frozen=True)
class PaperFigure:
    """One figure of the paper, redrawn as one figure file.

    Attributes:
        key: short file-safe name (``fig7``).
        label: how the paper numbers it (``Fig. 7``).
        finding: what the paper found in this figure, in one sentence.
        panels: the panels, left to right.
    """

    key: str
    label: str
    finding: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Preset:
    """A paper's figures on the paper's public checkpoints.

    Attributes:
        id: the name given on the command line (``vit-fig7``).
        paper: author, title and venue.
        finding: the paper's finding in one sentence.
        figures: the figures redrawn.
        checkpoint_notes: what each checkpoint stands for in the paper's terms.
        note: what differs from the paper (models it used that are not public, and so on).
    """

    id: str
    paper: str
    finding: str
    figures: tuple[PaperFigure, ...]
    checkpoint_notes: Mapping[str, str]
    note: str = ""

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """Every checkpoint the preset loads, in first-use order."""
        seen: dict[str, None] = {}
        for f in self.figures:
            for p in f.panels:
                for c in p.checkpoints:
                    seen.setdefault(c, None)
        return tuple(seen)

    @property
    def analyses(self) -> tuple[str, ...]:
        """Every analysis the preset runs, in first-use order."""
        return tuple(dict.fromkeys(p.analysis for f in self.figures for p in f.panels))

    @property
    def paper_images(self) -> str:
        """The image counts the paper used, by analysis, in words."""
        counts = {}
        for f in self.figures:
            for p in f.panels:
                if p.analysis in ("embedding_filters", "position_embedding_similarity"):
                    continue  # weights only
                counts.setdefault(p.analysis, p.paper_images)
        words = [f"{n} ({a})" if n else f"not stated ({a}; vitlens uses {UNSTATED_IMAGES})" for a, n in counts.items()]
        return "; ".join(words) if words else "none (weights only)"


_IMAGENET = "ImageNet validation images"

PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    PRESETS[p.id] = p


_add(Preset(
    id="vit-fig7",
    paper="Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021",
    finding="The patch-embedding filters have a few dominant components, position embeddings encode "
            "distance (nearby patches are similar), and some heads of the lowest layers already attend "
            "to most of the image while others stay local, with attention distance growing with depth.",
    figures=(PaperFigure(
        key="fig7", label="Fig. 7",
        finding="Left: the leading principal components of ViT-L/32's embedding filters look like basis "
                "functions for the structure within a patch; centre: the position embeddings of nearby "
                "patches are the most similar; right: ViT-L/16's lowest layers hold both local and global "
                "heads and distance grows with depth.",
        panels=(
            Panel("embedding_filters", ("vit_large_patch32_224.orig_in21k",), "RGB embedding filters (first 28 "
                  "principal components)", options={"n_components": 28}),
            Panel("position_embedding_similarity", ("vit_large_patch32_224.orig_in21k",),
                  "Position embedding similarity"),
            Panel("attention_distance", ("vit_large_patch16_224.orig_in21k",), "Mean attention distance",
                  paper_images=128),
        )),),
    checkpoint_notes={
        "vit_large_patch32_224.orig_in21k": "ViT-L/32, Google's original ImageNet-21k weights",
        "vit_large_patch16_224.orig_in21k": "ViT-L/16, Google's original ImageNet-21k weights",
    },
    note="The paper's Fig. 7 models were pre-trained on JFT-300M, whose weights are not public; these "
         "are the same architectures pre-trained on ImageNet-21k by the same authors.",
))

_add(Preset(
    id="raghu-locality",
    paper="Raghu et al., Do Vision Transformers See Like Convolutional Neural Networks?, NeurIPS 2021",
    finding="With enough pre-training data the lowest ViT blocks mix local and global heads while the "
            "highest are all global; with ImageNet-1k alone larger ViTs learn fewer local heads; and ViT "
            "receptive fields grow from local to global earlier in depth than a ResNet's.",
    figures=(
        PaperFigure(
            key="fig3", label="Fig. 3",
            finding="Trained on a large data set, the lowest blocks hold heads attending locally and heads "
                    "attending globally; the highest blocks attend globally.",
            panels=(Panel("attention_distance", ("vit_large_patch16_224.orig_in21k",
                                                 "vit_base_patch16_224.augreg_in21k",
                                                 "vit_base_patch32_224.augreg_in21k"),
                          "Attention distance, lowest and highest blocks, heads sorted (ImageNet-21k)",
                          paper_images=5000, options={"sorted": True}),)),
        PaperFigure(
            key="fig4", label="Fig. 4",
            finding="Trained on ImageNet-1k alone, the lowest blocks learn fewer local heads than the same "
                    "architecture trained on more data.",
            panels=(Panel("attention_distance", ("vit_base_patch16_224.augreg_in1k",
                                                 "vit_base_patch32_224.augreg_in1k"),
                          "Attention distance, lowest and highest blocks, heads sorted (ImageNet-1k only)",
                          paper_images=5000, options={"sorted": True, "twins_of": "fig3"}),)),
        PaperFigure(
            key="fig6", label="Fig. 6",
            finding="ResNet effective receptive fields stay local and grow gradually with depth; ViT "
                    "receptive fields become global within the first half of the network.",
            panels=(Panel("effective_receptive_field", ("vit_base_patch32_224.augreg_in21k",
                                                        "resnetv2_50x1_bit.goog_in21k"),
                          "Effective receptive field by depth, ViT beside ResNet", paper_images=32),)),
    ),
    checkpoint_notes={
        "vit_large_patch16_224.orig_in21k": "ViT-L/16, ImageNet-21k (Google's original weights)",
        "vit_base_patch16_224.augreg_in21k": "ViT-B/16, ImageNet-21k (How to train your ViT)",
        "vit_base_patch32_224.augreg_in21k": "ViT-B/32, ImageNet-21k (How to train your ViT)",
        "vit_base_patch16_224.augreg_in1k": "ViT-B/16, ImageNet-1k only (twin of the ImageNet-21k one)",
        "vit_base_patch32_224.augreg_in1k": "ViT-B/32, ImageNet-1k only (twin of the ImageNet-21k one)",
        "resnetv2_50x1_bit.goog_in21k": "ResNet-50 (BiT-M), ImageNet-21k",
    },
    note="The paper's large-data models were trained on JFT-300M (not public); ImageNet-21k stands in. "
         "ViT-H/14 (vit_huge_patch14_224.orig_in21k) is left out: it has no ImageNet-1k twin to compare "
         "with and is about 630M parameters.",
))

_add(Preset(
    id="raghu-representations",
    paper="Raghu et al., Do Vision Transformers See Like Convolutional Neural Networks?, NeurIPS 2021",
    finding="ViT representations are more uniform across depth than a ResNet's and differ from them, "
            "ViT skip connections carry much more of each block's output, and ViT tokens in the last "
            "block still resemble their own input patch.",
    figures=(
        PaperFigure(
            key="fig1", label="Fig. 1",
            finding="ViT layers are similar to many other layers (a uniform, grid-like CKA map), while a "
                    "ResNet's CKA map separates lower from higher layers.",
            panels=(Panel("layer_cka", ("vit_large_patch16_224.orig_in21k",), "CKA, ViT against itself",
                          options={"pairs": "self"}),
                    Panel("layer_cka", ("resnetv2_50x1_bit.goog_in21k",), "CKA, ResNet against itself",
                          options={"pairs": "self"}))),
        PaperFigure(
            key="fig2", label="Fig. 2",
            finding="The lower half of the ResNet's layers is most similar to a smaller share of the ViT's "
                    "lowest layers; higher layers of the two are dissimilar.",
            panels=(Panel("layer_cka", ("vit_large_patch16_224.orig_in21k", "resnetv2_50x1_bit.goog_in21k"),
                          "CKA, ViT against ResNet", options={"pairs": "cross"}),)),
        PaperFigure(
            key="fig7", label="Fig. 7",
            finding="The ratio of skip-path to branch norm is much higher in the ViT than in the ResNet.",
            panels=(Panel("skip_ratios", ("vit_large_patch16_224.orig_in21k", "resnetv2_50x1_bit.goog_in21k"),
                          "Skip-connection norm ratio by block"),)),
        PaperFigure(
            key="fig9", label="Fig. 9",
            finding="Final-block ViT tokens are most similar to their own input patch; ResNet positions "
                    "localise less.",
            panels=(Panel("spatial_localization", ("vit_base_patch32_224.augreg_in21k",
                                                   "resnetv2_50x1_bit.goog_in21k"),
                          "Spatial localisation of final-block tokens"),)),
    ),
    checkpoint_notes={
        "vit_large_patch16_224.orig_in21k": "ViT-L/16, ImageNet-21k (Google's original weights)",
        "vit_base_patch32_224.augreg_in21k": "ViT-B/32 (7 x 7 tokens, as in Fig. 9), ImageNet-21k",
        "resnetv2_50x1_bit.goog_in21k": "ResNet-50 (BiT-M), ImageNet-21k",
    },
    note="The paper's models were trained on JFT-300M (not public); ImageNet-21k stands in. CKA needs "
         "minibatches of at least 4 images.",
))

_add(Preset(
    id="pretraining",
    paper="Park et al., What Do Self-Supervised Vision Transformers Learn?, ICLR 2023",
    finding="Masked image modelling keeps attention local in the later layers, where contrastive and "
            "self-distilled ViT-B/16s attend globally.",
    figures=(PaperFigure(
        key="selfsup", label="Attention distance by pre-training",
        finding="In the later half of the network the masked-image-modelling ViT's heads attend at a "
                "shorter distance than the self-distilled (and supervised) ones.",
        panels=(Panel("attention_distance", ("vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.mae",
                                             "vit_base_patch16_224.dino"),
                      "Mean attention distance by depth"),
                Panel("attention_entropy", ("vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.mae",
                                            "vit_base_patch16_224.dino"),
                      "Normalised attention entropy by depth"))),),
    checkpoint_notes={
        "vit_base_patch16_224.augreg_in21k": "ViT-B/16, supervised on ImageNet-21k",
        "vit_base_patch16_224.mae": "ViT-B/16, masked autoencoder (masked image modelling), ImageNet-1k",
        "vit_base_patch16_224.dino": "ViT-B/16, DINO (self-distillation), ImageNet-1k",
    },
    note="Park et al. compare MoCo v3 (contrastive) with SimMIM and check DINO and MAE too; DINO stands "
         "for the joint-embedding side here. The supervised model saw more data (ImageNet-21k).",
))


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        VitlensError: no such preset (the message lists them).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise VitlensError(f"no preset called {name!r}; the presets are {', '.join(PRESETS)} "
                           "(vitlens reproduce --help describes each).") from None


def preset_help(width: int = 100) -> str:
    """Every preset with its figures, checkpoints, the images the paper used and its finding."""
    import textwrap

    def wrap(text: str) -> str:
        return textwrap.fill(text, width=width, subsequent_indent="    ", break_long_words=False,
                             break_on_hyphens=False)

    lines = []
    for p in PRESETS.values():
        lines += [wrap(f"{p.id}: {p.paper}; {', '.join(f.label for f in p.figures)}"),
                  wrap(f"  finding: {p.finding}"), wrap(f"  images the paper used: {p.paper_images}"),
                  wrap("  checkpoints: " + ", ".join(p.checkpoints)), ""]
    return "\n".join(lines)
