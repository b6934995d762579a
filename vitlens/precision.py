"""Forward-pass precision: ``fp32``, or ``bf16``/``fp16`` autocast, with reductions kept in float32.

Every analysis takes ``precision=`` and runs only the model's forward (and backward) pass under
autocast; attention maps and gradients are cast to float32 or float64 before anything is summed.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast(device: torch.device | str, precision: str):
    """A context that runs the model in ``precision`` on ``device`` (nothing for ``fp32``)."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision])
