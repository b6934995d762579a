"""The token layout of a model, from its family adapter (see :class:`~vitlens.models.loading.tokens.TokenLayout`)."""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ..runtime.errors import UnsupportedModelError
from .tokens import TokenLayout

__all__ = ["token_layout", "is_vit"]


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a ViT vitlens can lay out (its family adapter gives a token layout)."""
    from .families.registry import adapter_for

    try:
        adapter_for(model).token_layout()
    except UnsupportedModelError:
        return False
    return True


def token_layout(model: nn.Module, input_size: int | Sequence[int] | None = None) -> TokenLayout:
    """Describe ``model``'s token sequence for inputs of ``input_size`` (default: the model's own).

    Asks the model's family adapter: timm ViTs (class, distillation and register tokens,
    ``no_embed_class``, global pooling without a class token, hybrids with a CNN stem, BEiT, EVA),
    Hugging Face transformers, torchvision and open_clip ViTs. A size other than the model's own is
    allowed where the model accepts it (timm's ``dynamic_img_size=True``, for example).
    """
    from .families.registry import adapter_for

    return adapter_for(model).token_layout(input_size)
