"""The layers whose outputs the receptive field and CKA measure by default: blocks or stages."""

from __future__ import annotations

import torch.nn as nn

from .errors import UnsupportedModelError
from .layout import is_vit

__all__ = ["default_layers"]


def default_layers(model: nn.Module) -> list[str]:
    """The layers measured by default: every ``blocks[i]`` of a ViT (token outputs), every level of a
    timm CNN's ``feature_info`` (stage outputs; for ResNets also the stem ``act1``).

    Raises:
        UnsupportedModelError: neither applies; pass ``layers=`` with module names instead.
    """
    if is_vit(model):
        return [f"blocks.{i}" for i in range(len(model.blocks))]
    info = getattr(model, "feature_info", None)
    if info is not None:
        entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        mods = dict(model.named_modules())
        names = []
        for e in entries:
            n = e.get("module", "") if isinstance(e, dict) else ""
            n = n if n in mods else n.replace("_", ".")
            if n in mods and n not in names:
                names.append(n)
        if names:
            return names
    raise UnsupportedModelError(
        f"{type(model).__name__} is neither a timm ViT (patch_embed and blocks) nor a timm CNN with "
        "feature_info, so vitlens does not know its stages; pass layers=[module names] instead.")


# --------------------------------------------------------------------------- the analysis
