"""The family interface: what vitlens asks of a model, whichever library built it.

A family adapter answers a few questions about one model object: its token layout, its attention
blocks in forward order and how to read their exact post-softmax probabilities, its learned
absolute position table, its block or stage outputs, where its residual branches join the stream,
its patch-embedding filters and its preprocessing. Analyses, jobs and plots talk to the adapter, never to the library.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from ..tokens import TokenLayout

__all__ = ["AttentionBlock", "PositionTable", "Preprocessing", "FamilyAdapter", "EmitAttention", "kept_blocks",
           "ResidualSite", "ResidualBlock", "RESIDUAL_LAYOUTS",
           "EmitQueryKey", "QueryKey", "bias_rows"]

#: ``emit(block_index, attn)`` with ``attn`` ``[batch, head, query, key]`` post-softmax probabilities.
EmitAttention = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class QueryKey:
    """One block's attention in factored form: its probabilities are
    ``softmax(q k^T * scale + bias)`` row by row, so any block of query rows can be formed alone.

    Attributes:
        q: ``[batch, head, query, head_dim]`` the queries exactly as the block attends with them
            (after its q-norm and rotary embedding).
        k: ``[batch, head, key, head_dim]`` the keys, likewise.
        scale: the factor on ``q k^T``.
        bias: ``bias(start, stop)`` -> the additive logits (relative position bias, mask) of query
            rows ``start:stop``, broadcastable to ``[batch, head, stop - start, key]``; None when
            the block adds none. A boolean mask is returned as 0 / -inf.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float
    bias: Callable[[int, int], torch.Tensor] | None = None

    @functools.cached_property
    def keys_t(self) -> torch.Tensor:
        """``k^T`` ``[batch, head, head_dim, key]`` in float32, contiguous, made once per block: a
        block's k is usually a strided view of its qkv projection, and a product with a strided
        operand copies it on every call."""
        return self.k.float().transpose(-2, -1).contiguous()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(batch, head, query, key)`` of the full map (which is never formed)."""
        return (self.q.shape[0], self.q.shape[1], self.q.shape[2], self.k.shape[2])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Probabilities of query rows ``start:stop`` in float32, ``[batch, head, stop - start, key]``:
        exact for those rows, because a softmax is taken per row."""
        q = self.q[:, :, start:stop].float() * self.scale
        s = q @ self.keys_t
        if self.bias is not None:
            s = s + self.bias(start, stop).float()
        return torch.softmax(s, dim=-1)


def bias_rows(mask: torch.Tensor | None) -> Callable[[int, int], torch.Tensor] | None:
    """``bias(start, stop)`` for an additive or boolean mask ``[..., query or 1, key]``."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        keep = mask
        mask = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device).masked_fill(~keep, float("-inf"))
    full = mask.shape[-2] > 1 if mask.ndim >= 2 else False

    def bias(start: int, stop: int) -> torch.Tensor:
        return mask[..., start:stop, :] if full else mask
    return bias


#: ``emit(block_index, qk)`` with the block's :class:`QueryKey` for one forward pass.
EmitQueryKey = Callable[[int, QueryKey], None]


@dataclass(frozen=True)
class AttentionBlock:
    """One attention block: its qualified module name, the module, its head count and its depth
    (the index of the transformer block it belongs to, 0-based, in forward order)."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    num_heads: int
    depth: int


@dataclass(frozen=True)
class PositionTable:
    """A learned absolute position table laid out on the patch grid.

    Attributes:
        patches: ``[grid_h, grid_w, dim]`` patch entries, prefix entries removed.
        prefix_entries: how many prefix tokens had an entry in the stored table.
        trainable: whether the table requires gradients (a fixed sin-cos table does not).
        resampling: how the family resamples the table to another grid (for the record).
    """

    patches: torch.Tensor
    prefix_entries: int
    trainable: bool
    resampling: str


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing from the model's own config or processor."""

    input_size: tuple[int, int]          # (height, width) the model takes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"       # resize filter: bicubic, bilinear, nearest
    crop_pct: float = 1.0                # resize to input / crop_pct, then centre-crop
    crop_mode: str = "center"            # center | squash | border (timm's names)
    resize_shortest: bool = True         # resize the shorter side (True) or both sides (False)


#: How a residual block's tensors are laid out: ``tokens`` ``[batch, token, channel]``,
#: ``tokens_first`` ``[token, batch, channel]`` (sequence-first transformers), ``channels``
#: ``[batch, channel, height, width]`` (CNN residual units).
RESIDUAL_LAYOUTS = ("tokens", "tokens_first", "channels")


