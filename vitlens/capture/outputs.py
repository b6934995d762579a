"""capture_outputs(): the outputs of named modules during one forward pass, through hooks.

The receptive field and CKA read block (ViT) or stage (CNN) outputs. The context registers forward
hooks on entry and removes them on exit, also when the body raises; ``run(x)`` runs the model and,
with ``stop_early``, stops the forward pass once the last named module has run. With a ``callback``
each output is handed to it as the module returns and not kept, so a reduction (token norms, say)
holds one layer's output at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..runtime.errors import UnsupportedModelError

__all__ = ["OutputCapture", "capture_outputs", "resolve_layers"]


class _Stop(Exception):
    """Raised from the last hook: the rest of the forward pass is not needed."""


class OutputCapture:
    """Forward hooks on ``layers`` that keep each module's output while the context is open.

    Attributes:
        outputs: module name -> output of the last ``run`` (``[batch, ...]``; the first element
            of a tuple output; NHWC feature maps permuted to NCHW when ``channels_last``); empty
            when a callback takes the outputs.
        order: the names in the order their modules ran.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, channels_last: bool = False,
                 stop_early: bool = True, forward=None, callback=None):
        mods = dict(model.named_modules())
        unknown = [l for l in layers if l not in mods]
        if unknown:
            raise UnsupportedModelError(f"{type(model).__name__} has no module named {', '.join(unknown)}.")
        self.model, self.layers = model, list(layers)
        self.channels_last, self.stop_early = channels_last, stop_early
        self._forward = forward or model
        self._callback = callback
        self._mods = mods
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._handles: list = []

    def __enter__(self) -> "OutputCapture":
        try:
            for name in self.layers:
                self._handles.append(self._mods[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self.order:
                raise UnsupportedModelError(f"module {name} runs more than once per forward pass, so its "
                                            "output is not one layer; measure another module.")
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise UnsupportedModelError(f"module {name} returns {type(output).__name__}, not a tensor.")
            if self.channels_last and output.ndim == 4:
                output = output.permute(0, 3, 1, 2)
            self.order.append(name)
            if self._callback is not None:
                self._callback(name, output)
            else:
                self.outputs[name] = output
            if self.stop_early and len(self.order) == len(self.layers):
                raise _Stop
        return hook

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass of ``x``; returns the named modules' outputs.

        Raises:
            UnsupportedModelError: a named module did not run.
        """
        if not self._handles:
            raise RuntimeError("OutputCapture.run() outside its with block")
        self.outputs, self.order = {}, []
        try:
            self._forward(x)
        except _Stop:
            pass
        missing = [n for n in self.layers if n not in self.order]
        if missing:
            raise UnsupportedModelError(f"modules {', '.join(missing)} did not run in the forward pass.")
        return self.outputs


def capture_outputs(model: nn.Module, layers: Sequence[str], *, channels_last: bool = False,
                    stop_early: bool = True, forward=None, callback=None) -> OutputCapture:
    """A context manager keeping the outputs of ``layers`` (qualified module names) per forward.

    Example::

        with capture_outputs(model, ["blocks.0", "blocks.5"]) as cap:
            outs = cap.run(x)   # {"blocks.0": [batch, token, channel], ...}

    Args:
        channels_last: permute 4-D NHWC outputs to NCHW (timm models with ``output_fmt="NHWC"``).
        stop_early: stop the forward pass once the last named module has run.
        forward: the callable that runs the model on pixels (default: the model itself).
        callback: called as ``callback(name, output)`` when each named module returns; the output
            is then not kept (``run`` returns an empty dict).
    """
    return OutputCapture(model, layers, channels_last=channels_last, stop_early=stop_early, forward=forward,
                         callback=callback)


def default_layers(model: nn.Module) -> list[str]:
    """The layers measured by default, from the model's family adapter: every transformer block of a
    ViT (token outputs), every stage of a CNN (for timm, every level of ``feature_info``, with the
    ResNet stem ``act1``).

    Raises:
        UnsupportedModelError: neither applies; pass ``layers=`` with module names instead.
    """
    from ..models.families.registry import adapter_for

    return adapter_for(model).block_outputs()


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Layers in module registration order and their depth fractions: the position in the model's
    default layer list over its length minus one (for other layers, among those measured)."""
    mods = [n for n, _ in model.named_modules()]
    try:
        defaults = default_layers(model)
    except UnsupportedModelError:
        if layers is None:
            raise
        defaults = []
    layers = list(defaults if layers is None else layers)
    unknown = [l for l in layers if l not in mods]
    if unknown or not layers or len(set(layers)) != len(layers):
        raise UnsupportedModelError(f"{type(model).__name__} layers must be distinct module names it has; "
                                    f"{', '.join(unknown) or 'none or repeated'} given.")
    layers.sort(key=mods.index)
    base = defaults if all(l in defaults for l in layers) else layers
    depth = np.array([base.index(l) for l in layers], dtype=np.float64)
    return layers, depth / (len(base) - 1) if len(base) > 1 else np.zeros(len(layers))
