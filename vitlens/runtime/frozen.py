"""Read-only result arrays: a result describes a run, so nothing may change its numbers in place."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["freeze_arrays"]


def freeze_arrays(result) -> None:
    """Mark every numpy array field of the dataclass instance ``result`` read-only."""
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
