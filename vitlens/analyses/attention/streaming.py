"""One pass of a model over images into a distance accumulator, and the public ``attention_distance``.

The accumulator is chosen by the model's family adapter: a global one for ViTs, a windowed one
(:mod:`vitlens.analyses.attention.windowed_distance`) for Swin, Swin-V2 and SAM.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...capture.attention import capture_attention
from ...capture.chunked import DEFAULT_ATTENTION_MEMORY_MB, ROW_COPIES, capture_attention_rows, resolve_attention_path
from ...models.layout import token_layout
from ...models.tokens import TokenLayout
from ...models.loading import model_name
from ...runtime.batches import check_images, iter_batches, num_images
from ...runtime.modes import eval_mode
from ...runtime.precision import autocast
from .distance import AttentionDistance, DistanceAccumulator, PrefixConvention, Unit
from .windowed_distance import WindowedDistanceAccumulator

__all__ = ["stream_distance", "new_accumulator", "attention_distance"]


def stream_distance(model: nn.Module, images, accumulator: "DistanceAccumulator", *, batch_size: int = 32,
                    indices=None, precision: str = "fp32", workers: int = 0):
    """Run ``images`` (all, or ``indices`` of them) through ``model`` into ``accumulator``.

    A generator: it yields each batch's file indices once their maps are accumulated, so a caller
    can show progress, stop between batches, or record what is done. Hooks, the fused-attention
    switch and eval mode are set for each batch's forward pass and undone before the batch is
    yielded, so nothing the caller runs in between is counted and the model is as the caller left it.
    The accumulator's ``attention_path`` (set by :func:`new_accumulator`) says whether each block's
    probabilities are formed a block of query rows at a time (``"chunked"``) or read as full maps.
    """
    from ...models.families.registry import forward_of

    device = next(model.parameters()).device
    forward = forward_of(model)
    chunked = getattr(accumulator, "attention_path", "full") == "chunked"
    memory = getattr(accumulator, "attention_memory", None) or DEFAULT_ATTENTION_MEMORY_MB
    auto = getattr(accumulator, "attention_path_requested", "full") == "auto"
    if not hasattr(accumulator, "paths_used"):  # an accumulator made without new_accumulator
        accumulator.paths_used = set()
    for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
        rows = chunked and not (auto and whole_maps_fit(accumulator, x.shape[0], memory))
        accumulator.paths_used.add("chunked" if rows else "full")
        capture = (capture_attention_rows(model, callback=accumulator.update_rows, memory_mb=memory) if rows
                   else capture_attention(model, callback=accumulator.update))
        with torch.no_grad(), eval_mode(model), capture:
            with autocast(device, precision):
                forward(x.to(device, non_blocking=True))
        accumulator.flush()
        yield idx


def whole_maps_fit(accumulator, batch: int, memory_mb: float) -> bool:
    """Whether one block's whole map for a batch, ``[batch, head, N, N]`` with the reduction's
    float32 temporaries, fits ``memory_mb``: then the ``auto`` path reads the model's own maps
    (as fast as the forward pass) instead of forming the rows again. Windowed models keep the rows
    path for their global blocks."""
    layout = getattr(accumulator, "layout", None)
    if not isinstance(layout, TokenLayout):
        return False
    n = layout.num_tokens
    return batch * accumulator.max_heads * n * n * 4 * ROW_COPIES <= memory_mb * 2 ** 20


def new_accumulator(model: nn.Module, input_size=None, *, prefix_tokens: PrefixConvention = "renormalize",
                    units: Unit = "px", attention_path: str = "auto",
                    attention_memory: float = DEFAULT_ATTENTION_MEMORY_MB) -> DistanceAccumulator:
    """An empty accumulator shaped for ``model``'s layers, heads and token layout; for a windowed
    model (its adapter has ``window_layout``: Swin, Swin-V2, SAM) a
    :class:`~vitlens.analyses.attention.windowed_distance.WindowedDistanceAccumulator` over its window layout.
    ``attention_path`` (``auto``, ``chunked``, ``full``) is resolved here; with ``auto`` a batch whose
    whole maps fit the budget reads them (:func:`whole_maps_fit`) and larger ones take the rows path, and
    (:func:`~vitlens.capture.chunked.resolve_attention_path`) and kept with ``attention_memory`` (MB)
    as the accumulator's ``attention_path``, ``attention_path_note`` and ``attention_memory``."""
    from ...models.families.registry import adapter_for

    adapter = adapter_for(model)
    blocks = adapter.attention_blocks()
    if hasattr(adapter, "window_layout"):
        acc = WindowedDistanceAccumulator(adapter.window_layout(input_size), [b.num_heads for b in blocks],
                                          prefix_tokens=prefix_tokens, units=units,
                                          device=next(model.parameters()).device)
    else:
        acc = DistanceAccumulator(token_layout(model, input_size), len(blocks), max(b.num_heads for b in blocks),
                                  prefix_tokens=prefix_tokens, units=units, device=next(model.parameters()).device)
    acc.layer_names = tuple(b.name for b in blocks)  # what the result is labelled with
    acc.depths = tuple(b.depth for b in blocks)
    acc.attention_path, acc.attention_path_note = resolve_attention_path(model, attention_path)
    acc.attention_path_requested, acc.max_heads, acc.paths_used = attention_path, max(b.num_heads for b in blocks), set()
    acc.attention_memory = float(attention_memory)
    if not acc.attention_memory > 0:
        raise ValueError(f"attention_memory must be positive, got {attention_memory} MB")
    return acc


