"""Local checkpoints: read a state dict without running code, and load it with every key matching."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..runtime.errors import ModelLoadError

__all__ = ["read_state_dict", "load_checkpoint_into"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "model_ema", "state_dict_ema")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a PyTorch file without ever running code from it.

    PyTorch files are read with ``torch.load(weights_only=True)``. Wrappers such as
    ``{"state_dict": ...}`` or ``{"model": ...}`` and a ``module.`` prefix (DataParallel) are removed.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint {p} does not exist or is not a file.")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(f"checkpoint {p} is not a readable safetensors file ({e}); "
                                 "it may be truncated or not a safetensors file at all.") from e
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
            msg = str(e).split("\n")[0]
            if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
                raise ModelLoadError(
                    f"checkpoint {p} was refused: it holds Python objects that could run code when "
                    f"loaded, and vitlens only reads plain tensors ({msg}). Re-save it as a state dict "
                    "(torch.save(model.state_dict(), path)) or as safetensors.") from e
            raise ModelLoadError(f"checkpoint {p} could not be read as a PyTorch file ({msg}); it may "
                                 "be truncated or in another format.") from e
    sd = _unwrap(sd, p)
    return sd


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise ModelLoadError(f"checkpoint {path} holds no state dict (a mapping of names to tensors); "
                             f"found {type(obj).__name__}.")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(k, str) for k in d) and \
        sum(isinstance(v, torch.Tensor) for v in d.values()) >= max(1, len(d) // 2)


def _mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shape


def _mismatch_message(name: str, path: Path, missing, unexpected, shape) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
    if shape:
        parts.append(f"{len(shape)} of another shape (first: " + ", ".join(
            f"{k} is {tuple(a)} in the checkpoint but {tuple(b)} in the model" for k, a, b in shape[:3]) + ")")
    return (f"checkpoint {path} does not fit {name}: keys {'; '.join(parts)}. Check that the model "
            "name is the architecture the checkpoint was trained with.")


def load_checkpoint_into(model: nn.Module, name: str, path: Path, sd: dict) -> None:
    """Load ``sd`` into ``model`` with every key and shape matching (after timm's own key filter for
    original-format checkpoints), or raise ModelLoadError listing what does not fit."""
    missing, unexpected, shape = _mismatch(model, sd)
    if missing or unexpected or shape:
        # Original-format checkpoints (OpenAI CLIP, DINOv2, ...) fit after timm's own key filter.
        filt = getattr(__import__(type(model).__module__, fromlist=["_"]), "checkpoint_filter_fn", None)
        if filt is not None:
            try:
                converted = filt(dict(sd), model)
            except Exception:
                converted = None
            if converted is not None and not any(_mismatch(model, converted)):
                sd = converted
                missing, unexpected, shape = [], [], []
    if missing or unexpected or shape:
        raise ModelLoadError(_mismatch_message(name, path, missing, unexpected, shape))
    model.load_state_dict(sd, strict=True)
