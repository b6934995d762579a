"""File-system- and URL-safe names: the one slug function for files, folders and page anchors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

__all__ = ["slug", "model_slugs"]


def slug(text: str, sep: str = "_") -> str:
    """``text`` with every run of characters outside ``A-Z a-z 0-9 . _ -`` replaced by ``sep``
    and ``sep`` stripped from the ends (``"model"`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9._-]+", sep, text).strip(sep) or "model"


def model_slugs(specs: Sequence[tuple[str, str | None]]) -> list[str]:
    """One distinct slug per ``(model name, checkpoint or None)``: the name, with the checkpoint's
    file stem when there is one, numbered ``_2``, ``_3``... where two would be the same."""
    out: list[str] = []
    for name, ckpt in specs:
        base = slug(name + (f"_{Path(ckpt).stem}" if ckpt else ""))
        s, k = base, 2
        while s in out:
            s, k = f"{base}_{k}", k + 1
        out.append(s)
    return out