def attention_distance(model: nn.Module, images, *, batch_size: int = 32,
                       prefix_tokens: PrefixConvention = "renormalize", units: Unit = "px",
                       precision: str = "fp32", input_size=None, name: str | None = None,
                       progress: bool = False, workers: int = 0, attention_path: str = "auto",
                       attention_memory: float = DEFAULT_ATTENTION_MEMORY_MB) -> AttentionDistance:
    """Mean attention distance of every head of ``model`` over ``images``.

    Args:
        model: a ViT; it runs in eval mode inside the call and is left in the caller's mode.
            For a windowed model (Swin, Swin-V2, SAM's encoder) the result is a
            :class:`~vitlens.analyses.attention.windowed_distance.WindowedAttentionDistance`, defined per window in
            each block's un-shifted feature map (see :mod:`vitlens.models.windows`).
        images: an :class:`~vitlens.data.ImageSet` or a tensor ``[image, 3, height, width]``
            already preprocessed for the model.
        batch_size: images per forward pass (results do not depend on it).
        prefix_tokens: ``"renormalize"`` (default) or ``"discard"``.
        units: ``"px"`` (default), ``"patches"`` or ``"fraction"``.
        precision: forward pass in ``fp32``, ``bf16`` or ``fp16``; reductions are float32.
        input_size: the input size, for models built with ``dynamic_img_size`` (default: the model's).
        name: the model's name in the result (default: its recorded name).
        progress: show a progress bar.
        workers: image-decoding worker processes for an ImageSet.
        attention_path: ``"auto"`` (default: chunked where the model's family recomputes its
            attention exactly from queries and keys, else full maps), ``"chunked"`` (an error where it
            cannot) or ``"full"`` (every block's full map ``[batch, head, query, key]``, the reference
            path). The result's ``attention_path`` and ``attention_path_note`` say which ran.
        attention_memory: MB for one block's chunk of probabilities and its reduction on the chunked
            path (the chunk of query rows follows from it; results do not depend on it).

    The result also holds each head's ``entropy`` and ``prefix_share``
    (:mod:`vitlens.analyses.attention.entropy`), from the same pass.
    """
    from ...runtime.progress import progress_bar

    check_images(images)
    if isinstance(images, torch.Tensor) and input_size is None:
        input_size = tuple(images.shape[-2:])
    acc = new_accumulator(model, input_size, prefix_tokens=prefix_tokens, units=units, attention_path=attention_path,
                          attention_memory=attention_memory)
    total = num_images(images)
    with progress_bar(total=total, desc="attention distance", unit="img", enabled=progress) as bar:
        for idx in stream_distance(model, images, acc, batch_size=batch_size, precision=precision,
                                   workers=workers):
            bar.update(len(idx))
    return acc.result(model=model_name(model, name))
