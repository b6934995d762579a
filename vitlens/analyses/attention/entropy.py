"""Attention entropy and sink share per head, and the one-pass reduction of a block's attention rows
into distance, entropy and sink share.

For one query row ``A[q, :]`` of a map over ``N`` tokens (methods: attention entropy and sinks):

- entropy ``-sum_k A[q, k] log A[q, k] / log N`` over all ``N`` keys, prefix tokens included
  (``0 log 0 = 0``): 1 for uniform attention, 0 for one-hot;
- prefix share ``sum over prefix keys k of A[q, k]``: the mass the row puts on the class,
  distillation and register tokens (0 where the model has none).

Per head, each is the mean over patch queries (the queries the distance uses) and then over
images. :func:`attention_entropy` and :func:`prefix_share` read full maps;
:func:`reduce_attention_rows` reads a block's rows chunk by chunk (the chunked path) and gives the
same three numbers per (image, head) as the full-map functions, distance included, to float32
rounding.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ...models.tokens import TokenLayout
from ...runtime.precision import float32_probabilities

__all__ = ["attention_entropy", "prefix_share", "row_entropy", "reduce_attention_rows", "patch_centres"]


def row_entropy(p: torch.Tensor, num_tokens: int | None = None) -> torch.Tensor:
    """``-sum_k p log p / log N`` over the last axis (``0 log 0 = 0``); ``N`` is the row length unless
    given. NaN for ``N < 2`` (a one-token row has no entropy to normalise)."""
    n = p.shape[-1] if num_tokens is None else num_tokens
    if n < 2:
        return torch.full(p.shape[:-1], float("nan"), dtype=torch.float32, device=p.device)
    return -torch.xlogy(p, p).sum(-1) / math.log(n)


def _check(attn: torch.Tensor, layout: TokenLayout) -> None:
    if attn.shape[-1] != layout.num_tokens or attn.shape[-2] != layout.num_tokens:
        raise ValueError(f"attention has {attn.shape[-1]} tokens but the layout has {layout.num_tokens} "
                         f"({layout.describe()})")


def attention_entropy(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[batch, head]`` mean over patch queries of each row's normalised entropy over all keys.

    Args:
        attn: ``[batch, head, query, key]`` probabilities over every token of ``layout``.
        layout: the token layout the maps were captured with.
    """
    _check(attn, layout)
    a = float32_probabilities(attn)[..., layout.patch_slice, :]     # [batch, head, patch query, key]
    return row_entropy(a).mean(-1)


def prefix_share(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``[batch, head]`` mean over patch queries of each row's mass on prefix keys (0 without any)."""
    _check(attn, layout)
    p = layout.num_prefix_tokens
    a = float32_probabilities(attn)[..., layout.patch_slice, :p]    # [batch, head, patch query, prefix key]
    if p == 0:
        return torch.zeros(attn.shape[:2], dtype=torch.float32, device=attn.device)
    return a.sum(-1).mean(-1)


def patch_centres(layout: TokenLayout, units: str = "px") -> torch.Tensor:
    """``[patch, 2]`` float64 patch centres in ``units`` (as :func:`~vitlens.analyses.attention.distance.distance_matrix`)."""
    import numpy as np

    c = layout.patch_centers()
    if units == "patches":
        c = c / np.asarray(layout.patch_stride)
    elif units == "fraction":
        c = c / np.asarray(layout.input_size, dtype=float)
    elif units != "px":
        raise ValueError(f"units must be one of px, patches, fraction, got {units!r}")
    return torch.as_tensor(c, dtype=torch.float64)


def reduce_attention_rows(chunks: Iterable[tuple[int, int, torch.Tensor]], *, num_prefix: int, centres: torch.Tensor,
                          renormalize: bool = True, entropy_tokens: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance, entropy and prefix share per (image, head) of one block, from its rows chunk by chunk.

    Args:
        chunks: ``(start, stop, probabilities [batch, head, stop - start, key])`` covering the
            queries, in any split (see :meth:`~vitlens.capture.chunked.AttentionRows.chunks`); keys
            are ``[prefix..., patches...]``.
        num_prefix: prefix tokens at the start of the sequence (0 for SAM).
        centres: ``[patch, 2]`` float64 patch positions in the distance's units.
        renormalize: divide each row's patch-weighted distance by its patch mass (``"renormalize"``);
            otherwise sum as is (``"discard"``).
        entropy_tokens: ``N`` of the entropy's ``log N`` (default: the row length).

    Returns:
        ``(distance, entropy, prefix_share)``, each ``[batch, head]`` float32: means over patch
        queries; a renormalised row with no patch mass is left out of the distance's mean; distance
        NaN where the rows held NaN or Inf.
    """
    dsum = esum = psum = count = bad = None
    npatch = 0
    for start, stop, p in chunks:
        s = max(start, num_prefix)
        if stop <= s:
            continue
        pp = p[:, :, s - start:]                                      # [batch, head, patch query, key]
        if dsum is None:
            b, h = pp.shape[:2]
            zeros = lambda: torch.zeros(b, h, dtype=torch.float64, device=pp.device)
            dsum, esum, psum, count = zeros(), zeros(), zeros(), zeros()
            bad = torch.zeros(b, h, dtype=torch.bool, device=pp.device)
        npatch += stop - s
        esum += row_entropy(pp, entropy_tokens).sum(-1)
        if num_prefix:
            psum += pp[..., :num_prefix].sum(-1).sum(-1)
        a = pp[..., num_prefix:]                                      # patch keys
        cq = centres[s - num_prefix:stop - num_prefix].to(a.device)
        d = torch.sqrt(((cq[:, None, :] - centres.to(a.device)[None, :, :]) ** 2).sum(-1)).float()  # [query, key]
        num = (a * d).sum(-1)                                         # [batch, head, query]
        bad |= ~torch.isfinite(num).all(-1)
        if renormalize:
            mass = a.sum(-1)
            ok = mass > 0
            dsum += torch.where(ok, num / mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0).sum(-1)
            count += ok.sum(-1)
        else:
            dsum += num.sum(-1)
            count += num.shape[-1]
    if dsum is None:
        raise ValueError("no patch query rows were given")
    distance = torch.where(count > 0, dsum / count.clamp_min(1), float("nan")).masked_fill(bad, float("nan"))
    return distance.float(), (esum / npatch).float(), (psum / npatch).float()
