"""timm models: ViTs (VisionTransformer, DeiT, DINOv2, CLIP, BEiT, EVA and their hybrids) and CNNs.

timm's attention modules compute ``softmax(q k^T * scale + bias)`` and pass it through ``attn_drop``
only on their explicit path; with fused attention (timm's default) the probabilities are never
formed. Inside :meth:`TimmAdapter.exact_attention` every known attention module takes the explicit
path and the *input* of its ``attn_drop`` (probabilities before dropout) is read by a pre-hook; on
exit every hook is removed and every ``fused_attn`` flag restored, also when the body raises.
"""

from __future__ import annotations

import importlib
import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from ...runtime.errors import UnsupportedModelError
from ...runtime.sizes import size_pair
from ..tokens import TokenLayout
from ._residual import no_residual_blocks, resnet_unit, site, transformer_block
from .base import (
    AttentionBlock,
    EmitAttention,
    EmitQueryKey,
    FamilyAdapter,
    PositionTable,
    Preprocessing,
    ResidualBlock,
    kept_blocks,
)
from .registry import register_family

__all__ = ["TimmAdapter", "KNOWN_ATTENTION", "attn_drop_capture", "fused_query_key"]

# Attention classes whose explicit path is softmax(...) -> attn_drop -> @ v, with a fused_attn flag.
_KNOWN = [
    ("timm.layers.attention", "Attention"),
    ("timm.layers.attention", "AttentionRope"),
    ("timm.models.vision_transformer", "Attention"),
    ("timm.models.vision_transformer", "ParallelScalingBlock"),
    ("timm.models.beit", "Attention"),
    ("timm.models.eva", "EvaAttention"),
]


#: timm's names of the learned position table and prefix tokens.
_EMBEDDING_TOKENS = {"pos_embed", "cls_token", "dist_token", "reg_token"}


def _known_classes() -> tuple[type, ...]:
    found = []
    for mod, name in _KNOWN:
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        if cls not in found:
            found.append(cls)
    return tuple(found)


KNOWN_ATTENTION: tuple[type, ...] = _known_classes()


def _is_known(module: nn.Module) -> bool:
    return (isinstance(module, KNOWN_ATTENTION) and hasattr(module, "fused_attn")
            and isinstance(getattr(module, "attn_drop", None), nn.Module))


