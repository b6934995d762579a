"""Progress bars on stderr, and messages that do not break them.

In a terminal, bars nest (a report's bar over each analysis's), tqdm moving the cursor between
their lines. Where stderr is not a terminal (a log file, a pipe, a batch job), a bar opened while
another is showing stays hidden, so the log holds one bar and no cursor-movement codes (``ESC[A``).
:func:`write_message` prints a line above the bars, which are drawn again below it.
"""

from __future__ import annotations

import sys
from typing import Iterable

__all__ = ["progress_bar", "write_message", "stderr_is_terminal"]


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _notebook(bar_class) -> bool:
    return any("notebook" in c.__module__ for c in bar_class.__mro__)


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "img", enabled: bool = True):
    """A tqdm bar on stderr that disappears when done; hidden when ``enabled`` is False, and hidden
    when another bar is showing and stderr is not a terminal (no cursor-movement codes in logs)."""
    from tqdm import std
    from tqdm.auto import tqdm

    if enabled and len(std.tqdm._instances) and not _notebook(tqdm) and not stderr_is_terminal():
        enabled = False
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def write_message(text: str) -> None:
    """Write ``text`` (ending in a newline) to stderr above any progress bar showing, which is
    drawn again below it; plain writing would land in the middle of the bar's line."""
    from tqdm import std

    if len(std.tqdm._instances):
        std.tqdm.write(text.rstrip("\n"), file=sys.stderr)
    else:
        sys.stderr.write(text)
        sys.stderr.flush()
