"""``cost_profile`` measures windowed transformers (Swin): parameters, FLOPs with the window
attention products, memory and throughput, at the model's own size and another."""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import timm
import torch

from vitlens import cost_profile


def tiny_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, embed_dim=8,
                             depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=3).eval()


def test_cost_profile_of_a_swin():
    model = tiny_swin()
    res = cost_profile(model, [64, 128], batch_size=2, repeats=1, warmup=0, name="swin")
    f = res.to_frame()
    assert res.kind_of("swin") == "vit"
    par = f[(f.quantity == "parameters") & (f.input_px == 64)].set_index("part").value
    assert par["total"] == sum(p.numel() for p in model.parameters())
    assert par["embedding"] == sum(p.numel() for p in model.patch_embed.parameters())
    # window attention products, literally: each block, each window: q k^T and attention x v, 2 FLOPs
    # per multiply-add, wt = tokens per window, C = the block's width
    want = 0
    for stage in model.layers:
        for blk in stage.blocks:
            ws = blk.window_size
            H, W = blk.input_resolution
            wt, C = ws[0] * ws[1], blk.attn.qkv.in_features
            want += 2 * 2 * (H // ws[0]) * (W // ws[1]) * wt * wt * C
    flops = f[(f.quantity == "flops") & (f.input_px == 64)].set_index("part").value
    assert flops["attention"] == want
    assert flops["transformer_linear"] > 0 and flops["total"] > flops["attention"]
    big = f[(f.quantity == "flops") & (f.part == "total") & (f.input_px == 128)].value.item()
    assert big > 3 * flops["total"]
    for q in ("peak_memory", "peak_memory_explicit", "throughput"):
        assert (f.quantity == q).any(), q
    assert (f[f.quantity == "tokens"].empty) and set(f.tokens[f.input_px == 64]) == {16 * 16}
