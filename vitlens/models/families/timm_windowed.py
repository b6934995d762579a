"""timm's windowed and hierarchical models: Swin (``swin_*``), Swin-V2 (``swinv2_*``) and SAM's
image encoder (``samvit_*``).

Swin's ``WindowAttention`` forms ``softmax(q k^T * scale + relative bias + shift mask)`` on its
explicit path; Swin-V2's always forms ``softmax(cos(q, k) * logit scale + 16 sigmoid(cpb) + mask)``;
SAM's ``Attention`` forms ``softmax(q k^T * scale + decomposed relative bias)`` with heads folded
into the batch axis. Each then calls ``attn_drop``. Inside :meth:`TimmWindowedAdapter.exact_attention`
every ``fused_attn`` flag is switched off and a pre-hook on ``attn_drop`` reads the probabilities
before dropout as ``[batch * window, head, query, key]``; on exit hooks are removed and flags
restored, also when the body raises. :meth:`TimmWindowedAdapter.window_layout` says where every
token of every window sits.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from ...runtime.sizes import size_pair
from ..tokens import TokenLayout
from ..windows import BlockGeometry, WindowLayout
from .base import AttentionBlock, EmitAttention, EmitQueryKey, FamilyAdapter, PositionTable, Preprocessing
from .registry import register_family

__all__ = ["TimmWindowedAdapter", "no_token_layout"]

_MODELS = {
    "swin": ("timm.models.swin_transformer", "SwinTransformer"),
    "swinv2": ("timm.models.swin_transformer_v2", "SwinTransformerV2"),
    "sam": ("timm.models.vision_transformer_sam", "VisionTransformerSAM"),
}


def _class(module: str, name: str) -> type | None:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _kind(model: nn.Module) -> str | None:
    if not type(model).__module__.startswith("timm."):
        return None
    for kind, (mod, name) in _MODELS.items():
        cls = _class(mod, name)
        if cls is not None and isinstance(model, cls):
            return kind
    return None


def no_token_layout(model: nn.Module) -> UnsupportedModelError:
    """The refusal of analyses that need one token sequence through every layer."""
    return UnsupportedModelError(
        f"{type(model).__name__} attends within windows of feature maps that shrink from stage to stage, so it "
        "has no single token sequence: attention rollout (a product of every layer's maps over one token set) "
        "and position-embedding similarity (one absolute table over one patch grid) are not defined for it, "
        "while attention distance (per window, in pixels), the receptive field and compare are.")


@register_family
class TimmWindowedAdapter(FamilyAdapter):
    """timm Swin, Swin-V2 and SAM image encoders."""

    family = "timm-windowed"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.kind = _kind(model)

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return _kind(model) is not None

    # -- geometry ------------------------------------------------------------------------------
    def _input_size(self, input_size) -> tuple[int, int]:
        pe = self.model.patch_embed
        default = size_pair(pe.img_size)
        size = default if input_size is None else size_pair(input_size)
        if size != default and getattr(pe, "strict_img_size", False):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} was built for {default[0]} x {default[1]} inputs and cannot take "
                f"{size[0]} x {size[1]}; build it with img_size={size} (or strict_img_size=False).")
        return size

    def window_layout(self, input_size: int | Sequence[int] | None = None) -> WindowLayout:
        """Every attention block's geometry for inputs of ``input_size`` (default: the model's)."""
        m = self.model
        size = self._input_size(input_size)
        pe = m.patch_embed
        grid = size_pair(pe.dynamic_feat_size(size)) if hasattr(pe, "dynamic_feat_size") else \
            tuple(s // p for s, p in zip(size, size_pair(pe.patch_size)))
        stride = tuple(float(p) for p in size_pair(pe.patch_size))
        out = []
        if self.kind == "sam":
            for j, blk in enumerate(m.blocks):
                w = int(blk.window_size)
                out.append(BlockGeometry(grid_size=grid, stride=stride, window_size=(w, w) if w > 0 else grid,
                                         shift=(0, 0), input_size=size, stage=0, block=j))
            return WindowLayout(tuple(out), size)
        for i, stage in enumerate(m.layers):
            if not isinstance(stage.downsample, nn.Identity):
                grid = tuple((g + 1) // 2 for g in grid)
                stride = tuple(2 * s for s in stride)
            for j, blk in enumerate(stage.blocks):
                out.append(BlockGeometry(grid_size=grid, stride=stride, window_size=tuple(int(v) for v in blk.window_size),
                                         shift=tuple(int(v) for v in blk.shift_size), input_size=size,
                                         stage=i, block=j))
        return WindowLayout(tuple(out), size)

    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        """SAM's encoder: its one patch grid (no prefix tokens). Swin: refused (no single sequence)."""
        if self.kind != "sam":
            raise no_token_layout(self.model)
        size = self._input_size(input_size)
        pe = self.model.patch_embed
        return TokenLayout(prefix_kinds=(), grid_size=size_pair(pe.dynamic_feat_size(size)),
                           patch_stride=tuple(float(p) for p in size_pair(pe.patch_size)), input_size=size)

    # -- attention -----------------------------------------------------------------------------
    def _named_blocks(self) -> list[tuple[str, nn.Module]]:
        m = self.model
        if self.kind == "sam":
            return [(f"blocks.{j}", blk) for j, blk in enumerate(m.blocks)]
        return [(f"layers.{i}.blocks.{j}", blk) for i, stage in enumerate(m.layers)
                for j, blk in enumerate(stage.blocks)]

    def attention_blocks(self) -> list[AttentionBlock]:
        return [AttentionBlock(name=f"{name}.attn", module=blk.attn, num_heads=int(blk.attn.num_heads), depth=d)
                for d, (name, blk) in enumerate(self._named_blocks())]

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention):
        """Inside: ``emit(i, attn)`` with ``attn`` ``[batch * window, head, query, key]`` (one window
        per image for a global block) for each block index in ``blocks``."""
        from .timm import attn_drop_capture

        all_blocks = self.attention_blocks()

        def unfold(i: int, p: torch.Tensor) -> torch.Tensor:  # SAM: [batch * window * head, query, key]
            return p.reshape(-1, all_blocks[i].num_heads, *p.shape[-2:])

        return attn_drop_capture(all_blocks, blocks, emit, "this timm version's window attention",
                                 reshape=unfold if self.kind == "sam" else None)

    def exact_query_key(self, blocks: Sequence[int], emit: EmitQueryKey):
        """SAM's encoder: ``emit(i, qk)`` with every block's q, k and decomposed relative position bias
        as its fused path passes them to ``scaled_dot_product_attention`` (heads unfolded from the
        batch axis: ``[batch * window, head, token, head_dim]``). Swin and Swin-V2 (shift masks,
        cosine attention on their own explicit path) are read as full window maps instead."""
        if self.kind != "sam":
            raise UnsupportedModelError(
                f"{type(self.model).__name__}'s window attention is read as full window maps (small: one "
                "window's tokens squared), not recomputed from queries and keys.")
        from .base import QueryKey, kept_blocks
        from .timm import fused_query_key

        all_blocks = self.attention_blocks()
        keep = kept_blocks(blocks, len(all_blocks))

        def unfold(i: int, qk: QueryKey) -> QueryKey:  # [batch * window * head, token, head_dim]
            h = all_blocks[i].num_heads
            q, k = qk.q.reshape(-1, h, *qk.q.shape[-2:]), qk.k.reshape(-1, h, *qk.k.shape[-2:])
            bias = qk.bias
            if bias is not None:
                inner = bias
                bias = lambda s, e: (lambda b: b.reshape(-1, h, *b.shape[-2:]) if b.ndim == 3 else b)(inner(s, e))
            return QueryKey(q=q, k=k, scale=qk.scale, bias=bias)

        return fused_query_key(all_blocks, keep, emit, "this timm version's SAM attention", reshape=unfold)

    # -- tables, outputs, filters, preprocessing -----------------------------------------------
    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = True) -> PositionTable | None:
        """SAM's absolute table ``pos_embed [1, grid_h, grid_w, dim]`` (resampled as SAM's forward
        does, with ``resample_abs_pos_embed_nhwc``); None for Swin and Swin-V2 (relative bias only)."""
        pos = getattr(self.model, "pos_embed", None)
        if self.kind != "sam" or not isinstance(pos, torch.Tensor):
            return None
        from timm.layers import resample_abs_pos_embed_nhwc

        grid = self.token_layout(input_size).grid_size
        with torch.no_grad():
            table = pos.detach()
            if tuple(table.shape[1:3]) != grid:
                table = resample_abs_pos_embed_nhwc(table, list(grid), interpolation=interpolation,
                                                    antialias=antialias)
            patches = table[0].clone()
        return PositionTable(patches=patches, prefix_entries=0, trainable=bool(pos.requires_grad),
                             resampling=f"timm resample_abs_pos_embed_nhwc ({interpolation}"
                                        f"{', antialias' if antialias else ''})")

    def residual_blocks(self):
        """Refused: see :func:`~vitlens.models.families._residual.windowed_refusal`."""
        from ._residual import windowed_refusal
        raise windowed_refusal(self.model)

    def block_outputs(self) -> list[str]:
        """Every block, in forward order; each returns a feature map ``[batch, height, width, channel]``."""
        return [name for name, _ in self._named_blocks()]

    def stage_outputs(self) -> list[str]:
        """Every stage (Swin: ``layers.i``, whose output is its last block's); SAM: every block."""
        if self.kind == "sam":
            return self.block_outputs()
        return [f"layers.{i}" for i in range(len(self.model.layers))]

    def feature_map(self, name: str, output: torch.Tensor, input_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """A block's output ``[batch, height, width, channel]`` as ``[batch, channel, height, width]``."""
        if name not in self.block_outputs() + self.stage_outputs():
            raise UnsupportedModelError(f"{name} is not a block or stage of {type(self.model).__name__}")
        return output.permute(0, 3, 1, 2)

    def embedding_parameters(self) -> list[str]:
        """``patch_embed.*`` and an absolute position table (SAM's ``pos_embed``, Swin's
        ``absolute_pos_embed`` where built with one)."""
        return [n for n, _ in self.model.named_parameters()
                if n.startswith("patch_embed.") or n in ("pos_embed", "absolute_pos_embed")]

    def image_tower(self) -> list[str]:
        return [""]

    def output_layout(self, name: str) -> str:
        """Blocks and stages give channels-last maps ``[batch, height, width, channel]``."""
        return "NHWC" if name in self.block_outputs() + self.stage_outputs() else "NCHW"

    def patch_filters(self) -> torch.Tensor | None:
        proj = getattr(getattr(self.model, "patch_embed", None), "proj", None)
        if isinstance(proj, nn.Conv2d) and tuple(proj.kernel_size) == tuple(proj.stride) and proj.in_channels == 3:
            return proj.weight.detach().to(device="cpu", dtype=torch.float64).clone()
        return None

    def preprocessing(self) -> Preprocessing:
        import timm.data

        cfg = timm.data.resolve_data_config({"input_size": (3, *size_pair(self.model.patch_embed.img_size))},
                                            model=self.model)
        return Preprocessing(input_size=tuple(cfg["input_size"][-2:]), mean=tuple(cfg["mean"]),
                             std=tuple(cfg["std"]), interpolation=cfg["interpolation"],
                             crop_pct=float(cfg["crop_pct"]), crop_mode=cfg.get("crop_mode", "center"))