def _looks_like_attention(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return "attention" in name or name.endswith("attn") or hasattr(module, "fused_attn")


def _num_registers(model: nn.Module) -> int:
    """Register tokens: timm's VisionTransformer says ``num_reg_tokens``; its Eva holds only
    ``reg_token`` ``[1, register, dim]``."""
    n = getattr(model, "num_reg_tokens", None)
    if n is not None:
        return int(n)
    reg = getattr(model, "reg_token", None)
    return int(reg.shape[1]) if reg is not None else 0


def _prefix_kinds(model: nn.Module) -> tuple[str, ...]:
    """Prefix tokens in timm's sequence order: ``[cls, dist | registers..., patches]``."""
    kinds: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        kinds.append("cls")
    if getattr(model, "dist_token", None) is not None:
        kinds.append("dist")
    kinds += ["reg"] * _num_registers(model)
    expected = getattr(model, "num_prefix_tokens", None)
    if expected is not None and expected != len(kinds):
        raise UnsupportedModelError(
            f"{type(model).__name__} declares {expected} prefix tokens but vitlens found "
            f"{len(kinds)} ({', '.join(kinds) or 'none'}); its token layout is not one vitlens knows.")
    return tuple(kinds)


def _has_grid(model: nn.Module) -> bool:
    pe = getattr(model, "patch_embed", None)
    return pe is not None and hasattr(pe, "grid_size")


@register_family
class TimmAdapter(FamilyAdapter):
    """Any model timm builds (ViTs with standard attention: layout, maps, table; CNNs: stages), and
    modules of one's own made from timm's attention blocks."""

    family = "timm"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """timm's own models, and any module built from timm's attention blocks."""
        return type(model).__module__.startswith("timm.") or any(_is_known(m) for m in model.modules())

    # -- tokens and attention --------------------------------------------------------------
    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        m = self.model
        if not _has_grid(m):
            raise UnsupportedModelError(
                f"{type(m).__name__} has no ViT patch embedding (model.patch_embed with a grid), so it "
                "has no token layout; attention analyses need a ViT such as vit_base_patch16_224.")
        pe = m.patch_embed
        default = size_pair(pe.img_size)
        size = default if input_size is None else size_pair(input_size)
        if size == default:
            grid = size_pair(pe.grid_size)
        elif hasattr(pe, "dynamic_feat_size") and (getattr(m, "dynamic_img_size", False)
                                                    or getattr(pe, "dynamic_img_pad", False)):
            grid = size_pair(pe.dynamic_feat_size(size))
        else:
            raise UnsupportedModelError(
                f"{type(m).__name__} was built for {default[0]} x {default[1]} inputs and cannot take "
                f"{size[0]} x {size[1]}; build it with dynamic_img_size=True to use other sizes.")
        if hasattr(pe, "feat_ratio"):
            stride = tuple(float(s) for s in size_pair(pe.feat_ratio(as_scalar=False)))
        else:
            stride = (size[0] / grid[0], size[1] / grid[1])
        return TokenLayout(prefix_kinds=_prefix_kinds(m), grid_size=grid, patch_stride=stride, input_size=size)

    def attention_blocks(self) -> list[AttentionBlock]:
        found = [(n, mod) for n, mod in self.model.named_modules() if _is_known(mod)]
        if not found:
            others = sorted({type(mod).__name__ for _, mod in self.model.named_modules()
                             if _looks_like_attention(mod)})
            if others:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} has attention modules of type {', '.join(others)}, which "
                    "vitlens does not know how to read exactly; supported are timm's "
                    + ", ".join(sorted({c.__module__.split('.')[-1] + '.' + c.__name__ for c in KNOWN_ATTENTION}))
                    + ".")
            raise UnsupportedModelError(
                f"{type(self.model).__name__} has no attention modules: it is not a Vision Transformer, so "
                "attention cannot be captured from it (for CNNs use the receptive-field analysis).")
        out = []
        for i, (name, mod) in enumerate(found):
            block = re.match(r"^(?:.*\.)?blocks\.(\d+)(?:\.|$)", name)
            out.append(AttentionBlock(name=name, module=mod, num_heads=int(mod.num_heads),
                                      depth=int(block.group(1)) if block else i))
        return out

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention):
        return attn_drop_capture(self.attention_blocks(), blocks, emit, "this timm version's attention code")

    def exact_query_key(self, blocks: Sequence[int], emit: EmitQueryKey):
        """Inside: ``emit(i, qk)`` with the q, k and bias (BEiT's relative position bias, a mask) each
        block passes to ``scaled_dot_product_attention`` on its fused path, after its q/k norms and
        rotary embedding (EVA). Every ``fused_attn`` flag is set True inside and restored on exit."""
        all_blocks = self.attention_blocks()
        keep = kept_blocks(blocks, len(all_blocks))
        sdpa = _sdpa_classes()
        for i in keep:
            if not isinstance(all_blocks[i].module, sdpa):
                b = all_blocks[i]
                raise UnsupportedModelError(
                    f"attention module {b.name} ({type(b.module).__name__}) does not call "
                    "scaled_dot_product_attention with its own queries and keys; its full maps are read instead.")
        return fused_query_key(all_blocks, keep, emit, "this timm version's attention code")

    # -- tables, outputs, filters, preprocessing ---------------------------------------------
    def _target_layout(self, input_size) -> TokenLayout:
        """The layout at ``input_size``; for a fixed-size model, the one it would have if built
        (fine-tuned) at that size."""
        try:
            return self.token_layout(input_size)
        except UnsupportedModelError:
            own = self.token_layout()
            pe = self.model.patch_embed
            if input_size is None or not hasattr(pe, "dynamic_feat_size"):
                raise
            size = size_pair(input_size)
            grid = size_pair(pe.dynamic_feat_size(size))
            if min(grid) < 1:
                raise UnsupportedModelError(
                    f"an input of {size[0]} x {size[1]} px gives no patches (patch stride "
                    f"{own.patch_stride[0]:g} px).")
            return TokenLayout(prefix_kinds=own.prefix_kinds, grid_size=grid, patch_stride=own.patch_stride,
                               input_size=size)

    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = True) -> PositionTable | None:
        """``model.pos_embed`` (``[1, prefix + N, D]``, ``[1, N, D]`` with ``no_embed_class``, or
        ``[1, H, W, D]``) on the grid, resampled with timm's ``resample_abs_pos_embed`` for another size."""
        from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc

        m = self.model
        pos = getattr(m, "pos_embed", None)
        if not _has_grid(m) or pos is None or isinstance(pos, nn.Module) or not isinstance(pos, torch.Tensor):
            return None
        own = self.token_layout()
        target = own if input_size is None else self._target_layout(input_size)
        gh, gw = own.grid_size
        n = gh * gw
        resize = target.grid_size != own.grid_size
        with torch.no_grad():
            table = pos.detach()
            if table.ndim == 4 and tuple(table.shape[1:3]) == (gh, gw):       # [1, grid_h, grid_w, dim]
                prefix_entries = 0
                if resize:
                    table = resample_abs_pos_embed_nhwc(table, list(target.grid_size),
                                                        interpolation=interpolation, antialias=antialias)
                patches = table.reshape(1, -1, table.shape[-1])
            elif table.ndim == 3 and table.shape[0] == 1:                     # [1, prefix + N, dim]
                length = table.shape[1]
                prefix_entries = 0 if getattr(m, "no_embed_class", False) or length == n else own.num_prefix_tokens
                if length != n + prefix_entries:
                    raise UnsupportedModelError(
                        f"the position table of {type(m).__name__} has {length} entries, but its token "
                        f"layout has {n} patches ({gh} x {gw}) and {own.num_prefix_tokens} prefix tokens; "
                        "vitlens cannot tell which entries belong to which patch.")
                if resize:
                    table = resample_abs_pos_embed(table, new_size=list(target.grid_size), old_size=[gh, gw],
                                                   num_prefix_tokens=prefix_entries,
                                                   interpolation=interpolation, antialias=antialias)
                patches = table[:, prefix_entries:]
            else:
                raise UnsupportedModelError(
                    f"the position table of {type(m).__name__} has shape {tuple(table.shape)}; vitlens "
                    "reads [1, prefix + patches, dim], [1, patches, dim] or [1, grid_h, grid_w, dim].")
            th, tw = target.grid_size
            grid_table = patches[0].reshape(th, tw, -1).clone()
        how = f"timm resample_abs_pos_embed ({interpolation}{', antialias' if antialias else ''})"
        return PositionTable(patches=grid_table, prefix_entries=prefix_entries,
                             trainable=bool(pos.requires_grad), resampling=how)

    def block_outputs(self) -> list[str]:
        """Every ``blocks[i]`` of a ViT (token outputs); every level of a CNN's ``feature_info``
        (stage outputs; for ResNets also the stem ``act1``)."""
        m = self.model
        blocks = getattr(m, "blocks", None)
        if _has_grid(m) and isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            return [f"blocks.{i}" for i in range(len(blocks))]
        info = getattr(m, "feature_info", None)
        if info is not None:
            entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
            mods = dict(m.named_modules())
            names = []
            for e in entries:
                n = e.get("module", "") if isinstance(e, dict) else ""
                n = n if n in mods else n.replace("_", ".")
                if n in mods and n not in names:
                    names.append(n)
            if names:
                return names
        raise UnsupportedModelError(
            f"{type(m).__name__} is neither a timm ViT (patch_embed and blocks) nor a timm CNN with "
            "feature_info, so vitlens does not know its stages; pass layers=[module names] instead.")

    def residual_blocks(self) -> list[ResidualBlock]:
        """ViTs: every ``blocks[i]`` with ``drop_path1`` and ``drop_path2`` (timm's ``Block``,
        ``ResPostBlock``, BEiT's and EVA's blocks): the branches are what enters the stream through
        them (after layer scale or ``gamma``; drop-path is the identity in eval). Parallel blocks
        (``ParallelScalingBlock``, ``ParallelThingsBlock``: both branches read the same input) are
        refused. CNNs: timm ResNet units (branch after the last BatchNorm, SE or drop-path; shortcut
        the ``downsample`` projection or the input), ResNetV2 and BiT units (pre-activation: branch
        after ``drop_path``, shortcut ``downsample`` of the pre-activated input or the input; the
        sum is the unit's output) and ConvNeXt blocks (branch after ``gamma``,
        shortcut ``shortcut``)."""
        m = self.model
        blocks = getattr(m, "blocks", None)
        if _has_grid(m):
            if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
                raise no_residual_blocks(m, "it has no blocks list")
            out = []
            for i, blk in enumerate(blocks):
                name = f"blocks.{i}"
                if "parallel" in type(blk).__name__.lower() or not all(
                        isinstance(getattr(blk, a, None), nn.Module) for a in ("drop_path1", "drop_path2")):
                    raise no_residual_blocks(m, f"{name} is a {type(blk).__name__}, whose attention and MLP "
                                                "branches are not two sequential residual sub-layers vitlens knows "
                                                "(parallel blocks add both branches to the same input)")
                out.append(transformer_block(i, name, blk, site(name, "drop_path1", blk.drop_path1),
                                             site(name, "drop_path2", blk.drop_path2)))
            return out
        from timm.models.convnext import ConvNeXtBlock
        from timm.models.resnet import BasicBlock, Bottleneck
        from timm.models.resnetv2 import Bottleneck as V2Bottleneck
        from timm.models.resnetv2 import PreActBasic, PreActBottleneck
        out = []
        for name, mod in m.named_modules():
            if isinstance(mod, (PreActBottleneck, PreActBasic)):  # ResNetV2 / BiT: drop_path(F(x)) + shortcut
                down = mod.downsample
                out.append(ResidualBlock(index=len(out), name=name, module=mod, sublayers=("residual",),
                                         branches=(site(name, "drop_path", mod.drop_path),), layout="channels",
                                         shortcut=site(name, "downsample", down) if isinstance(down, nn.Module)
                                         else None))
            elif isinstance(mod, V2Bottleneck):
                out.append(resnet_unit(len(out), name, mod, ("norm3", "drop_path"), "act3"))
            elif isinstance(mod, Bottleneck):
                out.append(resnet_unit(len(out), name, mod, ("bn3", "se", "drop_path"), "act3"))
            elif isinstance(mod, BasicBlock):
                out.append(resnet_unit(len(out), name, mod, ("bn2", "se", "drop_path"), "act2"))
            elif isinstance(mod, ConvNeXtBlock):
                out.append(ResidualBlock(index=len(out), name=name, module=mod, sublayers=("residual",),
                                         branches=(site(name, "drop_path", mod.drop_path),), layout="channels",
                                         shortcut=site(name, "shortcut", mod.shortcut)))
        if not out:
            raise no_residual_blocks(m)
        return out

    def embedding_parameters(self) -> list[str]:
        """``patch_embed.*`` (a hybrid's ``patch_embed.backbone`` excepted), ``pos_embed`` and the prefix
        tokens; nothing for a CNN."""
        if not _has_grid(self.model):
            return []
        return [n for n, _ in self.model.named_parameters()
                if n in _EMBEDDING_TOKENS or (n.startswith("patch_embed.") and not n.startswith("patch_embed.backbone."))]

    def image_tower(self) -> list[str]:
        return [""]

    def output_layout(self, name: str) -> str:
        if _has_grid(self.model):
            return "tokens"
        return "NHWC" if getattr(self.model, "output_fmt", "NCHW") == "NHWC" else "NCHW"

    def patch_filters(self) -> torch.Tensor | None:
        """``[dim, 3, p_h, p_w]`` from the conv patch projection (kernel = stride) or a linear one
        over flattened patches; None for hybrids (the projection reads CNN features) and CNNs."""
        m = self.model
        embed = getattr(m, "patch_embed", None)
        embed = embed if embed is not None else getattr(m, "embeds", None)
        proj = getattr(embed, "proj", None) if embed is not None else None
        if proj is None or getattr(embed, "backbone", None) is not None:
            return None
        w = proj.weight.detach().to(device="cpu", dtype=torch.float64)
        if isinstance(proj, nn.Conv2d):
            patchify = tuple(proj.kernel_size) == tuple(proj.stride) and proj.groups == 1
            return w.clone() if patchify and proj.in_channels == 3 else None
        if isinstance(proj, nn.Linear):
            ps = getattr(embed, "patch_size", None)
            ph, pw = tuple(ps) if isinstance(ps, (tuple, list)) else (0, 0)
            if ph * pw * 3 != proj.in_features:
                return None
            if getattr(embed, "channels_last", True):                   # flattened as (p_h, p_w, 3)
                return w.reshape(-1, ph, pw, 3).permute(0, 3, 1, 2).contiguous()
            return w.reshape(-1, 3, ph, pw).clone()                     # flattened as (3, p_h, p_w)
        return None

    def preprocessing(self) -> Preprocessing:
        cfg = self.data_config()
        return Preprocessing(input_size=tuple(cfg["input_size"][-2:]), mean=tuple(cfg["mean"]),
                             std=tuple(cfg["std"]), interpolation=cfg["interpolation"],
                             crop_pct=float(cfg["crop_pct"]), crop_mode=cfg.get("crop_mode", "center"))

    def data_config(self, input_size: int | Sequence[int] | None = None) -> dict:
        """timm's resolved eval data config; a ViT built for another fixed size than its pretrained
        config's gets its built size, and ``input_size`` overrides both."""
        import timm.data

        m = self.model
        pe = getattr(m, "patch_embed", None)
        if input_size is None and pe is not None and getattr(pe, "img_size", None) is not None \
                and not getattr(m, "dynamic_img_size", False):
            input_size = pe.img_size
        args = {}
        if input_size is not None:
            args["input_size"] = (3, *size_pair(input_size))
        return timm.data.resolve_data_config(args, model=m)


