"""Parameter parts through the family adapter: the patch embedding, position table and prefix tokens
are ``embedding`` in every family, and only the image tower (what FLOPs, memory and throughput
measure) is counted for CLIP models. Expected counts are written out by hand from each library's
module names."""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
import transformers as T

from vitlens.analyses.cost import parameter_parts

HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
          patch_size=8)


def numel(*things) -> int:
    n = 0
    for t in things:
        n += sum(p.numel() for p in t.parameters()) if isinstance(t, nn.Module) else t.numel()
    return n


def _check(parts: dict, total: int, embedding: int):
    assert parts["total"] == total
    assert parts["embedding"] == embedding
    assert sum(v for k, v in parts.items() if k != "total") == total


def test_timm_vit():
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                          depth=2, num_heads=2).eval()
    p = parameter_parts(m)
    _check(p, numel(m), numel(m.patch_embed, m.pos_embed, m.cls_token))
    assert p["convolution"] == 0


def test_timm_swin():
    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                          depths=(1, 1), num_heads=(1, 2), window_size=7, num_classes=3).eval()
    _check(parameter_parts(m), numel(m), numel(m.patch_embed))


def test_transformers_vit():
    torch.manual_seed(0)
    m = T.ViTForImageClassification(T.ViTConfig(**HF, num_labels=5)).eval()
    e = m.vit.embeddings
    p = parameter_parts(m)
    _check(p, numel(m), numel(e.patch_embeddings.projection, e.position_embeddings, e.cls_token)
           + (numel(e.mask_token) if e.mask_token is not None else 0))
    assert p["convolution"] == 0


def test_transformers_clip_counts_the_image_tower_only():
    torch.manual_seed(0)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                max_position_embeddings=16)
    m = T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=HF, projection_dim=16)).eval()
    e = m.vision_model.embeddings
    p = parameter_parts(m)
    _check(p, numel(m.vision_model, m.visual_projection),
           numel(e.patch_embedding, e.position_embedding, e.class_embedding))
    assert p["total"] < numel(m)


def test_torchvision_vit():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=5).eval()
    p = parameter_parts(m)
    _check(p, numel(m), numel(m.conv_proj, m.class_token, m.encoder.pos_embedding))
    assert p["convolution"] == 0


def test_open_clip_counts_the_image_tower_only():
    torch.manual_seed(0)
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    m = open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=text).eval()
    v = m.visual
    p = parameter_parts(m)
    _check(p, numel(v), numel(v.conv1, v.class_embedding, v.positional_embedding))
    assert p["total"] < numel(m) and p["convolution"] == 0


@pytest.mark.parametrize("build", [
    lambda: timm.create_model("resnet10t", pretrained=False, channels=(8, 16, 32, 64), stem_width=8, num_classes=3),
    lambda: torchvision.models.resnet18(num_classes=3),
])
def test_cnns_have_no_embedding(build):
    torch.manual_seed(0)
    m = build().eval()
    p = parameter_parts(m)
    _check(p, numel(m), 0)
    assert p["convolution"] == sum(numel(c) for c in m.modules() if isinstance(c, nn.Conv2d))
