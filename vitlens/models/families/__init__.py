"""The model families vitlens reads, one adapter module per library.

Importing this package imports every family module whose library code is present; each module's
adapter classes register themselves with :mod:`.registry` (``@register_family``). A new family is
one new module here, added to the list below; nothing else changes.
"""

import importlib
import importlib.util as _util

from .registry import _register_module

# Windowed and hierarchical models first (their classes are timm's or transformers' too), then the
# plain families.
FAMILY_MODULES = ("timm_windowed", "transformers_windowed", "timm", "transformers", "torchvision", "open_clip")

for _name in FAMILY_MODULES:
    if _util.find_spec(f"{__name__}.{_name}") is not None:
        _register_module(importlib.import_module(f"{__name__}.{_name}"))