def _sdpa_classes() -> tuple[type, ...]:
    """timm attention classes whose fused path is ``scaled_dot_product_attention(q, k, v, attn_mask=bias)``
    with q and k as the block attends with them (ParallelScalingBlock fuses more than attention)."""
    return tuple(c for c in KNOWN_ATTENTION if c.__name__ != "ParallelScalingBlock")


@contextmanager
def fused_query_key(all_blocks: Sequence[AttentionBlock], keep: Sequence[int], emit: EmitQueryKey, what: str,
                    reshape=None) -> Iterator[None]:
    """timm's fused path on every block (``fused_attn = True``, restored on exit), each kept block's
    ``scaled_dot_product_attention`` call read by :func:`~vitlens.models.families._sdpa.sdpa_query_key`."""
    from ._sdpa import sdpa_query_key

    saved = [(b.module, b.module.fused_attn) for b in all_blocks if hasattr(b.module, "fused_attn")]
    try:
        for mod, _ in saved:
            mod.fused_attn = True
        with sdpa_query_key(all_blocks, keep, emit, what, reshape=reshape):
            yield
    finally:
        for mod, flag in saved:
            mod.fused_attn = flag


@contextmanager
def attn_drop_capture(all_blocks: Sequence[AttentionBlock], blocks: Sequence[int], emit: EmitAttention,
                      what: str, reshape=None) -> Iterator[None]:
    """timm's explicit attention path, read at the input of every block's ``attn_drop``.

    Every block's ``fused_attn`` is set False on entry and restored on exit (also when the body
    raises); ``emit(i, attn)`` gets block ``i``'s probabilities (``reshape(i, attn)`` first, where
    given). On exit, a block that ran without forming probabilities is an error naming ``what``.
    """
    keep = kept_blocks(blocks, len(all_blocks))
    saved = [(b.module, b.module.fused_attn) for b in all_blocks if hasattr(b.module, "fused_attn")]
    ran, fired, handles = dict.fromkeys(keep, 0), dict.fromkeys(keep, 0), []

    def hooks(i: int):
        def on_probs(_module, args):
            fired[i] += 1
            emit(i, args[0] if reshape is None else reshape(i, args[0]))

        def on_forward(_module, _args, _output):
            ran[i] += 1
        return on_probs, on_forward

    try:
        for mod, _ in saved:
            mod.fused_attn = False
        for i in keep:
            on_probs, on_forward = hooks(i)
            handles.append(all_blocks[i].module.attn_drop.register_forward_pre_hook(on_probs))
            handles.append(all_blocks[i].module.register_forward_hook(on_forward))
        yield
    finally:
        for h in handles:
            h.remove()
        for mod, flag in saved:
            mod.fused_attn = flag
    for i in keep:
        if ran[i] and fired[i] < ran[i]:
            b = all_blocks[i]
            raise UnsupportedModelError(
                f"attention module {b.name} ({type(b.module).__module__}.{type(b.module).__name__}) ran "
                f"without forming attention probabilities, so vitlens cannot capture it exactly; {what} is "
                "not one vitlens knows.")
