"""Forward-pass precision: ``fp32``, or ``bf16``/``fp16`` autocast, with reductions kept in float32.

Every analysis takes ``precision=`` and runs only the model's forward (and backward) pass under
autocast; attention maps and gradients are cast to float32 or float64 before anything is summed.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a pass runs, so that the command line's help does not wait for it
    import torch

__all__ = ["PRECISIONS", "autocast", "check_precision", "float32_probabilities"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # names in torch


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast(device: torch.device | str, precision: str):
    """A context that runs the model in ``precision`` on ``device`` (nothing for ``fp32``)."""
    import torch

    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, _DTYPES[precision]))


def float32_probabilities(attn: torch.Tensor) -> torch.Tensor:
    """Attention probabilities ``[..., query, key]`` in float32 for reductions.

    Maps formed in bf16 or fp16 are upcast and every row divided by its float32 sum over all keys:
    a softmax row sums to one, and without this its rounding error (up to a few tenths of a percent
    in bf16) would pass into every sum that does not renormalise (the ``discard`` convention, say).
    float32 and float64 maps are returned as float32 unchanged.
    """
    import torch

    if attn.dtype in (torch.float32, torch.float64):
        return attn.float()
    a = attn.float()
    s = a.sum(-1, keepdim=True)
    return a / torch.where(s > 0, s, torch.ones_like(s))
