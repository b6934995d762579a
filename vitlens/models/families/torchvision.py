"""torchvision classifiers: the ViTs (``VisionTransformer``: vit_b_16, vit_l_32, ...) and the CNNs
(ResNets, and models whose stages are the children of ``.features``: VGG, ConvNeXt, EfficientNet,
MobileNet, ...).

torchvision's ``EncoderBlock`` calls ``self_attention(x, x, x, need_weights=False)`` on an
``nn.MultiheadAttention``; the probabilities are read by :func:`vitlens.models.families._mha.capture_mha`,
which asks each call for its per-head weights and hands the block what it asked for.
"""

from __future__ import annotations

import difflib
import os
import urllib.parse
from collections import OrderedDict
from contextlib import AbstractContextManager
from pathlib import Path
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

__all__ = ["TorchvisionAdapter", "load"]

#: torchvision's ImageNet classification weights (``ImageClassification`` transforms): resize the
#: shorter side to 256 bilinear, centre-crop 224, ImageNet mean and std. Used when the model was not
#: built with a weights enum whose own transforms say otherwise (the SWAG ViTs: 384 bicubic).
RESIZE_SIZE = 256
CROP_SIZE = 224
INTERPOLATION = "bilinear"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _is_vit(model: nn.Module) -> bool:
    from torchvision.models import VisionTransformer
    return isinstance(model, VisionTransformer)


@register_family
class TorchvisionAdapter(FamilyAdapter):
    """torchvision ViTs (attention, layout, position table) and CNNs (stage outputs only)."""

    family = "torchvision"

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        return type(model).__module__.startswith("torchvision.models.")

    def _cnn_error(self) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{type(self.model).__name__} is a convolutional network: it has no attention blocks, "
            "token layout or position table, so attention analyses do not apply to it (use the "
            "receptive-field analysis, which reads its stage outputs).")

    # -- tokens and attention --------------------------------------------------------------
    def token_layout(self, input_size: int | Sequence[int] | None = None) -> TokenLayout:
        if not _is_vit(self.model):
            raise self._cnn_error()
        m = self.model
        default = (int(m.image_size), int(m.image_size))
        size = default if input_size is None else size_pair(input_size)
        if size != default:
            raise UnsupportedModelError(
                f"torchvision's VisionTransformer takes exactly {default[0]} x {default[1]} inputs (it "
                f"asserts the size); build it with image_size={size[0]} to use {size[0]} x {size[1]}.")
        g = int(m.image_size) // int(m.patch_size)
        return TokenLayout(prefix_kinds=("cls",), grid_size=(g, g),
                           patch_stride=(float(m.patch_size), float(m.patch_size)), input_size=size)

    def attention_blocks(self) -> list[AttentionBlock]:
        if not _is_vit(self.model):
            raise self._cnn_error()
        out = []
        for i, (name, block) in enumerate(self.model.encoder.layers.named_children()):
            attn = block.self_attention
            if not isinstance(attn, nn.MultiheadAttention):
                raise UnsupportedModelError(f"encoder.layers.{name}.self_attention is a "
                                            f"{type(attn).__name__}, not nn.MultiheadAttention.")
            out.append(AttentionBlock(name=f"encoder.layers.{name}.self_attention", module=attn,
                                      num_heads=int(attn.num_heads), depth=i))
        return out

    def exact_attention(self, blocks: Sequence[int], emit: EmitAttention) -> AbstractContextManager:
        """Inside: ``emit(i, attn)`` with ``attn`` ``[batch, head, query, key]`` for each block in
        ``blocks``."""
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
        """``encoder.pos_embedding`` ``[1, 1 + patch, dim]`` on the grid. Another (square) size is
        resampled with torchvision's ``interpolate_embeddings`` (``interpolation``, align_corners=True,
        no antialias: torchvision's own way of fine-tuning at another resolution)."""
        if not _is_vit(self.model):
            return None
        from torchvision.models.vision_transformer import interpolate_embeddings
        m = self.model
        table = m.encoder.pos_embedding
        size = (int(m.image_size),) * 2 if input_size is None else size_pair(input_size)
        if size[0] != size[1]:
            raise UnsupportedModelError("torchvision resamples its position table to square grids only.")
        with torch.no_grad():
            state = interpolate_embeddings(size[0], int(m.patch_size),
                                           OrderedDict([("encoder.pos_embedding", table.detach())]),
                                           interpolation_mode=interpolation)
        g = size[0] // int(m.patch_size)
        patches = state["encoder.pos_embedding"][0, 1:].reshape(g, g, -1).clone()
        return PositionTable(patches=patches, prefix_entries=1, trainable=bool(table.requires_grad),
                             resampling=f"torchvision interpolate_embeddings ({interpolation}, align_corners=True)")

    def block_outputs(self) -> list[str]:
        m = self.model
        if _is_vit(m):
            return [f"encoder.layers.{n}" for n, _ in m.encoder.layers.named_children()]
        from torchvision.models import ResNet
        if isinstance(m, ResNet):
            return ["maxpool", "layer1", "layer2", "layer3", "layer4"]  # stem, then the four stages
        features = getattr(m, "features", None)
        if isinstance(features, nn.Sequential):
            return [f"features.{n}" for n, _ in features.named_children()]
        raise UnsupportedModelError(f"vitlens does not know the stages of torchvision's {type(m).__name__}.")

    def residual_blocks(self) -> list[ResidualBlock]:
        """ViT: every ``EncoderBlock`` (``x = input + dropout(self_attention(ln_1(input)))``, then
        ``x + mlp(ln_2(x))``): the branches are the outputs of ``dropout`` and ``mlp``. ResNet: every
        ``BasicBlock`` / ``Bottleneck`` (branch: the last BatchNorm; shortcut: ``downsample`` or the
        input; the sum: the input of the shared ``relu`` on its last call). Other CNNs are refused."""
        m = self.model
        if _is_vit(m):
            out = []
            for i, (n, blk) in enumerate(m.encoder.layers.named_children()):
                name = f"encoder.layers.{n}"
                out.append(transformer_block(i, name, blk, site(name, "dropout", blk.dropout),
                                             site(name, "mlp", blk.mlp)))
            return out
        from torchvision.models.resnet import BasicBlock, Bottleneck
        out = []
        for name, mod in m.named_modules():
            if isinstance(mod, Bottleneck):
                out.append(resnet_unit(len(out), name, mod, ("bn3",), "relu", act_call=2))
            elif isinstance(mod, BasicBlock):
                out.append(resnet_unit(len(out), name, mod, ("bn2",), "relu", act_call=1))
        if not out:
            raise no_residual_blocks(m)
        return out

    def embedding_parameters(self) -> list[str]:
        """A ViT's ``conv_proj``, ``class_token`` and ``encoder.pos_embedding``; nothing for a CNN."""
        if not _is_vit(self.model):
            return []
        return [n for n, _ in self.model.named_parameters()
                if n.startswith("conv_proj.") or n in ("class_token", "encoder.pos_embedding")]

    def image_tower(self) -> list[str]:
        return [""]

    def output_layout(self, name: str) -> str:
        """Tokens in a ViT; in a Swin (``SwinTransformer``) channels-last maps everywhere after the
        patch convolution (``features.0.0``, the only NCHW one besides the pooling); NCHW elsewhere."""
        if _is_vit(self.model):
            return "tokens"
        from torchvision.models import SwinTransformer
        if isinstance(self.model, SwinTransformer):
            conv = name == "features.0.0" or name.startswith("features.0.0.")
            return "NHWC" if (name.split(".")[0] in ("features", "norm")) and not conv else "NCHW"
        return "NCHW"

    def patch_filters(self) -> torch.Tensor | None:
        conv = getattr(self.model, "conv_proj", None) if _is_vit(self.model) else None
        return conv.weight.detach().clone() if isinstance(conv, nn.Conv2d) else None

    def preprocessing(self) -> Preprocessing:
        rec = (getattr(self.model, "vitlens_source", None) or {}).get("preprocessing")
        if rec:
            crop, resize = int(rec["crop_size"]), int(rec["resize_size"])
            return Preprocessing(input_size=(crop, crop), mean=tuple(rec["mean"]), std=tuple(rec["std"]),
                                 interpolation=rec["interpolation"], crop_pct=crop / resize,
                                 crop_mode="center", resize_shortest=True)
        crop = int(self.model.image_size) if _is_vit(self.model) else CROP_SIZE
        return Preprocessing(input_size=(crop, crop), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             interpolation=INTERPOLATION, crop_pct=CROP_SIZE / RESIZE_SIZE,
                             crop_mode="center", resize_shortest=True)


