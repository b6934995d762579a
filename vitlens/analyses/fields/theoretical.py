"""The theoretical receptive field of a layer: kernel sizes, strides and dilations along the path.

:func:`theoretical_receptive_field` walks a model's modules in forward order, composing each
convolution's and pooling's kernel, stride, padding and dilation per axis (the standard arithmetic:
``size += (k - 1) * jump``, ``jump *= stride``), and says why where it cannot (attention, a module
it does not know).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch.nn as nn

from ...capture.outputs import default_layers
from ...models.layout import is_vit
from ...runtime.errors import UnsupportedModelError
from ...runtime.sizes import size_pair

__all__ = ["TheoreticalField", "theoretical_receptive_field"]

_VIT_NO_FIELD = ("attention mixes every token from the first block on, so the theoretical field is the "
                 "whole input")


@dataclass(frozen=True)
class TheoreticalField:
    """The theoretical receptive field of a layer's units, per axis ``(y, x)``.

    Attributes:
        layer: module name.
        size: side of the field in input pixels (ignoring image borders), ``(y, x)``.
        jump: distance in input pixels between neighbouring units (the cumulative stride).
        start: input position (pixel-centre coordinates) of the centre of unit 0's field; unit
            ``i`` is centred at ``start + i * jump``.
        reason: empty when the field is known; otherwise why it is not (then the rest is NaN).
    """

    layer: str
    size: tuple[float, float] = (math.nan, math.nan)
    jump: tuple[float, float] = (math.nan, math.nan)
    start: tuple[float, float] = (math.nan, math.nan)
    reason: str = ""

    @property
    def defined(self) -> bool:
        return not self.reason

    @property
    def size_px(self) -> float:
        """The side when the field is square (all timm ResNets and ConvNeXts), else NaN."""
        return float(self.size[0]) if self.defined and self.size[0] == self.size[1] else math.nan

    def centre(self, index: Sequence[int]) -> tuple[float, float]:
        return (self.start[0] + index[0] * self.jump[0], self.start[1] + index[1] * self.jump[1])


class _Unknown(Exception):
    pass


def _children_rules() -> dict[type, frozenset[str]]:
    """Containers whose registration order is their forward order on the main path, and the
    children that are residual shortcuts (skipped: their field lies inside the main path's)."""
    rules: dict[type, frozenset[str]] = {nn.Sequential: frozenset()}
    try:
        from timm.models import resnet
        rules.update({resnet.ResNet: frozenset(), resnet.BasicBlock: frozenset({"downsample"}),
                      resnet.Bottleneck: frozenset({"downsample"})})
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.models import convnext
        rules.update({convnext.ConvNeXt: frozenset(), convnext.ConvNeXtStage: frozenset(),
                      convnext.ConvNeXtBlock: frozenset({"shortcut"})})
    except ImportError:  # pragma: no cover
        pass
    try:
        from torchvision.models import resnet as tv_resnet
        # torchvision registers conv1, bn1, relu, maxpool, layer1-4 in forward order; in its blocks
        # the ReLU module is applied twice, which leaves the field unchanged.
        rules.update({tv_resnet.ResNet: frozenset({"avgpool", "fc"}), tv_resnet.BasicBlock: frozenset({"downsample"}),
                      tv_resnet.Bottleneck: frozenset({"downsample"})})
    except ImportError:  # pragma: no cover
        pass
    try:
        from timm.layers import Mlp
        rules[Mlp] = frozenset()  # applied per position (1x1 convs, or Linear on channel-last maps)
    except ImportError:  # pragma: no cover
        pass
    return rules


def _is_pointwise(m: nn.Module) -> bool:
    """Modules that act on each spatial position alone (the field is unchanged)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    kinds: list[type] = [_BatchNorm, nn.LayerNorm, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Linear]
    try:
        from timm.layers import DropBlock2d, DropPath, LayerNorm2d
        kinds += [DropPath, DropBlock2d, LayerNorm2d]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(m, tuple(kinds)):
        return True
    mod = type(m).__module__
    return not list(m.children()) and (mod == "torch.nn.modules.activation"
                                       or mod.startswith("timm.layers.activations"))


def _kernel_op(m: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """``(kernel, stride, dilation, left padding)`` of a conv or pool, None for other modules."""
    if isinstance(m, nn.Conv2d):
        if type(m).__name__ == "Conv2dSame" or getattr(m, "dynamic_pad", False):
            raise _Unknown(f"{type(m).__name__} pads by input size ('same' padding), so its alignment varies")
        k, s, d = size_pair(m.kernel_size), size_pair(m.stride), size_pair(m.dilation)
        if isinstance(m.padding, str):  # torch's 'same' pads total//2 on the left; 'valid' nothing
            p = tuple(d[a] * (k[a] - 1) // 2 for a in range(2)) if m.padding == "same" else (0, 0)
        else:
            p = size_pair(m.padding)
        return k, s, d, p
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = size_pair(m.kernel_size)
        s = size_pair(m.stride if m.stride is not None else m.kernel_size)
        d = size_pair(getattr(m, "dilation", 1))
        return k, s, d, size_pair(m.padding)
    return None


def theoretical_receptive_field(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, TheoreticalField]:
    """Theoretical receptive field of ``layers`` (default: :func:`default_layers`) from the convolution
    arithmetic of Araujo et al. (Distill 2019), per axis::

        size  += (dilation * (kernel - 1)) * jump
        start += (dilation * (kernel - 1) / 2 - padding) * jump
        jump  *= stride

    starting from ``size = 1, jump = 1, start = 0.5`` (the centre of pixel 0). The modules are walked
    in forward order along the main path: ``nn.Sequential`` and timm's ResNet (BasicBlock,
    Bottleneck) and ConvNeXt (stages, blocks, Mlp); residual shortcuts (``downsample`` of a ResNet
    block, ``shortcut`` of a ConvNeXt block) are skipped because their field lies inside the main
    branch's. Normalisations over channels, activations, dropout and per-position linear layers
    leave the field unchanged. Anything else (squeeze-excitation, global pooling, anti-aliasing,
    'same' padding that depends on the input size, unknown containers, ViT attention) stops the
    walk: the layers it reaches get NaN and the reason.
    """
    mods = dict(model.named_modules())
    if layers is None:
        layers = default_layers(model)
    wanted = set(layers)
    missing = [l for l in layers if l not in mods]
    if missing:
        raise UnsupportedModelError(f"{type(model).__name__} has no module named {', '.join(missing)}.")
    if is_vit(model):
        return {l: TheoreticalField(l, reason=_VIT_NO_FIELD) for l in layers}

    rules = _children_rules()
    found: dict[str, TheoreticalField] = {}
    # state per axis: [size, jump, start]
    state = [[1.0, 1.0, 0.5], [1.0, 1.0, 0.5]]

    def record(name: str) -> None:
        if name in wanted and name not in found:
            found[name] = TheoreticalField(name, size=(state[0][0], state[1][0]), jump=(state[0][1], state[1][1]),
                                           start=(state[0][2], state[1][2]))

    def visit(m: nn.Module, name: str) -> None:
        if len(found) == len(wanted):
            return
        op = _kernel_op(m)
        if op is not None:
            k, s, d, p = op
            for a in range(2):
                size, jump, start = state[a]
                span = d[a] * (k[a] - 1)
                state[a] = [size + span * jump, jump * s[a], start + (span / 2 - p[a]) * jump]
        elif _is_pointwise(m):
            pass
        elif type(m) in rules:
            skip = rules[type(m)]
            for child_name, child in m.named_children():
                if child_name not in skip:
                    visit(child, f"{name}.{child_name}" if name else child_name)
        else:
            raise _Unknown(f"the theoretical field of {type(m).__name__} ({name or 'the model'}) is not one "
                           "vitlens derives")
        record(name)

    reason = ""
    try:
        visit(model, "")
    except _Unknown as e:
        reason = str(e)
    for l in layers:
        if l not in found:
            found[l] = TheoreticalField(l, reason=reason or f"{l} is not on the main path vitlens walks")
    return {l: found[l] for l in layers}
