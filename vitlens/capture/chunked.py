"""Attention probabilities a block of query rows at a time, never the whole ``[query, key]`` map.

A softmax is taken per row, so ``softmax(q[rows] k^T * scale + bias[rows])`` is exact for those
rows. The model's family adapter hands out each block's own queries, keys, scale and bias
(:meth:`~vitlens.models.families.base.FamilyAdapter.exact_query_key`) while the block runs on its
fused path; :func:`capture_attention_rows` wraps them as :class:`AttentionRows`, whose
:meth:`~AttentionRows.chunks` forms the probabilities ``chunk`` rows at a time. The chunk follows
from a memory budget: a reduction holds a few float32 tensors of ``batch x head x chunk x key``
at once, so memory grows as ``N x chunk`` per head, and never as ``N x N``.

Where a family cannot be recomputed exactly (Swin's shifted windows are read as their small
window maps, transformers' BEiT), :func:`resolve_attention_path` says so and callers read full
maps with :func:`~vitlens.capture.attention.capture_attention`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..models.families.base import QueryKey
from ..runtime.errors import UnsupportedModelError

__all__ = ["ATTENTION_PATHS", "DEFAULT_ATTENTION_MEMORY_MB", "ROW_COPIES", "AttentionRows", "chunk_rows",
           "capture_attention_rows", "resolve_attention_path"]

#: ``auto``: chunked where the family's attention can be recomputed exactly, else full maps.
ATTENTION_PATHS = ("auto", "chunked", "full")
#: The default budget for one block's chunk of probabilities and the reduction's temporaries.
DEFAULT_ATTENTION_MEMORY_MB = 64.0
#: float32 tensors of one chunk's size a reduction holds at once (logits, probabilities, two temporaries).
ROW_COPIES = 4

AttentionRowsCallback = Callable[[int, "AttentionRows"], None]


def chunk_rows(batch: int, heads: int, keys: int, queries: int, memory_mb: float) -> int:
    """Query rows per chunk: as many as fit ``memory_mb`` with :data:`ROW_COPIES` float32 copies of
    ``[batch, head, chunk, key]``; at least 1, at most ``queries``."""
    if not memory_mb > 0:
        raise ValueError(f"the attention memory budget must be positive, got {memory_mb} MB")
    per_row = batch * heads * keys * 4 * ROW_COPIES
    return max(1, min(queries, int(memory_mb * 2 ** 20 // max(per_row, 1))))


class AttentionRows:
    """One block's probabilities for one forward pass, formed a block of query rows at a time.

    Attributes:
        qk: the block's :class:`~vitlens.models.families.base.QueryKey`.
        chunk: query rows per chunk.
    """

    def __init__(self, qk: QueryKey, chunk: int):
        self.qk, self.chunk = qk, max(1, int(chunk))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(batch, head, query, key)`` of the map that is never formed whole."""
        return self.qk.shape

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(first, last + 1, probabilities [batch, head, rows, key] float32)`` for query rows
        ``start:stop`` (all by default), ``chunk`` rows at a time."""
        n = self.shape[2]
        stop = n if stop is None else min(stop, n)
        for s in range(max(start, 0), stop, self.chunk):
            e = min(s + self.chunk, stop)
            yield s, e, self.qk.rows(s, e)

    def full(self) -> torch.Tensor:
        """The whole map ``[batch, head, query, key]``: for small maps only (a window's tokens)."""
        return self.qk.rows(0, self.shape[2])


def resolve_attention_path(model: nn.Module, path: str = "auto") -> tuple[str, str]:
    """``(path, note)``: ``"chunked"`` or ``"full"`` for ``model``, and why in words.

    ``auto`` takes the chunked path where the model's family recomputes its attention exactly, and
    full maps otherwise; ``chunked`` raises UnsupportedModelError where it cannot; ``full`` always
    reads full maps (the reference path)."""
    from ..models.families.registry import adapter_for

    if path not in ATTENTION_PATHS:
        raise ValueError(f"attention path must be one of {', '.join(ATTENTION_PATHS)}, got {path!r}")
    if path == "full":
        return "full", "full maps [batch, head, query, key] per block, as requested"
    adapter = adapter_for(model)
    blocks = adapter.attention_blocks()
    try:
        adapter.exact_query_key(range(len(blocks)), lambda i, qk: None)  # checks; nothing is entered
    except UnsupportedModelError as e:
        if path == "chunked":
            raise
        return "full", f"full maps: {e}"
    return "chunked", ("chunked: each block's probabilities formed from its own queries and keys a block of "
                       "query rows at a time; the full map is never held")


@contextmanager
def capture_attention_rows(model: nn.Module, *, callback: AttentionRowsCallback, layers: Sequence[int] | None = None,
                           memory_mb: float = DEFAULT_ATTENTION_MEMORY_MB) -> Iterator[list[int]]:
    """Call ``callback(layer, rows)`` with an :class:`AttentionRows` for every kept block of every
    forward pass inside the context; the block's fused path runs as in the plain model, so outputs
    are unchanged. The callback runs inside the block's call, with autocast off, and must not keep
    ``rows`` (the block's q and k) beyond it.

    Args:
        model: a ViT whose family recomputes attention (see :func:`resolve_attention_path`).
        callback: receives ``(layer index, rows)``.
        layers: attention-block indices to read (negative from the end); all by default.
        memory_mb: the budget for one chunk's probabilities and a reduction's temporaries.

    Yields:
        The kept layer indices.

    Raises:
        UnsupportedModelError: the family cannot recompute this model's attention exactly.
    """
    from ..models.families.registry import adapter_for
    from .attention import _select

    adapter = adapter_for(model)
    keep = _select(layers, len(adapter.attention_blocks()))

    def emit(layer: int, qk: QueryKey) -> None:
        b, h, n, k = qk.shape
        rows = AttentionRows(qk, chunk_rows(b, h, k, n, memory_mb))
        with torch.no_grad(), torch.autocast(device_type=qk.q.device.type, enabled=False):
            callback(layer, rows)

    with adapter.exact_query_key(keep, emit):
        yield keep
