"""How much attention marked patch tokens (the high-norm ones, say) receive, per head, over images.

For one block's probabilities ``A`` ``[batch, head, query, key]`` over all ``N`` tokens and a mask
``M`` ``[batch, patch]`` of marked patch tokens:

    cls_share[b, h]   = sum over marked patch keys k of A[b, h, cls, k]
    patch_share[b, h] = mean over patch queries q of  sum over marked patch keys k of A[b, h, q, k]

Both are sums over keys of one row (the class row, and the mean of the patch rows), so a capture
callback keeps only those two rows per head (:func:`key_rows`) and drops the map at once: the
mask can come later in the forward pass (a block's own output is known only after its attention).
Images are averaged last; an image with no marked token contributes 0. A model without a class
token has no ``cls_share`` (NaN).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ...models.tokens import TokenLayout
from ...runtime.precision import float32_probabilities

__all__ = ["KeyRows", "key_rows", "marked_shares", "MarkedAttention"]


class KeyRows(NamedTuple):
    """The two rows of a map that the shares need, float32.

    Attributes:
        cls: ``[batch, head, key]`` the class token's row, or None without a class token.
        patch_mean: ``[batch, head, key]`` the mean over patch queries of their rows.
    """

    cls: torch.Tensor | None
    patch_mean: torch.Tensor


def key_rows(attn: torch.Tensor, layout: TokenLayout) -> KeyRows:
    """Reduce ``attn`` ``[batch, head, query, key]`` (all tokens of ``layout``) to its :class:`KeyRows`."""
    n = layout.num_tokens
    if attn.shape[-1] != n or attn.shape[-2] != n:
        raise ValueError(f"attention has {attn.shape[-2]} x {attn.shape[-1]} tokens but the layout has {n} "
                         f"({layout.describe()})")
    a = float32_probabilities(attn)
    c = layout.class_token_index
    return KeyRows(cls=None if c is None else a[:, :, c, :].clone(),
                   patch_mean=a[:, :, layout.patch_slice, :].mean(2))


def marked_shares(rows: KeyRows, mask: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(cls_share, patch_share)``, each ``[batch, head]`` (``cls_share`` None without a class
    token), of the marked patch tokens ``mask`` ``[batch, patch]`` (see the module docstring)."""
    m = mask.to(rows.patch_mean.dtype)[:, None, :]                  # [batch, 1, patch]
    p = layout.patch_slice
    patch = (rows.patch_mean[..., p] * m).sum(-1)
    cls = None if rows.cls is None else (rows.cls[..., p] * m).sum(-1)
    return cls, patch


class MarkedAttention:
    """Per-(block, head) sums of :func:`marked_shares` over images; memory does not grow with images.

    Args:
        num_blocks: blocks measured.
        num_heads: the largest head count of a block (blocks with fewer heads are NaN beyond theirs).
        has_class_token: whether the model has a class token (else the class shares are NaN).
    """

    def __init__(self, num_blocks: int, num_heads: int, has_class_token: bool):
        self.has_class_token = has_class_token
        self.cls_sum = np.zeros((num_blocks, num_heads))       # [block, head]
        self.patch_sum = np.zeros((num_blocks, num_heads))
        self.heads = np.zeros(num_blocks, dtype=np.int64)
        self.count = np.zeros(num_blocks, dtype=np.int64)      # images added, per block

    def add(self, block: int, rows: KeyRows, mask: torch.Tensor, layout: TokenLayout) -> None:
        """Add one batch of ``block``: its :class:`KeyRows` and the ``[batch, patch]`` marks."""
        cls, patch = marked_shares(rows, mask, layout)
        h = patch.shape[1]
        self.heads[block] = h
        self.patch_sum[block, :h] += patch.double().sum(0).cpu().numpy()
        if cls is not None:
            self.cls_sum[block, :h] += cls.double().sum(0).cpu().numpy()
        self.count[block] += patch.shape[0]

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """``(cls_share, patch_share)`` ``[block, head]``: means over images; NaN for a block with no
        image, beyond a block's heads, and (``cls_share``) without a class token."""
        heads = np.arange(self.cls_sum.shape[1])[None, :] < self.heads[:, None]
        ok = heads & (self.count[:, None] > 0)
        n = np.maximum(self.count, 1)[:, None]
        patch = np.where(ok, self.patch_sum / n, np.nan)
        cls = np.where(ok & self.has_class_token, self.cls_sum / n, np.nan)
        return cls, patch
