"""Keep the torch profiler's own log lines (kineto's start/stop lines and, on a machine without a
GPU, its failed GPU query) out of a user's terminal, without changing any setting of the process.

The profiler writes them from C++ straight to file descriptor 2, where no Python setting reaches.
:func:`quiet_profiler` points descriptor 2 at a temporary file for the duration of its block, puts
it back on exit, and writes every captured line that is not such a log line to ``sys.stderr``, so
nothing else written meanwhile is lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

__all__ = ["quiet_profiler", "PROFILER_LINE"]

#: A kineto log line: ``USDT:2026-12-02 04:17:23 24296:24296 SyncActivityProfilerHandler.cpp:39] profiler_start``.
PROFILER_LINE = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \S+\.cpp:\d+\] ")


@contextlib.contextmanager
def quiet_profiler() -> Iterator[None]:
    """Within the block, the profiler's log lines on descriptor 2 are dropped; other output is kept."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 here: nothing to keep quiet
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not PROFILER_LINE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
