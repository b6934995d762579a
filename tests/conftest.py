"""Shared fixtures: tiny random-weight timm models of every family vitlens supports."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import timm
import torch

SMALL = dict(embed_dim=32, depth=2, num_heads=2)

# family -> (timm name, kwargs, input (height, width)); random weights, built in well under a second.
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "dinov2_registers": ("vit_small_patch14_reg4_dinov2", dict(img_size=56, **SMALL), (56, 56)),
    "gap_no_cls": ("vit_medium_patch16_gap_256", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "clip": ("vit_base_patch16_clip_224", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=56, **SMALL), (56, 56)),
    "eva_registers": ("vit_base_patch16_rope_reg1_gap_256", dict(img_size=32, patch_size=8, **SMALL), (32, 32)),
    "hybrid_r50": ("vit_base_r50_s16_224", dict(img_size=64, **SMALL), (64, 64)),
    "dynamic": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, dynamic_img_size=True, **SMALL), (48, 40)),
}


def build(family: str, seed: int = 0) -> torch.nn.Module:
    name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def batch(family: str, n: int = 2, seed: int = 1) -> torch.Tensor:
    h, w = FAMILIES[family][2]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g)


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_vit() -> torch.nn.Module:
    return build("vit")


@pytest.fixture
def tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads and lose much to them on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
