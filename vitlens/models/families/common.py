"""What every family's loader shares: a reachability check, strict local loading, the finish."""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn as nn

from ..checkpoints import load_checkpoint_into, read_state_dict

__all__ = ["host_reachable", "load_strict", "finish_loading"]


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers a TCP connection within ``timeout`` seconds (False when
    HF_HUB_OFFLINE is set, which also means "no network" to vitlens)."""
    import socket
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_strict(model: nn.Module, name: str, path: str | os.PathLike) -> None:
    """Load a local state dict into ``model``, every key and shape matching (the loader timm names use)."""
    load_checkpoint_into(model, name, Path(path), read_state_dict(path))


def finish_loading(model: nn.Module, source: dict, device) -> nn.Module:
    model.vitlens_source = source
    return model.to(device).eval()
