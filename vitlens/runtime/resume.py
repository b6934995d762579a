"""Interrupted runs: stop cleanly on SIGINT/SIGTERM, save partial sums, continue with --resume.

A long job checks :class:`StopRequest` between batches. When a signal arrived it saves its
partial state (sums, the images already done, the images skipped) into ``OUT/.vitlens-partial``
and exits with :class:`Interrupted`; ``--resume`` reloads that state and skips the done images,
so the result equals an uninterrupted run. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VitlensError
from .io import save_npz

__all__ = ["StopRequest", "Interrupted", "partial_path", "save_partial", "load_partial", "clear_partial"]

PARTIAL_DIR = ".vitlens-partial"


class Interrupted(VitlensError):
    """The run was stopped by a signal, after saving its partial state (``resumable``) or keeping
    none (the command line then removes what the run wrote)."""

    exit_code = 130

    def __init__(self, message: str = "", resumable: bool = True):
        super().__init__(message)
        self.resumable = resumable


class StopRequest:
    """Context manager: SIGINT and SIGTERM set ``requested`` instead of killing the process.

    The first signal says at once that the run finishes its batch and saves; a second Ctrl-C stops
    at once (KeyboardInterrupt), except while the partial sums are being saved (:meth:`saving`),
    when it waits for the save to end so that nothing saved is lost half-written. A job that keeps
    no partial state (``resumable=False``) says instead that it stops after the batch and that
    the same command starts afresh.
    """

    def __init__(self, resumable: bool = True):
        self.resumable = resumable
        self.requested = False
        self.signal_name = ""
        self._saving = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, _frame):
        name = signal.Signals(signum).name
        if self._saving:
            print(f"vitlens: {name} while saving the partial sums; finishing the save first", file=sys.stderr)
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = name
        if self.resumable:
            print(f"vitlens: {name}: finishing this batch, then saving the partial sums for --resume "
                  "(Ctrl-C again stops at once without saving)", file=sys.stderr, flush=True)
        else:
            print(f"vitlens: {name}: finishing this batch, then stopping; this command keeps no partial "
                  "state, so its outputs so far are removed (Ctrl-C again stops at once)", file=sys.stderr,
                  flush=True)

    @contextmanager
    def saving(self):
        """While the body runs, signals wait for it instead of stopping the process."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


def partial_path(out: str | Path, job: str, rank: int = 0) -> Path:
    return Path(out) / PARTIAL_DIR / f"{job}.rank{rank}.npz"


def save_partial(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write partial arrays and a JSON-able ``meta`` atomically into one NPZ."""
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return save_npz(path, payload)


def load_partial(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    if not path.is_file():
        raise VitlensError(f"--resume given but there is no saved partial state at {path}; run without "
                           "--resume to start afresh.")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(bytes(z["__meta__"]).decode())
    return arrays, meta


def clear_partial(out: str | Path, job: str, rank: int = 0) -> None:
    p = partial_path(out, job, rank)
    if p.exists():
        p.unlink()
    try:
        p.parent.rmdir()
    except OSError:
        pass
