"""vitlens: see inside Vision Transformers.

Exact per-head attention captured from timm models through hooks, and the analyses built on it:
mean attention distance by depth, position-embedding similarity, attention rollout, and the
effective receptive field of ViTs and CNNs on one axis.
"""

import importlib
import typing

__version__ = "0.1.0"

# Public names, by the module that defines them. They are imported on first use, so that
# ``import vitlens`` (and ``vitlens --help``) does not load torch and timm until a name needs them.
_EXPORTS = {
    "capture": ("AttentionCapture", "attention_modules", "capture_attention"),
    "cka": ("CKAResult", "layer_cka"),
    "cost": ("CostProfile", "cost_profile"),
    "distance": ("AttentionDistance", "attention_distance", "mean_attention_distance"),
    "errors": ("ImageError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError"),
    "filters": ("EmbeddingFilters", "embedding_filters"),
    "layout": ("TokenLayout", "token_layout"),
    "locality": ("Locality",),
    "models": ("load_model", "read_state_dict", "zoo_models"),
    "posembed": ("PositionEmbeddingSimilarity", "position_embedding_similarity"),
    "receptive_field": ("ReceptiveField", "effective_receptive_field"),
    "theoretical_field": ("theoretical_receptive_field",),
    "rollout": ("RolloutMaps", "attention_rollout"),
    "scores": ("deletion_curve", "mask_share", "pointing_hit"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if typing.TYPE_CHECKING:  # the same names, for type checkers and editors
    from .capture import AttentionCapture, attention_modules, capture_attention
    from .cka import CKAResult, layer_cka
    from .cost import CostProfile, cost_profile
    from .distance import AttentionDistance, attention_distance, mean_attention_distance
    from .errors import ImageError, ModelLoadError, OutputError, UnsupportedModelError, VitlensError
    from .filters import EmbeddingFilters, embedding_filters
    from .layout import TokenLayout, token_layout
    from .locality import Locality
    from .models import load_model, read_state_dict, zoo_models
    from .posembed import PositionEmbeddingSimilarity, position_embedding_similarity
    from .receptive_field import ReceptiveField, effective_receptive_field
    from .theoretical_field import theoretical_receptive_field
    from .rollout import RolloutMaps, attention_rollout
    from .scores import deletion_curve, mask_share, pointing_hit


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
    "CKAResult", "layer_cka",
    "CostProfile", "cost_profile",
    "AttentionDistance", "attention_distance", "mean_attention_distance",
    "ImageError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError",
    "EmbeddingFilters", "embedding_filters",
    "TokenLayout", "token_layout",
    "Locality",
    "load_model", "read_state_dict", "zoo_models",
    "PositionEmbeddingSimilarity", "position_embedding_similarity",
    "ReceptiveField", "effective_receptive_field", "theoretical_receptive_field",
    "RolloutMaps", "attention_rollout",
    "deletion_curve", "mask_share", "pointing_hit",
]
