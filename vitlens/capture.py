"""capture_attention(): exact per-head attention probabilities from timm ViTs through hooks.

timm's attention modules compute ``softmax(q k^T * scale + bias)`` and pass it through
``attn_drop`` only on their explicit path; with fused attention (timm's default) the
probabilities are never formed. On entry the context switches every known attention module to
the explicit path and hooks the *input* of its ``attn_drop`` (probabilities before dropout); on
exit it removes every hook and restores every ``fused_attn`` flag, also when the body raises.
The model is not otherwise changed: no ``eval()``, no rewritten modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from .errors import UnsupportedModelError

__all__ = ["AttentionCapture", "capture_attention", "attention_modules", "KNOWN_ATTENTION"]

# Attention classes whose explicit path is softmax(...) -> attn_drop -> @ v, with a fused_attn flag.
_KNOWN = [
    ("timm.layers.attention", "Attention"),
    ("timm.layers.attention", "AttentionRope"),
    ("timm.models.vision_transformer", "Attention"),
    ("timm.models.vision_transformer", "ParallelScalingBlock"),
    ("timm.models.beit", "Attention"),
    ("timm.models.eva", "EvaAttention"),
]


def _known_classes() -> tuple[type, ...]:
    found = []
    for mod, name in _KNOWN:
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        if cls not in found:
            found.append(cls)
    return tuple(found)


KNOWN_ATTENTION: tuple[type, ...] = _known_classes()

AttentionCallback = Callable[[int, torch.Tensor], None]


def _is_known(module: nn.Module) -> bool:
    return (isinstance(module, KNOWN_ATTENTION) and hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module))


def _looks_like_attention(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "attention" in name or name.endswith("attn") or hasattr(module, "fused_attn")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention modules vitlens can read, as ``(qualified name, module)`` in forward order.

    Raises:
        UnsupportedModelError: the model has no attention module vitlens knows; the message names
            the module types it found instead.
    """
    found = [(n, m) for n, m in model.named_modules() if _is_known(m)]
    if found:
        return found
    others = sorted({type(m).__name__ for _, m in model.named_modules() if _looks_like_attention(m)})
    if others:
        raise UnsupportedModelError(
            f"{type(model).__name__} has attention modules of type {', '.join(others)}, which vitlens "
            "does not know how to read exactly; supported are timm's "
            + ", ".join(sorted({c.__module__.split('.')[-1] + '.' + c.__name__ for c in KNOWN_ATTENTION}))
            + ".")
    raise UnsupportedModelError(
        f"{type(model).__name__} has no attention modules: it is not a Vision Transformer, so "
        "attention cannot be captured from it (for CNNs use the receptive-field analysis).")


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
        model: a timm ViT (any family whose attention vitlens knows, see ``KNOWN_ATTENTION``).
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
    mods = attention_modules(model)
    keep = _select(layers, len(mods))
    cap = AttentionCapture([mods[i][0] for i in keep], keep, len(mods), store=callback is None)
    saved_flags = [(m, m.fused_attn) for _, m in mods]
    handles = []
    ran = [0] * len(keep)
    fired = [0] * len(keep)

    def make_hooks(slot: int, layer: int):
        def on_probs(_module, args):
            attn = args[0]
            fired[slot] += 1
            if detach:
                attn = attn.detach()
            if callback is not None:
                with torch.autocast(device_type=attn.device.type, enabled=False):  # reductions in float32
                    callback(layer, attn)
            else:
                cap._add(slot, attn)

        def on_forward(_module, _args, _output):
            ran[slot] += 1

        return on_probs, on_forward

    try:
        for _, m in mods:
            m.fused_attn = False
        for slot, layer in enumerate(keep):
            module = mods[layer][1]
            on_probs, on_forward = make_hooks(slot, layer)
            handles.append(module.attn_drop.register_forward_pre_hook(on_probs))
            handles.append(module.register_forward_hook(on_forward))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved_flags:
            m.fused_attn = flag
    for slot, layer in enumerate(keep):
        if ran[slot] and fired[slot] < ran[slot]:
            name, module = mods[layer]
            raise UnsupportedModelError(
                f"attention module {name} ({type(module).__module__}.{type(module).__name__}) ran "
                "without forming attention probabilities, so vitlens cannot capture it exactly; "
                "this timm version's attention code is not one vitlens knows.")
