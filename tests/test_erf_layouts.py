"""The receptive field of every CNN and hierarchical family vitlens accepts reads each layer's output
in its own layout (channels-first, channels-last, or tokens on a square map): the mean input-gradient
map equals a literal computation that hooks the layer, lays its output out by hand and differentiates."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import timm
import torch
import torchvision
import transformers as T

import vitlens


def _timm_resnet():
    return timm.create_model("resnet10t", pretrained=False, channels=(8, 16, 32, 64), stem_width=8, num_classes=3), 64


def _timm_convnext():
    return timm.create_model("convnext_atto", pretrained=False, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
                             num_classes=3), 64


def _timm_swin():
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                             depths=(1, 2, 1), num_heads=(1, 2, 2), window_size=4, num_classes=3), 56


def _hf_swin():
    cfg = T.SwinConfig(image_size=56, patch_size=4, embed_dim=8, depths=[1, 2, 1], num_heads=[1, 2, 2], window_size=4,
                       num_labels=3)
    return T.SwinForImageClassification(cfg), 56


def _tv_resnet():
    return torchvision.models.resnet18(num_classes=3), 64


def _tv_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    cfg = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return ConvNeXt(cfg, num_classes=3), 64


def _tv_swin():
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 2], window_size=[4, 4],
                           num_classes=3), 64


def _oc_resnet():
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return open_clip.model.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=64),
                                text_cfg=text), 64


# how each family lays out a layer's output, written here from the libraries' code, not asked of vitlens
FAMILIES = {
    "timm-resnet": (_timm_resnet, lambda name: "NCHW"),
    "timm-convnext": (_timm_convnext, lambda name: "NCHW"),
    "timm-swin": (_timm_swin, lambda name: "NHWC"),
    "hf-swin": (_hf_swin, lambda name: "tokens"),
    "torchvision-resnet": (_tv_resnet, lambda name: "NCHW"),
    "torchvision-convnext": (_tv_convnext, lambda name: "NCHW"),
    "torchvision-swin": (_tv_swin, lambda name: "NHWC"),
    "open_clip-resnet": (_oc_resnet, lambda name: "NCHW"),
}


def _run(model, x):
    if isinstance(model, open_clip.model.CLIP):
        return model.encode_image(x)
    if type(model).__module__.startswith("transformers."):
        return model(pixel_values=x).logits
    return model(x)


def literal_map(model, layer: str, x: torch.Tensor, layout: str) -> np.ndarray:
    """``[height, width]`` mean over images of |d (centre unit summed over channels) / d input| summed
    over colours, the centre unit at (h // 2, w // 2) of the layer's map."""
    x = x.clone().requires_grad_(True)
    got = {}

    def hook(_m, _a, out):
        got["out"] = out[0] if isinstance(out, tuple) else out

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            _run(model, x)
    finally:
        handle.remove()
    out = got["out"]
    if layout == "NHWC":
        out = out.permute(0, 3, 1, 2)
    elif layout == "tokens":
        side = math.isqrt(out.shape[1])
        out = out.reshape(out.shape[0], side, side, out.shape[2]).permute(0, 3, 1, 2)
    h, w = out.shape[2], out.shape[3]
    (g,) = torch.autograd.grad(out[:, :, h // 2, w // 2].sum(), x)
    return g.abs().sum(1).mean(0).double().numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_erf_equals_the_literal_gradient_in_the_layers_own_layout(family):
    build, layout_of = FAMILIES[family]
    torch.manual_seed(0)
    model, size = build()
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    res = vitlens.effective_receptive_field(model, x, batch_size=2, progress=False)
    assert len(res.layers) >= 2
    for i, layer in enumerate(res.layers):
        want = literal_map(model, layer, x, layout_of(layer))
        np.testing.assert_allclose(res.maps[i], want, rtol=1e-4, atol=1e-7 * want.max(), err_msg=f"{family} {layer}")
