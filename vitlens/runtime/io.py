"""Writing results: atomic files, output folders, and the run record.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written CSV, NPZ or figure that looks complete.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import stat
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import OutputError

__all__ = ["atomic_path", "write_json", "write_text", "save_csv", "save_npz", "save_npy",
           "save_figure", "prepare_out_dir", "versions", "RunRecord"]


def _create_temp(path: Path) -> Path:
    """Create an empty, unique temporary file beside ``path``, with the permissions a plain
    ``open(path, "w")`` would give: those of the file it replaces, or 0666 less the umask for a new
    one (``mkstemp``'s 0600 would make results unreadable to everyone else)."""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}{path.suffix}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        with suppress(FileNotFoundError):  # a new file keeps open()'s mode
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")


def save_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas frame as CSV at full precision: whole numbers as written, each float64 as the
    shortest decimal that reads back to the same bits (Python's ``repr``), so counts stay exact,
    values round-trip (``pd.read_csv(..., float_precision="round_trip")``) and identical runs give
    identical files. Every CSV vitlens writes goes through here."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


_EXTRA_FORMATS: ContextVar[tuple[str, ...]] = ContextVar("vitlens_extra_figure_formats", default=())


@contextmanager
def figure_formats(formats) -> Iterator[None]:
    """Within the block, :func:`save_figure` also writes every PNG figure in each of ``formats``
    (``["pdf"]``: a PDF beside each PNG, same stem); the setting is this context's only."""
    token = _EXTRA_FORMATS.set(tuple(str(f).lower().lstrip(".") for f in formats))
    try:
        yield
    finally:
        _EXTRA_FORMATS.reset(token)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the file extension. Inside
    :func:`figure_formats`, a PNG is also written in the extra formats, beside it."""
    path = Path(path)
    kwargs.setdefault("dpi", 150)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), **kwargs)
    if path.suffix.lower() == ".png":
        for fmt in _EXTRA_FORMATS.get():
            if fmt != "png":
                with atomic_path(path.with_suffix(f".{fmt}")) as tmp:
                    fig.savefig(tmp, format=fmt, **kwargs)
    return path


def prepare_out_dir(out: str | os.PathLike, products: list[str], overwrite: bool = False) -> Path:
    """Check that ``out`` can be written and holds none of ``products`` (unless ``overwrite``).

    Called before any computation, so a mistake costs nothing.

    Raises:
        OutputError: ``out`` or one of its parents is a file, the folder cannot be created or
            written (permissions, read-only file system), or it holds results and not ``overwrite``.
    """
    out = Path(out)
    try:
        blocker = next((q for q in (out, *out.parents) if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            where = "is a file" if blocker == out else f"is under {blocker}, which is a file"
            raise OutputError(f"cannot use {out} as the output folder: it {where}, not a folder; "
                              "choose another --out.")
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".vitlens-probe", delete=True)
        probe.close()
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {out} ({e.strerror or e}); "
                          "choose another --out or fix its permissions.") from e
    existing = [p for p in products if (out / p).exists()]
    if existing and not overwrite:
        raise OutputError(f"the output folder {out} already holds results ({', '.join(existing[:4])}); "
                          "pass --overwrite to replace them, or choose another --out.")
    return out


def versions() -> dict[str, str]:
    import timm
    import torch

    from .version import __version__
    return {"vitlens": __version__, "timm": timm.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "platform": platform.platform()}


class RunRecord:
    """The JSON record of one run: what was run, on what, with which conventions, and how long."""

    def __init__(self, command: str, **fields: Any):
        self._start = time.perf_counter()
        self.data: dict[str, Any] = {"command": command,
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "versions": versions(), **fields}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def save(self, path: str | os.PathLike) -> Path:
        self.data["wall_time_s"] = round(time.perf_counter() - self._start, 3)
        return write_json(path, self.data)
