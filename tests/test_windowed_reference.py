"""Each windowed block's uniform-attention reference is uniform attention over the keys its own mask
allows: in a shifted Swin block, the mean over queries of the mean distance to the keys of the
query's own shift region."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from vitlens.analyses.attention.windowed_distance import windowed_mean_attention_distance
from vitlens.models.families.registry import adapter_for
from vitlens.models.windows import BlockGeometry


def random_swin():
    torch.manual_seed(0)
    # 64 px, 4 px patches: maps of 16, 8, 4 and 2 tokens, windows of 4 (no padding); every stage with
    # an unshifted and a shifted block where the window is smaller than the map
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, embed_dim=8,
                             depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, num_classes=3).eval()


def literal_masks(H: int, W: int, w: int, s: int):
    """Swin's own recipe, written out: label the (shifted) map by region with the three slices per axis,
    cut it into windows row-major; ``[window, token]`` labels and the ``(row, col)`` in the UN-shifted
    map of each window token (the shifted map's index p holds the original row (p + s) mod H)."""
    label = np.zeros((H, W), dtype=int)
    cnt = 0
    for hs in (slice(0, H - w), slice(H - w, H - s), slice(H - s, H)):
        for ws in (slice(0, W - w), slice(W - w, W - s), slice(W - s, W)):
            label[hs, ws] = cnt
            cnt += 1
    if s == 0:
        label[:] = 0
    labels, positions = [], []
    for r in range(H // w):
        for c in range(W // w):
            lab, pos = [], []
            for a in range(w):
                for b in range(w):
                    p, q = r * w + a, c * w + b
                    lab.append(label[p, q])
                    pos.append(((p + s) % H, (q + s) % W))
            labels.append(lab)
            positions.append(pos)
    return np.array(labels), np.array(positions, dtype=float)


def literal_reference(g: BlockGeometry) -> float:
    (H, W), (w, _), (s, _), (sy, sx) = g.grid_size, g.window_size, g.shift, g.stride
    labels, pos = literal_masks(H, W, w, s)
    per_query = []
    for lab, p in zip(labels, pos):
        for i in range(len(lab)):
            keys = [j for j in range(len(lab)) if lab[j] == lab[i]]
            d = [np.hypot((p[i, 0] - p[j, 0]) * sy, (p[i, 1] - p[j, 1]) * sx) for j in keys]
            per_query.append(np.mean(d))
    return float(np.mean(per_query))


def test_shifted_swin_blocks_reference_is_uniform_over_the_allowed_keys():
    layout = adapter_for(random_swin()).window_layout()
    ref = layout.uniform("px")
    shifted = [i for i, g in enumerate(layout.blocks) if g.is_shifted]
    assert len(shifted) >= 2 and all(not any(g.padding) for g in layout.blocks)
    for i, g in enumerate(layout.blocks):
        assert ref[i] == pytest.approx(literal_reference(g), rel=1e-12), g.describe()
    for i in shifted:  # the shift mask leaves each query fewer keys: a shorter reference than the window's
        g = layout.blocks[i]
        assert ref[i] < literal_reference(BlockGeometry(g.grid_size, g.stride, g.window_size, (0, 0), g.input_size))


def test_uniform_attention_over_the_allowed_keys_gives_the_reference_exactly():
    layout = adapter_for(random_swin()).window_layout()
    for g, ref in zip(layout.blocks, layout.uniform("px")):
        (H, W), (w, _), (s, _) = g.grid_size, g.window_size, g.shift
        labels, _ = literal_masks(H, W, w, s)
        allowed = torch.as_tensor(labels[:, :, None] == labels[:, None, :], dtype=torch.float64)
        attn = (allowed / allowed.sum(-1, keepdim=True)).float()            # [window, query, key]
        attn = attn[None, :, None].expand(2, -1, 3, -1, -1).reshape(-1, 3, w * w, w * w)
        got = windowed_mean_attention_distance(attn, g, units="px")
        assert torch.allclose(got.double(), torch.full((2, 3), ref, dtype=torch.float64), rtol=1e-6), g.describe()
