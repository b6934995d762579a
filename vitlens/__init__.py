"""vitlens: see inside Vision Transformers.

Exact per-head attention captured from timm models through hooks, and the analyses built on it:
mean attention distance by depth, position-embedding similarity, attention rollout, and the
effective receptive field of ViTs and CNNs on one axis.
"""

__version__ = "0.1.0"

from .capture import AttentionCapture, attention_modules, capture_attention
from .errors import ImageError, ModelLoadError, OutputError, UnsupportedModelError, VitlensError
from .layout import TokenLayout, token_layout
from .models import load_model, read_state_dict, zoo_models

__all__ = [
    "__version__",
    "AttentionCapture", "attention_modules", "capture_attention",
    "ImageError", "ModelLoadError", "OutputError", "UnsupportedModelError", "VitlensError",
    "TokenLayout", "token_layout",
    "load_model", "read_state_dict", "zoo_models",
]
