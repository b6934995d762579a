"""TokenLayout: one description of a ViT's token sequence at a given input size.

Every analysis reads prefix tokens, the patch grid and patch positions from here, never from a
square root of the sequence length. Token order in timm is ``[cls, dist | registers..., patches]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch.nn as nn

from .errors import UnsupportedModelError

__all__ = ["TokenLayout", "token_layout", "is_vit"]


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of a ViT for one input size.

    Attributes:
        prefix_kinds: kind of each prefix token in sequence order: ``"cls"``, ``"dist"`` or ``"reg"``.
        grid_size: patch grid ``(grid_h, grid_w)``; need not be square.
        patch_stride: distance between neighbouring patch centres in input pixels ``(sy, sx)``.
        input_size: model input ``(height, width)`` in pixels.
    """

    prefix_kinds: tuple[str, ...]
    grid_size: tuple[int, int]
    patch_stride: tuple[float, float]
    input_size: tuple[int, int]

    @property
    def num_prefix_tokens(self) -> int:
        return len(self.prefix_kinds)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def has_class_token(self) -> bool:
        return "cls" in self.prefix_kinds

    @property
    def class_token_index(self) -> int | None:
        """Sequence index of the class token, or None for global-pool models."""
        return self.prefix_kinds.index("cls") if self.has_class_token else None

    @property
    def patch_slice(self) -> slice:
        """Slice of the token axis that holds the patch tokens, row-major over the grid."""
        return slice(self.num_prefix_tokens, self.num_tokens)

    def patch_centers(self) -> np.ndarray:
        """Centre of every patch in input pixels, ``[patch, 2]`` as ``(y, x)``, row-major.

        Pixel ``j`` covers ``[j, j + 1)``, so patch ``i`` of stride ``s`` is centred at ``(i + 0.5) s``.
        """
        gh, gw = self.grid_size
        sy, sx = self.patch_stride
        ys, xs = np.meshgrid((np.arange(gh) + 0.5) * sy, (np.arange(gw) + 0.5) * sx, indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], axis=1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(num_prefix_tokens=self.num_prefix_tokens, num_patches=self.num_patches,
                 num_tokens=self.num_tokens)
        return d

    def describe(self) -> str:
        gh, gw = self.grid_size
        sy, sx = self.patch_stride
        prefix = ", ".join(self.prefix_kinds) if self.prefix_kinds else "none"
        stride = f"{sy:g}" if sy == sx else f"{sy:g} x {sx:g}"
        return (f"input {self.input_size[0]} x {self.input_size[1]} px; grid {gh} x {gw} patches "
                f"of stride {stride} px; prefix tokens: {prefix}; {self.num_tokens} tokens in all")


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a ViT vitlens can lay out: a patch embedding with a grid and a list of blocks."""
    pe = getattr(model, "patch_embed", None)
    blocks = getattr(model, "blocks", None)
    return pe is not None and hasattr(pe, "grid_size") and isinstance(blocks, (nn.Sequential, nn.ModuleList))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return v[-2:] if len(v) >= 2 else (v[0], v[0])


def _num_registers(model: nn.Module) -> int:
    """Register tokens: timm's VisionTransformer says ``num_reg_tokens``; its Eva holds only
    ``reg_token`` ``[1, register, dim]``."""
    n = getattr(model, "num_reg_tokens", None)
    if n is not None:
        return int(n)
    reg = getattr(model, "reg_token", None)
    return int(reg.shape[1]) if reg is not None else 0


def _prefix_kinds(model: nn.Module) -> tuple[str, ...]:
    kinds: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        kinds.append("cls")
    if getattr(model, "dist_token", None) is not None:
        kinds.append("dist")
    kinds += ["reg"] * _num_registers(model)
    expected = getattr(model, "num_prefix_tokens", None)
    if expected is not None and expected != len(kinds):
        raise UnsupportedModelError(
            f"{type(model).__name__} declares {expected} prefix tokens but vitlens found "
            f"{len(kinds)} ({', '.join(kinds) or 'none'}); its token layout is not one vitlens knows.")
    return tuple(kinds)


def token_layout(model: nn.Module, input_size: int | Sequence[int] | None = None) -> TokenLayout:
    """Describe ``model``'s token sequence for inputs of ``input_size`` (default: the model's own).

    Works for timm ViTs (class, distillation and register tokens, ``no_embed_class``, global
    pooling without a class token), hybrids with a CNN stem, BEiT and EVA. A size other than the
    model's own is allowed where the model accepts it (``dynamic_img_size=True``).
    """
    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "grid_size"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no ViT patch embedding (model.patch_embed with a grid), so it "
            "has no token layout; attention analyses need a ViT such as vit_base_patch16_224.")
    default = _pair(pe.img_size)
    size = default if input_size is None else _pair(input_size)
    if size == default:
        grid = _pair(pe.grid_size)
    elif hasattr(pe, "dynamic_feat_size") and (getattr(model, "dynamic_img_size", False)
                                                or getattr(pe, "dynamic_img_pad", False)):
        grid = _pair(pe.dynamic_feat_size(size))
    else:
        raise UnsupportedModelError(
            f"{type(model).__name__} was built for {default[0]} x {default[1]} inputs and cannot take "
            f"{size[0]} x {size[1]}; build it with dynamic_img_size=True to use other sizes.")
    if hasattr(pe, "feat_ratio"):
        stride = tuple(float(s) for s in _pair(pe.feat_ratio(as_scalar=False)))
    else:
        stride = (size[0] / grid[0], size[1] / grid[1])
    return TokenLayout(prefix_kinds=_prefix_kinds(model), grid_size=grid,
                       patch_stride=stride, input_size=size)
