"""open_clip image towers: ``model.visual`` of CLIP / CustomTextCLIP / CoCa models, or a bare tower.

The ViT tower (``open_clip.transformer.VisionTransformer``) prepends ``class_embedding`` to the
``conv1`` patch tokens, adds ``positional_embedding`` ``[1 + patch, dim]`` and runs
``transformer.resblocks``; each ``ResidualAttentionBlock`` calls its ``nn.MultiheadAttention`` with
``need_weights=False``, read exactly by :func:`vitlens.models.families._mha.capture_mha`. An attentional
pooler (CoCa, ``attn_pool``) runs after the blocks and is not one of them; the token layout of the
blocks is the same. ``CustomResidualAttentionBlock`` (qk-norm, scaled-cosine attention) forms its
probabilities only inside ``scaled_dot_product_attention`` and is refused. The modified ResNet
(RN50, ...) is a CNN: stage outputs only.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from contextlib import AbstractContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn as nn

from ...runtime.errors import ModelLoadError, UnsupportedModelError
from ...runtime.sizes import size_pair
from ..tokens import TokenLayout
from ._mha import capture_mha, mha_query_key
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

__all__ = ["OpenClipAdapter", "load"]

#: open_clip's defaults (``PreprocessCfg``): OpenAI CLIP mean and std, bicubic, resize the shorter
#: side to the tower's ``image_size`` and centre-crop it. ``model.visual.preprocess_cfg`` (set by
#: ``create_model`` from the pretrained tag) overrides them.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_INTERPOLATION = "bicubic"
DEFAULT_RESIZE_MODE = "shortest"
# open_clip resize_mode -> (crop_mode, resize_shortest) in vitlens's Preprocessing
_RESIZE_MODES = {"shortest": ("center", True), "squash": ("squash", False), "longest": ("border", False)}


@register_family
class OpenClipAdapter(FamilyAdapter):
    """open_clip ViT image towers (and the modified ResNet's stage outputs)."""

    family = "open_clip"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        visual = getattr(model, "visual", None)
        self.visual: nn.Module = visual if isinstance(visual, nn.Module) else model
        self.prefix = "visual." if self.visual is not model else ""
        kind = type(self.visual).__name__
        if kind == "TimmModel":
            raise UnsupportedModelError(
                f"this open_clip model's image tower is a timm model; pass its trunk "
                f"(model.{self.prefix}trunk) to vitlens, which reads it as a timm model.")
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer
        self.is_vit = isinstance(self.visual, VisionTransformer)
        if not self.is_vit and not isinstance(self.visual, ModifiedResNet):
            raise UnsupportedModelError(f"vitlens does not know open_clip's image tower {kind}.")

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("open_clip."):
            return False
        visual = getattr(model, "visual", model)
        return isinstance(visual, nn.Module) and hasattr(visual, "image_size")

    def _cnn_error(self) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"open_clip's {type(self.visual).__name__} image tower is a convolutional network: it has no "
            "attention blocks, token layout or position table (its attention pool is not a block); use "
            "the receptive-field analysis, which reads its stage outputs.")

    # -- tokens and attention --------------------------------------------------------------
    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        if not self.is_vit:
            raise self._cnn_error()
        v = self.visual
        default = size_pair(v.image_size)
        size = default if input_size is None else size_pair(input_size)
        if size != default:
            raise UnsupportedModelError(
                f"open_clip's VisionTransformer adds its position table without resampling, so it takes "
                f"exactly {default[0]} x {default[1]} inputs; create it with "
                f"force_image_size={size[0]} to use {size[0]} x {size[1]}.")
        ph, pw = size_pair(v.patch_size)
        return TokenLayout(prefix_kinds=("cls",), grid_size=size_pair(v.grid_size),
                           patch_stride=(float(ph), float(pw)), input_size=size)

    def attention_blocks(self) -> list[AttentionBlock]:
        if not self.is_vit:
            raise self._cnn_error()
        out = []
        for i, block in enumerate(self.visual.transformer.resblocks):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention):
                raise UnsupportedModelError(
                    f"block {self.prefix}transformer.resblocks.{i} is a {type(block).__name__} whose "
                    f"attention ({type(attn).__name__}) forms its probabilities only inside a fused kernel "
                    "(qk-norm or scaled-cosine towers); vitlens cannot read it exactly.")
            out.append(AttentionBlock(name=f"{self.prefix}transformer.resblocks.{i}.attn", module=attn,
                                      num_heads=int(attn.num_heads), depth=i))
        return out

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention) -> AbstractContextManager:
        """Inside: ``emit(i, attn)`` with ``attn`` ``[batch, head, query, key]`` for each block in
        ``blocks``. Patch dropout (training mode) would drop tokens: capture in eval mode."""
        all_blocks = self.attention_blocks()
        keep = kept_blocks(blocks, len(all_blocks))
        return capture_mha([(i, all_blocks[i].name, all_blocks[i].module) for i in keep], emit)

    def exact_query_key(self, blocks: Sequence[int], emit: EmitQueryKey) -> AbstractContextManager:
        """Inside: ``emit(i, qk)`` with each block's q and k recomputed from its input with the
        module's packed ``in_proj`` (:func:`~vitlens.models.families._mha.mha_query_key`); the
        module's own call is left on its fast path."""
        all_blocks = self.attention_blocks()
        keep = kept_blocks(blocks, len(all_blocks))
        return mha_query_key([(i, all_blocks[i].name, all_blocks[i].module) for i in keep], emit)

    # -- tables, outputs, filters, preprocessing ---------------------------------------------
    def position_table(self, input_size: int | Sequence[int] | None = None, *,
                       interpolation: str = "bicubic", antialias: bool = False) -> PositionTable | None:
        """``positional_embedding`` ``[1 + patch, dim]`` on the grid. Another size is resampled with
        open_clip's ``resize_pos_embed``, the function it applies when loading weights at another
        resolution (``interpolation``, antialias=True, align_corners=False: its own defaults for the
        filter's antialiasing; the ``antialias`` argument is not used)."""
        if not self.is_vit:
            return None
        v = self.visual
        table = v.positional_embedding
        native = size_pair(v.grid_size)
        size = size_pair(v.image_size) if input_size is None else size_pair(input_size)
        ph, pw = size_pair(v.patch_size)
        grid = (size[0] // ph, size[1] // pw)
        with torch.no_grad():
            if grid == native:
                patches = table[1:]
            else:
                from open_clip.model import resize_pos_embed
                state = {"visual.positional_embedding": table.detach()}
                resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=grid)),
                                 interpolation=interpolation, antialias=True)
                patches = state["visual.positional_embedding"][1:]
        return PositionTable(patches=patches.detach().reshape(grid[0], grid[1], -1).clone(), prefix_entries=1,
                             trainable=bool(table.requires_grad),
                             resampling=f"open_clip resize_pos_embed ({interpolation}, antialias=True)")

    def block_outputs(self) -> list[str]:
        if self.is_vit:
            return [f"{self.prefix}transformer.resblocks.{i}" for i in range(len(self.visual.transformer.resblocks))]
        return [f"{self.prefix}{n}" for n in ("avgpool", "layer1", "layer2", "layer3", "layer4")]

    def block_tokens(self, output: torch.Tensor) -> torch.Tensor:
        """``[batch, token, channel]``: a tower built with ``batch_first=False`` runs ``[token, batch,
        channel]``."""
        if self.is_vit and not getattr(self.visual.transformer, "batch_first", True):
            return output.transpose(0, 1)
        return output

    def residual_blocks(self) -> list[ResidualBlock]:
        """ViT tower: every ``ResidualAttentionBlock`` (``x = q_x + ls_1(attention(ln_1(q_x)))``, then
        ``x + ls_2(mlp(ln_2(x)))``): the branches are the outputs of ``ls_1`` and ``ls_2`` (identity
        without layer scale); a sequence-first tower (``batch_first=False``) is read as such. The
        modified ResNet: every ``Bottleneck`` (branch ``bn3``, shortcut ``downsample`` or the input,
        the sum at the input of ``act3``)."""
        if self.is_vit:
            layout = "tokens" if getattr(self.visual.transformer, "batch_first", True) else "tokens_first"
            out = []
            for i, blk in enumerate(self.visual.transformer.resblocks):
                name = f"{self.prefix}transformer.resblocks.{i}"
                if not all(isinstance(getattr(blk, a, None), nn.Module) for a in ("ls_1", "ls_2")):
                    raise no_residual_blocks(self.model, f"{name} is a {type(blk).__name__} without ls_1 and ls_2")
                out.append(transformer_block(i, name, blk, site(name, "ls_1", blk.ls_1), site(name, "ls_2", blk.ls_2),
                                             layout=layout))
            return out
        from open_clip.modified_resnet import Bottleneck
        out = [resnet_unit(i, f"{self.prefix}{n}", mod, ("bn3",), "act3")
               for i, (n, mod) in enumerate((n, mod) for n, mod in self.visual.named_modules()
                                            if isinstance(mod, Bottleneck))]
        if not out:
            raise no_residual_blocks(self.model)
        return out

    def embedding_parameters(self) -> list[str]:
        """The ViT tower's ``conv1``, ``class_embedding`` and ``positional_embedding``; nothing for the
        modified ResNet."""
        if not self.is_vit:
            return []
        return [f"{self.prefix}{n}" for n, _ in self.visual.named_parameters()
                if n.startswith("conv1.") or n in ("class_embedding", "positional_embedding")]

    def image_tower(self) -> list[str]:
        """The image tower ``visual`` (``encode_image`` runs it alone), not the text tower."""
        return [self.prefix.rstrip(".")]

    def output_layout(self, name: str) -> str:
        return "tokens" if self.is_vit else "NCHW"

    def patch_filters(self) -> torch.Tensor | None:
        conv = getattr(self.visual, "conv1", None) if self.is_vit else None
        return conv.weight.detach().clone() if isinstance(conv, nn.Conv2d) else None

    def preprocessing(self) -> Preprocessing:
        v = self.visual
        cfg = dict(getattr(v, "preprocess_cfg", None) or {})
        size = size_pair(cfg.get("size", v.image_size))
        crop_mode, shortest = _RESIZE_MODES.get(cfg.get("resize_mode", DEFAULT_RESIZE_MODE), ("center", True))
        return Preprocessing(
            input_size=size,
            mean=tuple(float(x) for x in cfg.get("mean", getattr(v, "image_mean", None) or OPENAI_MEAN)),
            std=tuple(float(x) for x in cfg.get("std", getattr(v, "image_std", None) or OPENAI_STD)),
            interpolation=cfg.get("interpolation", DEFAULT_INTERPOLATION),
            crop_pct=1.0, crop_mode=crop_mode, resize_shortest=shortest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image features ``[batch, embed]`` (``encode_image`` of a full model, else the tower)."""
        fn = getattr(self.model, "encode_image", None)
        out = fn(x) if callable(fn) else self.visual(x)
        return out[0] if isinstance(out, tuple) else out


# --------------------------------------------------------------------------- loading

_RANDOM_NOTICE = "No pretrained weights loaded for model"


class _AsWithoutHandlers(logging.Handler):
    """Passes a record on as Python's logging does when the root logger has no handler."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


@contextlib.contextmanager
def _without_random_weights_notice():
    """Within the block, open_clip's notice that it built random weights is dropped, and its
    ``logging.warning`` call does not configure the root logger (``basicConfig``, which would print
    ``WARNING:root:`` before every later message of the process). Every other record is passed on
    as before, and the root logger is left as it was."""
    root = logging.getLogger()
    keep = lambda record: _RANDOM_NOTICE not in record.getMessage()  # noqa: E731
    stand_in = None if root.handlers else _AsWithoutHandlers()
    root.addFilter(keep)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if stand_in is not None:
            root.removeHandler(stand_in)


def load(name: str, *, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
         device: str | torch.device = "cpu") -> nn.Module:
    """Build ``open_clip:<architecture>[:<pretrained tag>]`` (e.g. ``open_clip:ViT-B-32:openai``).
    Without a tag, or with ``pretrained=False``, the weights are random.

    Raises:
        ModelLoadError: open_clip missing, unknown architecture or tag, no network and no cached
            copy, or a checkpoint that cannot be read or does not fit.
    """
    from ..loading import hub_reachable
    from .common import finish_loading, load_strict
    try:
        import open_clip
    except ImportError as e:
        raise ModelLoadError(f"{name} needs open_clip: pip install 'vitlens[clip]'.") from e
    arch, _, tag = name.split(":", 1)[1].partition(":")
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        raise ModelLoadError(f"open_clip has no architecture '{arch}'." + (f" Closest: {', '.join(close)}."
                                                                         if close else " See open_clip.list_models()."))
    source = {"name": name, "architecture": arch, "tag": tag or None}
    if checkpoint is not None or not pretrained or not tag:
        with _without_random_weights_notice():  # vitlens records and reports the weights itself
            model = open_clip.create_model(arch, pretrained=None)
        if checkpoint is not None:
            load_strict(model, name, checkpoint)
        source["weights"] = f"checkpoint:{Path(checkpoint)}" if checkpoint is not None else "random"
        return finish_loading(model, source, device)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ModelLoadError(f"open_clip has no pretrained tag '{tag}' for {arch}; it has {', '.join(tags) or 'none'}.")
    import huggingface_hub.constants as hub
    online = hub_reachable()
    old = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = old or not online  # a missing file then fails at once instead of waiting
    try:
        model = open_clip.create_model(arch, pretrained=tag)
    except Exception as e:
        if not online or isinstance(e, (ConnectionError, TimeoutError)):
            raise ModelLoadError(f"the weights {arch}:{tag} could not be downloaded: the hub is not reachable "
                                 "and no copy is cached. Pass a local state dict with checkpoint= "
                                 "(--checkpoint PATH), or use random weights (--random-init).") from e
        raise ModelLoadError(f"the weights {arch}:{tag} could not be loaded ({e}).") from e
    finally:
        hub.HF_HUB_OFFLINE = old
    source["weights"] = f"open_clip:{arch}:{tag}"
    return finish_loading(model, source, device)
