"""The family registry: which adapter answers vitlens's questions about a model object.

``adapter_for(model)`` tries the registered adapters in order (:data:`FAMILIES`) and returns the
first whose ``handles(model)`` is true; the answer is cached per model object. A family module
registers its adapter with ``@register_family``. ``load_by_prefix(name)`` builds a model from a
prefixed name (``hf:``, ``torchvision:``, ``open_clip:``) and returns None for plain timm names.

Each family module imports its library lazily, so vitlens works without the optional ones.
"""

from __future__ import annotations

import importlib
import os
import weakref

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from .base import FamilyAdapter

__all__ = ["FAMILIES", "PREFIXES", "adapter_for", "forward_of", "register_family", "load_by_prefix"]

#: Registered adapter classes, in the order ``adapter_for`` tries them.
FAMILIES: list[type[FamilyAdapter]] = []

#: Name prefix -> family module (relative to this package) whose ``load(name, ...)`` builds it.
PREFIXES: dict[str, str] = {"hf:": "transformers", "torchvision:": "torchvision", "open_clip:": "open_clip"}

# model -> weak reference to its adapter: the same adapter while anyone holds it, and no model is
# kept alive by the cache (an adapter holds its model, so a strong value would pin the key).
_LISTED: list[bool] = []

_CACHE: "weakref.WeakKeyDictionary[nn.Module, weakref.ref[FamilyAdapter]]" = weakref.WeakKeyDictionary()


def _list_families() -> None:
    """Import the package that lists the family modules (each registers its adapters on import)."""
    if not _LISTED:
        importlib.import_module(__package__)
        _LISTED.append(True)


def register_family(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Add an adapter class to the registry (idempotent); usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, FamilyAdapter)):
        raise TypeError(f"{cls!r} is not a FamilyAdapter subclass")
    if cls not in FAMILIES:
        FAMILIES.append(cls)
    return cls


def _register_module(module) -> None:
    """Register every adapter class a family module defines (whether or not it used the decorator)."""
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, FamilyAdapter) and value is not FamilyAdapter \
                and value.__module__ == module.__name__ and value.family:
            register_family(value)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of ``model``'s family.

    Raises:
        UnsupportedModelError: no registered family handles the model; the message names its class
            and the supported families.
    """
    _list_families()
    ref = _CACHE.get(model)
    adapter = ref() if ref is not None else None
    if adapter is not None:
        return adapter
    for cls in FAMILIES:
        if cls.handles(model):
            adapter = cls(model)
            _CACHE[model] = weakref.ref(adapter)
            return adapter
    kind = f"{type(model).__module__}.{type(model).__name__}"
    names = ", ".join(c.family for c in FAMILIES) or "none registered"
    raise UnsupportedModelError(
        f"vitlens does not know the model class {kind}: no model family handles it. Supported "
        f"families: {names}. Load models with vitlens.load_model (timm names, or the prefixes "
        f"{', '.join(PREFIXES)}).")


def forward_of(model: nn.Module):
    """The callable that runs ``model`` on pixels ``[batch, 3, height, width]`` and returns a tensor
    (its family adapter's ``forward``); the model itself for a module no family knows."""
    try:
        return adapter_for(model).forward
    except UnsupportedModelError:
        return model


def load_by_prefix(name: str, *, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
                   device: str | torch.device = "cpu") -> nn.Module | None:
    """Build a model named with a family prefix, or return None for a plain (timm) name.

    ``hf:<repo id or local directory>``, ``torchvision:<name>[:<weights>]``,
    ``open_clip:<architecture>[:<pretrained tag>]``. The model comes back in eval mode on
    ``device`` with ``model.vitlens_source`` recording where its weights came from.

    Raises:
        ModelLoadError: the library is not installed, the name is unknown, or the weights cannot be
            read (within seconds when the network is unreachable and nothing is cached).
    """
    for prefix, module_name in PREFIXES.items():
        if name.startswith(prefix):
            module = importlib.import_module(f"{__package__}.{module_name}")
            return module.load(name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    return None
