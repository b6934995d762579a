"""The layers whose outputs the receptive field and CKA measure by default: blocks or stages."""

from __future__ import annotations

import torch.nn as nn


__all__ = ["default_layers"]


def default_layers(model: nn.Module) -> list[str]:
    """The layers measured by default, from the model's family adapter: every transformer block of a
    ViT (token outputs), every stage of a CNN (for timm, every level of ``feature_info``, with the
    ResNet stem ``act1``).

    Raises:
        UnsupportedModelError: neither applies; pass ``layers=`` with module names instead.
    """
    from .families import adapter_for

    return adapter_for(model).block_outputs()
