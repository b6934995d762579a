"""vitlens: see inside Vision Transformers.

Exact per-head attention captured from timm models through hooks, and the analyses built on it:
mean attention distance by depth, position-embedding similarity, attention rollout, and the
effective receptive field of ViTs and CNNs on one axis.
"""

__version__ = "0.1.0"

from .capture import AttentionCapture, attention_modules, capture_attention
from .distance import AttentionDistance, attention_distance, mean_attention_distance
from .errors import ImageError, ModelLoadError, OutputError, UnsupportedModelError, VitlensError
from .layout import TokenLayout, token_layout
from .locality import Locality
from .models import load_model, read_state_dict, zoo_models
from .posembed import PositionEmbeddingSimilarity, position_embedding_similarity
from .receptive_field import ReceptiveField, effective_receptive_field
from .theoretical_field import theoretical_receptive_field
from .rollout import RolloutMaps, attention_rollout
from .scores import deletion_curve, mask_share, pointing_hit

__all__ = [
    "__version__",
    "AttentionCapture", "attention_modules", "capture_attention",
    "AttentionDistance", "attention_distance", "mean_attention_distance",
    "ImageError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError",
    "TokenLayout", "token_layout",
    "Locality",
    "load_model", "read_state_dict", "zoo_models",
    "PositionEmbeddingSimilarity", "position_embedding_similarity",
    "ReceptiveField", "effective_receptive_field", "theoretical_receptive_field",
    "RolloutMaps", "attention_rollout",
    "deletion_curve", "mask_share", "pointing_hit",
]
