"""TokenLayout for every family, including non-square dynamic inputs."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import FAMILIES, batch, build

import vitlens
from vitlens.analyses.attention.distance import distance_matrix

EXPECTED = {  # family -> (prefix kinds, grid, stride)
    "vit": (("cls",), (4, 4), (8.0, 8.0)),
    "deit_distilled": (("cls", "dist"), (4, 4), (8.0, 8.0)),
    "dinov2_registers": (("cls", "reg", "reg", "reg", "reg"), (4, 4), (14.0, 14.0)),
    "gap_no_cls": ((), (4, 4), (8.0, 8.0)),
    "clip": (("cls",), (4, 4), (8.0, 8.0)),
    "beit": (("cls",), (4, 4), (8.0, 8.0)),
    "eva02": (("cls",), (4, 4), (14.0, 14.0)),
    "eva_registers": (("reg",), (4, 4), (8.0, 8.0)),  # timm Eva: reg_token, no class token
    "hybrid_r50": (("cls",), (4, 4), (16.0, 16.0)),
    "dynamic": (("cls",), (6, 5), (8.0, 8.0)),
}


def test_layout_matches_the_token_sequence(family):
    model = build(family)
    size = FAMILIES[family][2]
    layout = vitlens.token_layout(model, size)
    prefix, grid, stride = EXPECTED[family]
    assert layout.prefix_kinds == prefix
    assert layout.grid_size == grid
    assert layout.patch_stride == stride
    assert layout.input_size == size
    assert layout.num_prefix_tokens == model.num_prefix_tokens
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(batch(family, n=1))
    assert cap.maps[0].shape[-1] == layout.num_tokens


def test_patch_centres_and_distances():
    layout = vitlens.TokenLayout(("cls",), (2, 3), (16.0, 16.0), (32, 48))
    c = layout.patch_centers()
    np.testing.assert_allclose(c[0], [8, 8])
    np.testing.assert_allclose(c[5], [24, 40])
    d = distance_matrix(layout)
    assert d.shape == (6, 6)
    assert d[0, 5] == pytest.approx(np.hypot(16, 32))
    assert layout.patch_slice == slice(1, 7)
    assert layout.class_token_index == 0


def test_non_default_size_needs_dynamic_img_size(tiny_vit):
    with pytest.raises(vitlens.UnsupportedModelError, match="dynamic_img_size"):
        vitlens.token_layout(tiny_vit, (48, 40))


def test_no_embed_class_table_has_patches_only():
    model = build("dinov2_registers")
    layout = vitlens.token_layout(model)
    assert model.no_embed_class
    assert model.pos_embed.shape[1] == layout.num_patches


def test_cnn_has_no_layout(tiny_cnn):
    with pytest.raises(vitlens.UnsupportedModelError, match="patch embedding"):
        vitlens.token_layout(tiny_cnn)


def test_layout_round_trips_to_dict():
    layout = vitlens.token_layout(build("deit_distilled"))
    d = layout.to_dict()
    assert d["num_prefix_tokens"] == 2 and d["grid_size"] == (4, 4)
    assert "dist" in layout.describe()
