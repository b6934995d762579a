"""capture_residuals(): the skip input and the branch output of every residual sub-layer, per pass.

The family adapter describes each residual block (:class:`~vitlens.models.families.base.ResidualBlock`):
where the branches enter the stream and, for CNN units, the shortcut projection and the sum. Inside
the context, forward hooks read those tensors (copies: ResNets add in place) while the block runs;
when it returns, the skip inputs are formed (the block input, or the projection's output; each later
sub-layer's is the previous skip plus the previous branch), the last sum is checked against the
block's own (so a block of another structure is refused, not measured wrongly), and
``emit(block, sublayer, x, fx)`` is called once per sub-layer with ``x`` and ``f(x)`` in the same
layout: ``[batch, token, channel]`` for transformer blocks (sequence-first ones transposed) or
``[batch, channel, height, width]`` for CNN units. Hooks are registered on entry and removed on
exit, also when the body raises.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..models.families.base import ResidualBlock, ResidualSite
from ..runtime.errors import UnsupportedModelError

__all__ = ["ResidualCapture", "capture_residuals", "EmitResidual", "SUM_RTOL"]

#: ``emit(block_index, sublayer_index, x, fx)``.
EmitResidual = Callable[[int, int, torch.Tensor, torch.Tensor], None]

#: Largest accepted difference between a block's own sum and the sum of the parts read, relative
#: to the largest entry of the sum (both are the same additions of the same tensors, so in practice 0).
SUM_RTOL = 1e-3


def _first_tensor(args, kwargs) -> torch.Tensor | None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    return None


class ResidualCapture:
    """Hooks on every block of ``blocks`` (see the module docstring)."""

    def __init__(self, blocks: Sequence[ResidualBlock], emit: EmitResidual):
        self.blocks = list(blocks)
        self.emit = emit
        self._handles: list = []
        self._active: ResidualBlock | None = None
        self._input: torch.Tensor | None = None
        self._seen: dict[tuple[int, str], list[torch.Tensor]] = {}

    # -- hooks ---------------------------------------------------------------------------------
    def _record(self, key: tuple[int, str], value) -> None:
        if self._active is None:
            return
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if isinstance(value, torch.Tensor):
            self._seen.setdefault(key, []).append(value.detach().clone())

    def _on_block_input(self, block: ResidualBlock):
        def hook(_module, args, kwargs):
            self._active, self._seen = block, {}
            x = _first_tensor(args, kwargs)
            self._input = None if x is None else x.detach().clone()
        return hook

    def _on_site(self, key: tuple[int, str], where: str):
        if where == "input":
            def pre(_module, args, kwargs):
                self._record(key, _first_tensor(args, kwargs))
            return pre

        def post(_module, _args, output):
            self._record(key, output)
        return post

    def _read(self, block: ResidualBlock, s: ResidualSite) -> torch.Tensor:
        got = self._seen.get((id(s.module), s.where), [])
        if len(got) <= s.call:
            raise UnsupportedModelError(
                f"{s.name} ran {len(got)} time(s) in a pass of {block.name}, so vitlens cannot read the "
                f"residual branch it expects there (call {s.call + 1}); {type(block.module).__name__} is not "
                "built the way vitlens reads it.")
        return got[s.call]

    def _on_block_output(self, block: ResidualBlock):
        def hook(_module, _args, output):
            try:
                self._finish(block, output[0] if isinstance(output, (tuple, list)) else output)
            finally:
                self._active, self._seen, self._input = None, {}, None
        return hook

    def _finish(self, block: ResidualBlock, output: torch.Tensor) -> None:
        x = self._read(block, block.shortcut) if block.shortcut is not None else self._input
        branches = [self._read(block, s) for s in block.branches]
        total = self._read(block, block.total) if block.total is not None else output.detach()
        pairs = []
        for f in branches:
            if x is None or f.shape != x.shape:
                raise UnsupportedModelError(
                    f"in {block.name} the skip input {tuple(x.shape) if x is not None else None} and the branch "
                    f"output {tuple(f.shape)} differ in shape, so they are not one residual sum.")
            pairs.append((x, f))
            x = x + f
        err = float((total.float() - x.float()).abs().max()) if total.shape == x.shape else float("inf")
        if err > SUM_RTOL * float(x.float().abs().max()) + 1e-6:
            raise UnsupportedModelError(
                f"the output of {block.name} ({type(block.module).__name__}) is not the sum of its skip input "
                f"and the branches vitlens reads (largest difference {err:.3g}); its residual structure is not "
                "one vitlens knows, so its skip ratios are not measured.")
        for k, (skip, f) in enumerate(pairs):
            if block.layout == "tokens_first":
                skip, f = skip.transpose(0, 1), f.transpose(0, 1)
            self.emit(block.index, k, skip, f)

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "ResidualCapture":
        try:
            for b in self.blocks:
                self._handles.append(b.module.register_forward_pre_hook(self._on_block_input(b), with_kwargs=True))
                sites = list(b.branches) + [s for s in (b.shortcut, b.total) if s is not None]
                for mod, where in {(s.module, s.where) for s in sites}:
                    key = (id(mod), where)
                    if where == "input":
                        h = mod.register_forward_pre_hook(self._on_site(key, where), with_kwargs=True)
                    else:
                        h = mod.register_forward_hook(self._on_site(key, where))
                    self._handles.append(h)
                self._handles.append(b.module.register_forward_hook(self._on_block_output(b)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active, self._seen, self._input = None, {}, None


def capture_residuals(blocks: Sequence[ResidualBlock], emit: EmitResidual) -> ResidualCapture:
    """A context manager calling ``emit(block, sublayer, x, fx)`` for every residual sub-layer of
    ``blocks`` (from the family adapter's ``residual_blocks()``) on every forward pass inside it.

    Example::

        blocks = adapter_for(model).residual_blocks()
        with capture_residuals(blocks, lambda b, k, x, fx: ...):
            model(images)
    """
    return ResidualCapture(blocks, emit)
