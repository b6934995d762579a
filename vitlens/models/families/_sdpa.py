"""Queries and keys read where a block calls ``scaled_dot_product_attention``, shared by the
families whose fused path calls it (timm's attention classes, SAM's encoder, transformers' SDPA
implementation).

On the fused path a block forms q and k (after its q/k norms and rotary embedding), then calls
``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=...)``. While a
chosen block runs (a pre-hook opens, a forward hook closes), that function is replaced by a thin
wrapper that calls the original, then hands the call's own q, k, scale and mask to ``emit`` as a
:class:`~vitlens.models.families.base.QueryKey`. Nothing the block computes changes, and the
``[query, key]`` map is never formed here. The original function is put back when the block
returns, and on exit in any case, also when the body raises.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ...runtime.errors import UnsupportedModelError
from .base import AttentionBlock, EmitQueryKey, QueryKey, bias_rows, kept_blocks

__all__ = ["sdpa_query_key"]

_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _bind(args, kwargs) -> dict:
    a = dict(zip(_PARAMS, args))
    a.update(kwargs)
    return a


@contextmanager
def sdpa_query_key(all_blocks: Sequence[AttentionBlock], blocks: Sequence[int], emit: EmitQueryKey, what: str,
                   reshape: Callable[[int, QueryKey], QueryKey] | None = None) -> Iterator[None]:
    """Emit the q, k, scale and mask of every ``scaled_dot_product_attention`` call a kept block makes.

    ``reshape(i, qk)`` turns a call's tensors into ``[batch, head, token, head_dim]`` where the block
    folds heads into the batch (SAM). On exit, a block that ran without calling the function is an
    error naming ``what``; so is a causal call (vision attention is bidirectional).
    """
    keep = kept_blocks(blocks, len(all_blocks))
    original = F.scaled_dot_product_attention
    ran, fired, handles = dict.fromkeys(keep, 0), dict.fromkeys(keep, 0), []
    current: list[int] = []

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        if current:
            i = current[-1]
            a = _bind(args, kwargs)
            if a.get("is_causal"):
                raise UnsupportedModelError(f"attention module {all_blocks[i].name} attends causally; vitlens "
                                            "reads bidirectional vision attention only.")
            q, k = a["query"].detach(), a["key"].detach()
            scale = a.get("scale")
            qk = QueryKey(q=q, k=k, scale=float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1]),
                          bias=bias_rows(None if a.get("attn_mask") is None else a["attn_mask"].detach()))
            fired[i] += 1
            emit(i, reshape(i, qk) if reshape is not None else qk)
        return out

    def hooks(i: int):
        def before(_module, _args):
            current.append(i)
            F.scaled_dot_product_attention = wrapper

        def after(_module, _args, _output):
            ran[i] += 1
            current.pop()
            if not current:
                F.scaled_dot_product_attention = original
        return before, after

    try:
        for i in keep:
            before, after = hooks(i)
            handles.append(all_blocks[i].module.register_forward_pre_hook(before))
            handles.append(all_blocks[i].module.register_forward_hook(after))
        yield
    finally:
        for h in handles:
            h.remove()
        F.scaled_dot_product_attention = original
    for i in keep:
        if ran[i] and fired[i] < ran[i]:
            b = all_blocks[i]
            raise UnsupportedModelError(
                f"attention module {b.name} ({type(b.module).__module__}.{type(b.module).__name__}) ran without "
                f"calling scaled_dot_product_attention, so its queries and keys were not read; {what} is not one "
                "vitlens knows (use the full-map path).")
