"""One pass of a model over images into a distance accumulator, and the public ``attention_distance``.

The accumulator is chosen by the model's family adapter: a global one for ViTs, a windowed one
(:mod:`vitlens.analyses.attention.windowed_distance`) for Swin, Swin-V2 and SAM.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...capture.attention import capture_attention
from ...models.layout import token_layout
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
    """
    from ...models.families.registry import forward_of

    device = next(model.parameters()).device
    forward = forward_of(model)
    for x, idx in iter_batches(images, batch_size, indices=indices, workers=workers):
        with torch.no_grad(), eval_mode(model), capture_attention(model, callback=accumulator.update):
            with autocast(device, precision):
                forward(x.to(device, non_blocking=True))
        accumulator.flush()
        yield idx


def new_accumulator(model: nn.Module, input_size=None, *, prefix_tokens: PrefixConvention = "renormalize",
                    units: Unit = "px") -> DistanceAccumulator:
    """An empty accumulator shaped for ``model``'s layers, heads and token layout; for a windowed
    model (its adapter has ``window_layout``: Swin, Swin-V2, SAM) a
    :class:`~vitlens.analyses.attention.windowed_distance.WindowedDistanceAccumulator` over its window layout."""
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
    return acc


def attention_distance(model: nn.Module, images, *, batch_size: int = 32,
                       prefix_tokens: PrefixConvention = "renormalize", units: Unit = "px",
                       precision: str = "fp32", input_size=None, name: str | None = None,
                       progress: bool = False, workers: int = 0) -> AttentionDistance:
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
    """
    from ...runtime.progress import progress_bar

    check_images(images)
    if isinstance(images, torch.Tensor) and input_size is None:
        input_size = tuple(images.shape[-2:])
    acc = new_accumulator(model, input_size, prefix_tokens=prefix_tokens, units=units)
    total = num_images(images)
    with progress_bar(total=total, desc="attention distance", unit="img", enabled=progress) as bar:
        for idx in stream_distance(model, images, acc, batch_size=batch_size, precision=precision,
                                   workers=workers):
            bar.update(len(idx))
    return acc.result(model=model_name(model, name))