# --------------------------------------------------------------------------- loading

def load(name: str, *, pretrained: bool = True, checkpoint: str | os.PathLike | None = None,
         device: str | torch.device = "cpu") -> nn.Module:
    """Build ``torchvision:<name>[:<weights>]`` (weights: an enum member such as
    ``IMAGENET1K_SWAG_E2E_V1``; the DEFAULT one otherwise).

    Raises:
        ModelLoadError: unknown name or weights, no network and no cached copy, or a checkpoint
            that cannot be read or does not fit.
    """
    import torchvision.models as tvm

    from .common import finish_loading, host_reachable, load_strict
    arch, _, tag = name.split(":", 1)[1].partition(":")
    known = tvm.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        raise ModelLoadError(f"torchvision has no model '{arch}'." + (f" Closest: {', '.join(close)}." if close
                                                                     else " See torchvision.models.list_models()."))
    source = {"name": name, "architecture": arch, "tag": tag or None}
    if checkpoint is not None or not pretrained:
        model = tvm.get_model(arch, weights=None)
        if checkpoint is not None:
            load_strict(model, name, checkpoint)
        source["weights"] = f"checkpoint:{Path(checkpoint)}" if checkpoint is not None else "random"
        return finish_loading(model, source, device)
    enum = tvm.get_model_weights(arch)
    try:
        weights = enum[tag] if tag else enum.DEFAULT
    except KeyError:
        raise ModelLoadError(f"torchvision's {arch} has no weights '{tag}'; it has "
                             f"{', '.join(w.name for w in enum)}.") from None
    url = urllib.parse.urlparse(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.path).name
    if not cached.is_file() and not host_reachable(url.hostname or "download.pytorch.org", url.port or 443):
        raise ModelLoadError(f"the weights {weights} of {arch} could not be downloaded: {url.hostname} is not "
                             f"reachable and no copy is cached in {cached.parent}. Pass a local state dict "
                             "with checkpoint= (--checkpoint PATH), or use random weights (--random-init).")
    try:
        model = tvm.get_model(arch, weights=weights)
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"the weights {weights} of {arch} could not be read or downloaded "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from e
    t = weights.transforms()
    source["weights"] = f"torchvision:{weights}"
    source["preprocessing"] = {"crop_size": int(t.crop_size[0]), "resize_size": int(t.resize_size[0]),
                               "interpolation": str(t.interpolation.value), "mean": list(t.mean),
                               "std": list(t.std)}
    return finish_loading(model, source, device)
