"""The one input-size normaliser: an int, ``(h, w)``, ``(c, h, w)`` or a one-element list to
``(height, width)``, with a clear error for anything else."""

from __future__ import annotations

from typing import Sequence

from .errors import VitlensError

__all__ = ["size_pair", "input_size_arg"]


def size_pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from one int, a 1-sequence, ``(h, w)`` or ``(c, h, w)`` (last two kept)."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if not t:
        raise ValueError("an empty size")
    return (t[0], t[0]) if len(t) == 1 else (t[-2], t[-1])


def input_size_arg(v: int | Sequence[int] | None, what: str = "--input-size") -> tuple[int, int] | None:
    """A user's input size (one value, or height and width) as ``(height, width)``, None for None.

    Raises:
        VitlensError: not one or two positive whole numbers.
    """
    if v is None:
        return None
    values = [v] if isinstance(v, int) else list(v)
    if len(values) not in (1, 2) or any(int(x) != x or int(x) < 1 for x in values):
        raise VitlensError(f"{what} takes one or two positive whole numbers (height width), got "
                           f"{' '.join(str(x) for x in values) or 'nothing'}.")
    return size_pair([int(x) for x in values])
