"""One rule for a model's train/eval mode in every analysis.

Drop-path and dropout make attention maps and gradients random, and batch norm in training mode
mixes the images of a batch, so every analysis runs the model in eval mode inside the call and puts
back the caller's mode of every module afterwards, also when the call raises. Results record it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn

__all__ = ["eval_mode", "MODE_RULE"]

#: What run records say about the mode.
MODE_RULE = "eval: the model ran in eval mode inside the analysis; the caller's mode was restored after"


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[bool]:
    """Put ``models`` in eval mode for the body; restore every module's own ``training`` flag on exit.

    Yields:
        True when any module was in training mode before (the caller's mode differed).
    """
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield any(t for _, t in saved)
    finally:
        for m, t in saved:
            m.training = t
