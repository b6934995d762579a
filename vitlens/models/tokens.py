"""TokenLayout: one description of a ViT's token sequence at a given input size.

Every analysis reads prefix tokens, the patch grid and patch positions from here, never from a
square root of the sequence length. Token order in timm is ``[cls, dist | registers..., patches]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["TokenLayout"]


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
