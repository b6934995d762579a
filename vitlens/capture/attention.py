"""capture_attention(): exact per-head attention probabilities from ViTs through hooks.

The model's family adapter (:func:`vitlens.models.families.registry.adapter_for`: timm, Hugging Face transformers,
torchvision, open_clip) knows where each attention block forms its post-softmax probabilities and
how to switch the library's fast path (fused or flash attention) to the explicit one. On entry the
context does that and hooks every block; on exit it removes every hook and restores every flag, also
when the body raises. The model is not otherwise changed: no ``eval()``, no rewritten modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..runtime.errors import UnsupportedModelError

__all__ = ["AttentionCapture", "capture_attention", "attention_modules"]

AttentionCallback = Callable[[int, torch.Tensor], None]


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules vitlens can read, as ``(qualified name, module)`` in forward order.

    Raises:
        UnsupportedModelError: the model has no attention module vitlens knows (a CNN, or attention
            code no family adapter reads exactly); the message says which.
    """
    from ..models.families.registry import adapter_for

    return [(b.name, b.module) for b in adapter_for(model).attention_blocks()]


class AttentionCapture:
    """What :func:`capture_attention` collected.

    Attributes:
        names: qualified module names of the captured layers, in forward order.
        layer_indices: index of each captured layer among all attention blocks of the model.
        num_layers: number of attention blocks in the model.
    """

    def __init__(self, names: list[str], layer_indices: list[int], num_layers: int, store: bool):
        self.names = names
        self.layer_indices = layer_indices
        self.num_layers = num_layers
        self._store = store
        self._chunks: list[list[torch.Tensor]] = [[] for _ in names]
        self._maps: list[torch.Tensor] | None = None

    @property
    def maps(self) -> list[torch.Tensor]:
        """One tensor per captured layer, ``[batch, head, query, key]``, forward passes concatenated
        along batch. Empty when a callback was given (maps are streamed, not kept)."""
        if not self._store:
            return []
        if self._maps is None:
            empty = [n for n, c in zip(self.names, self._chunks) if not c]
            if len(empty) == len(self.names):
                return []
            if empty or len({len(c) for c in self._chunks}) > 1:
                counts = ", ".join(f"{n}: {len(c)}" for n, c in zip(self.names, self._chunks))
                raise UnsupportedModelError(
                    "the captured layers ran a different number of times, so map i would not belong to "
                    f"layer i ({counts} forward passes); capture only layers that every forward pass runs.")
            self._maps = [torch.cat(c, dim=0) if len(c) > 1 else c[0] for c in self._chunks]
        return self._maps

    def _add(self, slot: int, attn: torch.Tensor) -> None:
        self._chunks[slot].append(attn)
        self._maps = None

    def clear(self) -> None:
        """Drop the stored maps (for example between batches when reusing one context)."""
        self._chunks = [[] for _ in self.names]
        self._maps = None


def _select(layers: Sequence[int] | None, n: int) -> list[int]:
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise ValueError(f"layer {i} is out of range: the model has {n} attention blocks")
        if j not in out:
            out.append(j)
    return sorted(out)


@contextmanager
def capture_attention(
    model: nn.Module,
    *,
    layers: Sequence[int] | None = None,
    callback: AttentionCallback | None = None,
    detach: bool = True,
) -> Iterator[AttentionCapture]:
    """Capture every head's post-softmax attention (before dropout) during forward passes.

    Args:
        model: a ViT of any family vitlens knows (timm, transformers, torchvision, open_clip).
        layers: indices of the attention blocks to keep (negative counts from the end); all by default.
        callback: called as ``callback(layer_index, attn)`` with ``attn`` ``[batch, head, query, key]``
            for every captured layer of every forward pass; when given, nothing is stored, so memory
            does not grow with the number of batches. It runs with autocast off, so its arithmetic
            keeps the precision it asks for under a bf16/fp16 forward pass.
        detach: detach maps from the graph. Pass False to take gradients with respect to them
            (class-specific rollout).

    Yields:
        An :class:`AttentionCapture`; its ``maps`` are complete once the ``with`` body has run.

    Raises:
        UnsupportedModelError: no attention module vitlens knows, or a known module ran without
            forming its probabilities.
    """
    from ..models.families.registry import adapter_for

    adapter = adapter_for(model)
    blocks = adapter.attention_blocks()
    keep = _select(layers, len(blocks))
    cap = AttentionCapture([blocks[i].name for i in keep], keep, len(blocks), store=callback is None)
    slot = {layer: i for i, layer in enumerate(keep)}

    def emit(layer: int, attn: torch.Tensor) -> None:
        if detach:
            attn = attn.detach()
        if callback is not None:
            with torch.autocast(device_type=attn.device.type, enabled=False):  # reductions in float32
                callback(layer, attn)
        else:
            cap._add(slot[layer], attn)

    with adapter.exact_attention(keep, emit):
        yield cap
