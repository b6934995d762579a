"""Residual blocks described for the skip-ratio analysis: helpers the family modules share.

A CNN residual unit ``act(F(x) + shortcut(x))`` (ResNet ``BasicBlock`` / ``Bottleneck`` of timm,
torchvision and open_clip's modified ResNet) is described by its last module before the sum (the
branch ``F(x)``), its projection (``downsample``, or none: the shortcut is the input) and its final
activation, whose input is the sum. A transformer block is described by the two modules whose
outputs are added to the stream.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from .base import ResidualBlock, ResidualSite

__all__ = ["site", "resnet_unit", "transformer_block", "no_residual_blocks", "windowed_refusal"]


def site(prefix: str, attr: str, module: nn.Module, where: str = "output", call: int = 0) -> ResidualSite:
    """The :class:`ResidualSite` of ``module``, named ``prefix.attr``."""
    return ResidualSite(name=f"{prefix}.{attr}" if prefix else attr, module=module, where=where, call=call)


def resnet_unit(index: int, name: str, unit: nn.Module, branch_attrs: Sequence[str], act: str,
                act_call: int = 0) -> ResidualBlock:
    """A ResNet unit: the branch is the last of ``branch_attrs`` that the unit has (not None); the
    shortcut is ``downsample`` when it has one; the sum is the input of its ``act`` module."""
    last = next((a for a in reversed(branch_attrs) if isinstance(getattr(unit, a, None), nn.Module)), None)
    if last is None or not isinstance(getattr(unit, act, None), nn.Module):
        raise UnsupportedModelError(f"vitlens cannot find the residual branch of {name} "
                                    f"({type(unit).__name__}).")
    down = getattr(unit, "downsample", None)
    return ResidualBlock(index=index, name=name, module=unit, sublayers=("residual",),
                         branches=(site(name, last, getattr(unit, last)),), layout="channels",
                         shortcut=site(name, "downsample", down) if isinstance(down, nn.Module) else None,
                         total=site(name, act, getattr(unit, act), where="input", call=act_call))


def transformer_block(index: int, name: str, block: nn.Module, attention: ResidualSite, mlp: ResidualSite,
                      layout: str = "tokens") -> ResidualBlock:
    """A transformer block ``x <- x + f_attn(x); x <- x + f_mlp(x)`` (pre- or post-norm); the last
    sum is its output."""
    return ResidualBlock(index=index, name=name, module=block, sublayers=("attention", "mlp"),
                         branches=(attention, mlp), layout=layout)


def no_residual_blocks(model: nn.Module, why: str = "") -> UnsupportedModelError:
    """The refusal when a model's residual branches cannot be found."""
    return UnsupportedModelError(
        f"vitlens finds no residual blocks it can read in {type(model).__name__}{': ' + why if why else ''}. "
        "Skip ratios are read from transformer blocks x + f_attn(x), x + f_mlp(x) (timm, transformers, "
        "torchvision and open_clip ViTs) and from ResNet residual units (timm, torchvision, open_clip), "
        "and from timm ConvNeXt blocks.")


def windowed_refusal(model: nn.Module) -> UnsupportedModelError:
    """The refusal for windowed and hierarchical models (Swin, Swin-V2, SAM's encoder)."""
    return UnsupportedModelError(
        f"{type(model).__name__} attends within windows (of feature maps that shrink from stage to stage for "
        "Swin), so its blocks have no token sequence shared through depth; vitlens measures skip ratios on "
        "ViTs with one token sequence and on CNN residual units, and does not measure this model's.")
