"""Exact per-head probabilities from ``torch.nn.MultiheadAttention``, shared by the families
whose blocks call it (torchvision's ViT, open_clip's vision towers).

Those blocks call ``attn(x, x, x, need_weights=False)``: the fast path (``scaled_dot_product_attention``
or the native fused kernel) never forms the probabilities. Inside :func:`capture_mha` a pre-hook
rewrites every call of a chosen module to ``need_weights=True, average_attn_weights=False``, so
``F.multi_head_attention_forward`` (or the native kernel) forms ``softmax(q k^T / sqrt(d))``
explicitly and returns it as ``[batch, head, query, key]``; those are the very probabilities the
call multiplies with ``v``. A forward hook passes them to ``emit`` and hands the caller what it
asked for (no weights, or head-averaged ones). Both hooks are removed on exit, also when the body
raises; the modules themselves are never changed.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from .base import EmitAttention, EmitQueryKey, QueryKey, bias_rows

__all__ = ["capture_mha", "mha_dropout_active", "recompute_mha", "mha_query_key"]

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def mha_dropout_active(module: nn.MultiheadAttention) -> bool:
    """Whether the module drops attention weights now (training mode with ``dropout > 0``); the
    weights it returns are then the ones after dropout, not the probabilities."""
    return bool(module.training and float(module.dropout) > 0.0)


@contextmanager
def capture_mha(blocks: Sequence[tuple[int, str, nn.MultiheadAttention]],
                emit: EmitAttention) -> Iterator[None]:
    """Emit the exact probabilities of every listed ``nn.MultiheadAttention`` call.

    Args:
        blocks: ``(block index, qualified name, module)`` for every module to read.
        emit: called as ``emit(block_index, attn)`` with ``attn`` ``[batch, head, query, key]``.

    Raises:
        UnsupportedModelError: a module is in training mode with attention dropout (its weights
            are after dropout), is called causally without a mask, or returned no weights.
    """
    handles = []
    ran: dict[int, int] = {}
    fired: dict[int, int] = {}

    def hooks(index: int, name: str):
        asked: list[tuple[bool, bool]] = []  # the caller's (need_weights, average_attn_weights), a stack

        def before(module, args, kwargs):
            bound = _SIGNATURE.bind(module, *args, **kwargs)
            bound.apply_defaults()
            a = dict(bound.arguments)
            a.pop("self")
            if mha_dropout_active(module):
                raise UnsupportedModelError(
                    f"attention module {name} is in training mode with attention dropout "
                    f"p={module.dropout:g}, so the weights it forms are after dropout, not the "
                    "probabilities; call model.eval() before capturing attention.")
            if a.get("is_causal") and a.get("attn_mask") is None:
                raise UnsupportedModelError(
                    f"attention module {name} is called causally without a mask; vitlens reads "
                    "bidirectional vision attention only.")
            asked.append((bool(a["need_weights"]), bool(a["average_attn_weights"])))
            a["need_weights"], a["average_attn_weights"] = True, False
            query, key, value = a.pop("query"), a.pop("key"), a.pop("value")
            return (query, key, value), a

        def after(module, args, kwargs, output):
            ran[index] = ran.get(index, 0) + 1
            need, average = asked.pop() if asked else (False, True)
            out, weights = output
            if weights is None:
                return (out, None)
            fired[index] = fired.get(index, 0) + 1
            per_head = weights if weights.dim() == 4 else weights.unsqueeze(0)  # unbatched call
            emit(index, per_head)  # [batch, head, query, key]
            if not need:
                return (out, None)
            return (out, weights.mean(dim=-3) if average else weights)

        return before, after

    try:
        for index, name, module in blocks:
            before, after = hooks(index, name)
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
    for index, name, module in blocks:
        if ran.get(index, 0) > fired.get(index, 0):
            raise UnsupportedModelError(
                f"attention module {name} ({type(module).__name__}) ran without returning its "
                "probabilities although need_weights=True was asked; this torch version's "
                "MultiheadAttention is not one vitlens knows.")


def recompute_mha(module: nn.MultiheadAttention, query: torch.Tensor) -> torch.Tensor:
    """Self-attention probabilities recomputed from the module's packed ``in_proj`` weights, for
    checks only: ``query`` is ``[batch, token, channel]`` (batch first); returns
    ``[batch, head, query, key]``."""
    d = module.embed_dim
    h = module.num_heads
    w, b = module.in_proj_weight, module.in_proj_bias
    q = nn.functional.linear(query, w[:d], None if b is None else b[:d])
    k = nn.functional.linear(query, w[d:2 * d], None if b is None else b[d:2 * d])
    n, t, _ = q.shape
    q = q.view(n, t, h, d // h).transpose(1, 2)  # [batch, head, token, head_dim]
    k = k.view(n, t, h, d // h).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)


def _in_projection(module: nn.MultiheadAttention, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q, k`` ``[batch, head, token, head_dim]`` of a self-attention call's ``query`` (batch first)."""
    d, h = module.embed_dim, module.num_heads
    w, b = module.in_proj_weight, module.in_proj_bias
    q = nn.functional.linear(query, w[:d], None if b is None else b[:d])
    k = nn.functional.linear(query, w[d:2 * d], None if b is None else b[d:2 * d])
    n, t, _ = q.shape
    return q.view(n, t, h, d // h).transpose(1, 2), k.view(n, t, h, d // h).transpose(1, 2)


def check_query_key(blocks: Sequence[tuple[int, str, nn.MultiheadAttention]]) -> None:
    """Refuse modules whose q and k cannot be recomputed from one packed ``in_proj``."""
    for _, name, m in blocks:
        if not getattr(m, "_qkv_same_embed_dim", False) or m.in_proj_weight is None \
                or m.bias_k is not None or m.add_zero_attn:
            raise UnsupportedModelError(
                f"attention module {name} has separate or extended key/value projections; vitlens recomputes "
                "only packed self-attention from queries and keys, so its full maps are read instead.")


def mha_query_key(blocks: Sequence[tuple[int, str, nn.MultiheadAttention]], emit: EmitQueryKey):
    """Emit every listed self-attention call's q and k, recomputed from its input with the module's
    packed ``in_proj`` (the module's own call runs untouched, on its fast path), scale
    ``1 / sqrt(head_dim)`` and its ``attn_mask`` as bias. A call with a key padding mask, a causal
    call, or one whose key is not its query is refused (UnsupportedModelError at once for a module
    without one packed ``in_proj``)."""
    check_query_key(blocks)
    return _mha_query_key(blocks, emit)


@contextmanager
def _mha_query_key(blocks: Sequence[tuple[int, str, nn.MultiheadAttention]], emit: EmitQueryKey) -> Iterator[None]:
    handles = []

    def hook(index: int, name: str):
        def after(module, args, kwargs, _output):
            bound = _SIGNATURE.bind(module, *args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            query = a["query"]
            if a["key"] is not query or a.get("key_padding_mask") is not None or a.get("is_causal"):
                raise UnsupportedModelError(
                    f"attention module {name} is called with a separate key, a key padding mask or causally; "
                    "vitlens recomputes plain self-attention only (use the full-map path).")
            x = query.detach()
            if x.dim() == 2:
                x = x.unsqueeze(0 if module.batch_first else 1)
            if not module.batch_first:
                x = x.transpose(0, 1)
            with torch.no_grad():
                q, k = _in_projection(module, x)
            mask = a.get("attn_mask")
            emit(index, QueryKey(q=q, k=k, scale=1.0 / (q.shape[-1] ** 0.5),
                                 bias=bias_rows(None if mask is None else mask.detach())))
        return after

    try:
        for index, name, module in blocks:
            handles.append(module.register_forward_hook(hook(index, name), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
