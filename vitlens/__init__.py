"""vitlens: see inside Vision Transformers.

Exact per-head attention captured from timm models through hooks, and the analyses built on it:
mean attention distance by depth, position-embedding similarity, attention rollout, and the
effective receptive field of ViTs and CNNs on one axis.
"""

import importlib
import typing

from .runtime.version import __version__

# Public names, by the module that defines them. They are imported on first use, so that
# ``import vitlens`` (and ``vitlens --help``) does not load torch and timm until a name needs them.
_EXPORTS = {
    "capture.attention": ("AttentionCapture", "attention_modules", "capture_attention"),
    "capture.chunked": ("AttentionRows", "capture_attention_rows"),
    "analyses.attention.entropy": ("attention_entropy", "prefix_share"),
    "analyses.representations.cka": ("CKAResult", "layer_cka"),
    "analyses.representations.tokens": ("TokenNorms", "token_norms"),
    "analyses.representations.probes": ("ProbeResult", "linear_probes"),
    "data.labels": ("LabelledImages", "labelled_images"),
    "analyses.representations.skip": ("SkipRatios", "skip_ratios"),
    "analyses.representations.localization": ("Localization", "spatial_localization"),
    "analyses.cost": ("CostProfile", "cost_profile"),
    "analyses.attention.distance": ("AttentionDistance", "mean_attention_distance"),
    "analyses.attention.streaming": ("attention_distance",),
    "runtime.errors": ("ImageError", "LabelError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError"),
    "analyses.embeddings.filters": ("EmbeddingFilters", "embedding_filters"),
    "models.layout": ("TokenLayout", "token_layout"),
    "analyses.locality": ("Locality",),
    "models.loading": ("load_model", "zoo_models"),
    "models.checkpoints": ("read_state_dict",),
    "analyses.embeddings.position": ("PositionEmbeddingSimilarity", "position_embedding_similarity"),
    "analyses.fields.effective": ("ReceptiveField", "effective_receptive_field"),
    "analyses.fields.theoretical": ("theoretical_receptive_field",),
    "analyses.attention.rollout": ("RolloutMaps", "attention_rollout"),
    "analyses.attention.scores": ("deletion_curve", "mask_share", "pointing_hit"),
    "report.papers": ("reproduce", "fetch", "Reproduction"),
    "presets": ("PRESETS", "Preset"),
}
# The figure functions of vitlens.plotting (plot_*(result, ax=None) -> axes, *_figure(...) -> figure),
# listed there by module; vitlens.plotting's package file imports neither matplotlib nor its modules.
from .plotting import FIGURES as _FIGURES  # noqa: E402

_EXPORTS.update({f"plotting.{module}": names for module, names in _FIGURES.items()})
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if typing.TYPE_CHECKING:  # the same names, for type checkers and editors
    from .analyses.attention.distance import AttentionDistance, mean_attention_distance
    from .analyses.attention.rollout import RolloutMaps, attention_rollout
    from .analyses.attention.scores import deletion_curve, mask_share, pointing_hit
    from .analyses.attention.streaming import attention_distance
    from .analyses.cost import CostProfile, cost_profile
    from .analyses.embeddings.filters import EmbeddingFilters, embedding_filters
    from .analyses.embeddings.position import PositionEmbeddingSimilarity, position_embedding_similarity
    from .analyses.fields.effective import ReceptiveField, effective_receptive_field
    from .analyses.fields.theoretical import theoretical_receptive_field
    from .analyses.locality import Locality
    from .analyses.representations.cka import CKAResult, layer_cka
    from .analyses.attention.entropy import attention_entropy, prefix_share
    from .analyses.representations.tokens import TokenNorms, token_norms
    from .analyses.representations.probes import ProbeResult, linear_probes
    from .analyses.representations.localization import Localization, spatial_localization
    from .analyses.representations.skip import SkipRatios, skip_ratios
    from .capture.attention import AttentionCapture, attention_modules, capture_attention
    from .data.labels import LabelledImages, labelled_images
    from .capture.chunked import AttentionRows, capture_attention_rows
    from .models.checkpoints import read_state_dict
    from .models.layout import token_layout
    from .models.loading import load_model, zoo_models
    from .models.tokens import TokenLayout
    from .plotting.cka import cka_figure, plot_cka
    from .plotting.cost import cost_figure, plot_attention_share, plot_flops, plot_memory, plot_throughput
    from .plotting.distance import distance_figure, plot_distance_by_depth, plot_sorted_heads
    from .plotting.filters import filters_figure, plot_filters, plot_scree
    from .plotting.locality import locality_figure, plot_locality
    from .plotting.posembed import position_embedding_figure
    from .plotting.receptive_field import plot_spread, receptive_field_figure
    from .plotting.localization import localization_figure, plot_localization
    from .plotting.probes import plot_probes, probes_figure
    from .plotting.rollout import contact_sheet_figure, plot_deletion, plot_overlay
    from .plotting.skip import plot_skip_ratios, plot_skip_tokens, skip_figure
    from .plotting.tokens import (
        high_norm_positions_figure,
        plot_high_norm_positions,
        plot_norm_histogram,
        token_norms_figure,
    )
    from .plotting.windows import plot_windowed_distance, windowed_distance_figure
    from .presets import PRESETS, Preset
    from .report.papers import Reproduction, fetch, reproduce
    from .runtime.errors import ImageError, LabelError, ModelLoadError, OutputError, UnsupportedModelError, VitlensError


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "__version__",
    "AttentionCapture", "attention_modules", "capture_attention",
    "AttentionRows", "capture_attention_rows", "attention_entropy", "prefix_share",
    "CKAResult", "layer_cka",
    "TokenNorms", "token_norms",
    "ProbeResult", "linear_probes", "LabelledImages", "labelled_images",
    "SkipRatios", "skip_ratios",
    "Localization", "spatial_localization",
    "CostProfile", "cost_profile",
    "AttentionDistance", "attention_distance", "mean_attention_distance",
    "ImageError", "LabelError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError",
    "EmbeddingFilters", "embedding_filters",
    "TokenLayout", "token_layout",
    "Locality",
    "load_model", "read_state_dict", "zoo_models",
    "PositionEmbeddingSimilarity", "position_embedding_similarity",
    "ReceptiveField", "effective_receptive_field", "theoretical_receptive_field",
    "RolloutMaps", "attention_rollout",
    "deletion_curve", "mask_share", "pointing_hit",
    "plot_distance_by_depth", "plot_sorted_heads", "distance_figure",
    "plot_windowed_distance", "windowed_distance_figure",
    "position_embedding_figure",
    "plot_overlay", "contact_sheet_figure", "plot_deletion",
    "plot_spread", "receptive_field_figure",
    "plot_locality", "locality_figure",
    "plot_filters", "plot_scree", "filters_figure",
    "plot_cka", "cka_figure",
    "plot_flops", "plot_memory", "plot_attention_share", "plot_throughput", "cost_figure",
    "plot_norm_histogram", "plot_high_norm_positions", "token_norms_figure", "high_norm_positions_figure",
    "plot_skip_ratios", "plot_skip_tokens", "skip_figure", "plot_localization", "localization_figure",
    "plot_probes", "probes_figure",
    "reproduce", "fetch", "Reproduction", "PRESETS", "Preset",
]
