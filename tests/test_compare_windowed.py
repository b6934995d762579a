"""``compare`` treats a windowed transformer (Swin) as the ViT it is: kind ``vit`` in every row of
``locality.csv`` and in the summary, with its attention distance kept."""

from __future__ import annotations

import timm
import torch

import vitlens
from vitlens.analyses.locality import locality
from vitlens.jobs.compare import _summary


def tiny_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                             depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=4, num_classes=3).eval()


def tiny_cnn():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, channels=(8, 16, 32, 64), stem_width=8,
                             num_classes=3).eval()


def test_swin_is_a_vit_with_its_attention_distance_in_compare():
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    swin, cnn = tiny_swin(), tiny_cnn()
    d = vitlens.attention_distance(swin, x, name="swin", progress=False)
    f = vitlens.effective_receptive_field(swin, x, name="swin", progress=False)
    c = vitlens.effective_receptive_field(cnn, x, name="cnn", progress=False)
    assert f.kind == "vit" and c.kind == "cnn"
    res = locality([d], [f, c])
    frame = res.to_frame()
    assert set(frame[frame.model == "swin"].kind) == {"vit"}
    assert set(frame[frame.model == "cnn"].kind) == {"cnn"}
    assert {"attention_distance", "erf_spread"} <= set(frame[frame.model == "swin"].metric)
    s = res.summary()
    assert s["swin"]["kind"] == "vit" and s["cnn"]["kind"] == "cnn"
    assert "attention_first_px" in s["swin"]
    lines = _summary(res)
    swin_line = next(l for l in lines if l.startswith("swin "))
    assert "CNN" not in swin_line and "attention distance" in swin_line
    assert next(l for l in lines if l.startswith("cnn ")).startswith("cnn (CNN")


def test_swin_given_as_a_cnn_is_sent_to_vit():
    import pytest

    from vitlens.jobs.compare import check_cnn
    from vitlens.runtime.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="windowed Vision Transformer; pass it with --vit"):
        check_cnn(tiny_swin())
    check_cnn(tiny_cnn())