@dataclass(frozen=True)
class ResidualSite:
    """Where one tensor of a residual block is read: the output (or first input) of ``module``
    on its ``call``-th call (0-based) within one forward pass of the block."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    where: str = "output"                # "output" or "input"
    call: int = 0


@dataclass(frozen=True)
class ResidualBlock:
    """One block of residual sub-layers ``x <- x + f_k(x)``, run in ``sublayers`` order.

    The skip input of the first sub-layer is the block's input, or the output of ``shortcut`` (a
    CNN unit's projection) when given; that of each later sub-layer is the previous skip input plus
    the previous branch. ``branches[k]`` is where ``f_k(x)`` is read as it is added (after layer
    scale, before the sum). ``total`` is where the last sum ``x + f(x)`` appears (None: the block's
    output); it is compared with the sum formed from the parts, so that a block whose structure is
    not the one described is refused instead of measured wrongly.

    Attributes:
        index: the block's position among the model's residual blocks (0-based, forward order).
        name: the block's qualified module name.
        module: the block.
        sublayers: ``("attention", "mlp")`` for a transformer block, ``("residual",)`` for a CNN unit.
        layout: one of :data:`RESIDUAL_LAYOUTS`.
    """

    index: int
    name: str
    module: nn.Module = field(repr=False, compare=False)
    sublayers: tuple[str, ...]
    branches: tuple[ResidualSite, ...]
    layout: str = "tokens"
    shortcut: ResidualSite | None = None
    total: ResidualSite | None = None


def kept_blocks(blocks: Sequence[int], num_blocks: int) -> list[int]:
    """The block indices ``exact_attention`` is asked for, sorted and distinct; ValueError when one is
    out of range."""
    keep = sorted({int(i) for i in blocks})
    if any(not 0 <= i < num_blocks for i in keep):
        raise ValueError(f"block indices {keep} out of range: the model has {num_blocks} attention blocks")
    return keep


class FamilyAdapter(ABC):
    """One model's answers to vitlens's questions. Subclasses implement one family.

    ``handles(model)`` says whether the adapter is for this model; the registry in
    :mod:`vitlens.models.families` tries the adapters in order and resolves one per model.
    """

    family: ClassVar[str] = ""

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    @abstractmethod
    def handles(cls, model: nn.Module) -> bool:
        """Whether this adapter is for ``model``."""

    # -- tokens and attention --------------------------------------------------------------
    @abstractmethod
    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        """The token sequence for inputs of ``input_size`` (default: the model's own)."""

    @abstractmethod
    def attention_blocks(self) -> list[AttentionBlock]:
        """Every attention block in forward order. Raises UnsupportedModelError for a model with
        none (a CNN) or with attention vitlens cannot read exactly."""

    @abstractmethod
    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention) -> AbstractContextManager:
        """A context manager: inside it, every forward pass calls ``emit(i, attn)`` for every
        block index ``i`` in ``blocks`` with that block's exact probabilities before dropout.

        On entry the family's fast path (fused or flash attention) is switched to the explicit one;
        on exit every hook is removed and every flag restored, also when the body raises. The
        model's outputs are unchanged. On exit it raises UnsupportedModelError when a block ran
        without forming its probabilities."""

    def exact_query_key(self, blocks: Sequence[int], emit: EmitQueryKey) -> AbstractContextManager:
        """A context manager: inside it, every forward pass calls ``emit(i, qk)`` for every block
        index ``i`` in ``blocks`` with the block's own queries, keys, scale and bias
        (:class:`QueryKey`), from which any rows of its probabilities can be formed exactly without
        the ``[query, key]`` map. The block's fast path (fused attention) runs as the model's own, so
        outputs are unchanged; on exit every hook is removed and every flag restored.

        Raises UnsupportedModelError at once (before anything is hooked) where the family's
        attention cannot be recomputed exactly; callers then read full maps with
        :meth:`exact_attention`. This default says so for a family that implements neither."""
        raise UnsupportedModelError(
            f"the {self.family or type(self).__name__} family does not recompute attention from queries and "
            "keys; its full maps are read instead.")

    # -- tables, outputs, filters, preprocessing ---------------------------------------------
    @abstractmethod
    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = False) -> PositionTable | None:
        """The learned absolute table (resampled to ``input_size``'s grid the family's way), or
        None when the model has none (relative bias, rotary)."""

    @abstractmethod
    def block_outputs(self) -> list[str]:
        """Qualified names of the modules whose outputs are the blocks (ViT, tokens
        ``[batch, token, channel]``) or stages (CNN, ``[batch, channel, height, width]``)."""

    def block_tokens(self, output: torch.Tensor) -> torch.Tensor:
        """A ViT block's output (a module of :meth:`block_outputs`) as tokens ``[batch, token,
        channel]`` in the order of :meth:`token_layout`; families whose blocks run sequence-first
        override it."""
        return output

    @abstractmethod
    def residual_blocks(self) -> list[ResidualBlock]:
        """Every residual block in forward order, with where its skip inputs and branch outputs are
        read (:class:`ResidualBlock`). Raises UnsupportedModelError for a model whose residual
        branches vitlens cannot find, saying why."""

    @abstractmethod
    def patch_filters(self) -> torch.Tensor | None:
        """The patch embedding's linear filters ``[dim, 3, p, p]`` when it reads pixels, else None."""

    @abstractmethod
    def preprocessing(self) -> Preprocessing:
        """The eval preprocessing from the model's own config or processor."""

    # -- what the parameters and the outputs are -------------------------------------------------
    @abstractmethod
    def embedding_parameters(self) -> list[str]:
        """Qualified names (in the whole model) of the parameters that turn pixels into tokens: the
        patch embedding (its projection, and its norm where it has one), the learned position table
        and the class, distillation and register tokens. Empty for a CNN; a hybrid's convolutional
        stem is not part of it."""

    @abstractmethod
    def image_tower(self) -> list[str]:
        """Qualified names of the modules :meth:`forward` runs the pixels through, ``[""]`` for the
        whole model; a CLIP model's text tower is not among them."""

    @abstractmethod
    def output_layout(self, name: str) -> str:
        """How the output of module ``name`` is laid out: ``"tokens"`` ``[batch, token, channel]``,
        ``"NCHW"`` ``[batch, channel, height, width]`` or ``"NHWC"`` ``[batch, height, width, channel]``
        (channels-last feature maps, which are read in that layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model on ``[batch, 3, height, width]`` pixels and return a tensor (logits or
        pooled features), whatever the family's call convention."""
        return self.model(x)
