"""Windowed families on tiny random-weight models: timm Swin, Swin-V2 and SAM's encoder,
transformers Swin and Swin-V2. Maps equal a recomputation from q and k with the relative bias and
the shift mask; outputs unchanged; state restored; distance equal to the literal full-map
computation; the receptive field and compare; rollout and position-embedding similarity refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from reference import windowed_distance_literal

import vitlens
from vitlens.analyses.attention.distance import mean_attention_distance
from vitlens.capture.attention import capture_attention
from vitlens.models.families.registry import adapter_for
from vitlens.models.tokens import TokenLayout
from vitlens.models.windows import shift_regions, token_positions
from vitlens.runtime.errors import UnsupportedModelError


def _softmax(s):
    return torch.softmax(s.double(), -1)


def _add_mask(s, mask):
    if mask is None:
        return s
    nw, n = mask.shape[0], s.shape[-1]
    return (s.view(-1, nw, s.shape[1], n, n) + mask[None, :, None]).view(-1, s.shape[1], n, n)


def _cpb(table, index, n, heads):
    return 16 * torch.sigmoid(table.view(-1, heads)[index.view(-1)].view(n, n, -1).permute(2, 0, 1))


def timm_swin_probs(mod, args, kwargs):
    x, mask = args[0], kwargs.get("mask", args[1] if len(args) > 1 else None)
    b, n, _ = x.shape
    h = mod.num_heads
    bias = mod.qkv.bias
    if getattr(mod, "q_bias", None) is not None:
        bias = torch.cat((mod.q_bias, mod.k_bias, mod.v_bias))
    q, k, _ = F.linear(x, mod.qkv.weight, bias).reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
    if hasattr(mod, "logit_scale"):  # Swin-V2: cosine attention, continuous position bias
        s = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        s = s * torch.clamp(mod.logit_scale, max=math.log(100.0)).exp()
        s = s + _cpb(mod.cpb_mlp(mod.relative_coords_table), mod.relative_position_index, n, h)
    else:
        s = (q * mod.scale) @ k.transpose(-2, -1) + mod._get_rel_pos_bias()
    return _softmax(_add_mask(s, mask)), mask


def timm_sam_probs(mod, args, kwargs):
    from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias
    x = args[0]
    b, hh, ww, _ = x.shape
    n, h = hh * ww, mod.num_heads
    q, k, _ = mod.qkv(x.reshape(b, n, -1)).view(b, n, 3, h, -1).permute(2, 0, 3, 1, 4).reshape(3, b * h, n, -1)
    s = (q * mod.scale) @ k.transpose(-2, -1)
    s = s + get_decomposed_rel_pos_bias(q, mod.rel_pos_h, mod.rel_pos_w, (hh, ww), (hh, ww))
    return _softmax(s).view(b, h, n, n), None


def hf_swin_probs(mod, args, kwargs):
    x, mask = args[0], args[1] if len(args) > 1 else kwargs.get("attention_mask")
    b, n, _ = x.shape
    h = mod.num_attention_heads
    if hasattr(mod, "logit_scale"):  # Swinv2SelfAttention
        q = mod.query(x).view(b, n, h, -1).transpose(1, 2)
        k = mod.key(x).view(b, n, h, -1).transpose(1, 2)
        s = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        s = s * torch.clamp(mod.logit_scale, max=math.log(100.0)).exp()
        s = s + _cpb(mod.continuous_position_bias_mlp(mod.relative_coords_table), mod.relative_position_index, n, h)
    else:
        q = mod.q_proj(x).view(b, n, h, -1).transpose(1, 2)
        k = mod.k_proj(x).view(b, n, h, -1).transpose(1, 2)
        s = q @ k.transpose(-2, -1) * mod.scaling + mod.relative_position_bias()
    return _softmax(_add_mask(s, mask)), mask


def build(kind):
    torch.manual_seed(0)
    if kind == "timm-swin":
        m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                              depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=4, num_classes=3)
        return m, 56, timm_swin_probs
    if kind == "timm-swinv2":
        m = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=56, embed_dim=8,
                              depths=(1, 2, 1), num_heads=(1, 2, 2), window_size=4, num_classes=3)
        return m, 56, timm_swin_probs
    if kind == "timm-sam":
        m = timm.create_model("samvit_base_patch16", pretrained=False, img_size=80, embed_dim=16, depth=4,
                              num_heads=2, global_attn_indexes=(1, 3), window_size=3, num_classes=3, neck_chans=8)
        with torch.no_grad():
            m.pos_embed.normal_()
            for blk in m.blocks:
                blk.attn.rel_pos_h.normal_()
                blk.attn.rel_pos_w.normal_()
        return m, 80, timm_sam_probs
    import transformers as T
    cfg = dict(image_size=56, patch_size=4, embed_dim=8, depths=[1, 2, 2], num_heads=[1, 2, 4], window_size=4,
               num_labels=3)
    if kind == "hf-swin":
        return T.SwinForImageClassification(T.SwinConfig(**cfg)), 56, hf_swin_probs
    return T.Swinv2ForImageClassification(T.Swinv2Config(**cfg)), 56, hf_swin_probs


KINDS = ["timm-swin", "timm-swinv2", "timm-sam", "hf-swin", "hf-swinv2"]


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    model, size, probs = build(request.param)
    model.eval()
    with torch.no_grad():  # sharper attention than random init, so heads and blocks differ
        for b in adapter_for(model).attention_blocks():
            for lin in ("qkv", "q_proj", "k_proj", "query", "key"):
                if isinstance(getattr(b.module, lin, None), torch.nn.Linear):
                    getattr(b.module, lin).weight.mul_(4)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return request.param, model, x, probs


def _recompute(model, x, probs):
    """Every block's probabilities recomputed from its attention module's input, and its mask."""
    adapter = adapter_for(model)
    out, handles = [], []

    def hook(module, args, kwargs):
        with torch.no_grad():
            out.append(probs(module, args, kwargs))
    for b in adapter.attention_blocks():
        handles.append(b.module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            adapter.forward(x)
    finally:
        for h in handles:
            h.remove()
    return out


def _captured(model, x):
    adapter = adapter_for(model)
    with torch.no_grad(), capture_attention(model) as cap:
        y = adapter.forward(x)
    return cap.maps, y


def test_maps_equal_a_recomputation_and_outputs_are_unchanged(case):
    kind, model, x, probs = case
    adapter = adapter_for(model)
    assert adapter.family.endswith("windowed")
    layout = adapter.window_layout()
    with torch.no_grad():
        plain = adapter.forward(x)
    maps, y = _captured(model, x)
    assert torch.allclose(y, plain, atol=1e-5)
    again = _recompute(model, x, probs)
    assert len(maps) == len(again) == len(layout) == len(adapter.attention_blocks())
    for i, (a, (r, mask), g) in enumerate(zip(maps, again, layout.blocks)):
        assert a.shape == (2 * g.num_windows, adapter.attention_blocks()[i].num_heads, g.window_tokens, g.window_tokens)
        assert (a.double() - r).abs().max() < 2e-5, f"block {i}: {(a.double() - r).abs().max():.2e}"
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)
        if mask is not None:  # the library's shift mask allows exactly the pairs of one region
            region = shift_regions(g)
            assert g.is_shifted and mask.shape[0] == g.num_windows
            assert ((mask == 0).numpy() == (region[:, :, None] == region[:, None, :])).all()
        else:
            assert not g.is_shifted


def _state(model):
    adapter = adapter_for(model)
    flags = [getattr(b.module, "fused_attn", None) for b in adapter.attention_blocks()]
    impls = [getattr(m.config, "_attn_implementation_internal", None) for m in model.modules()
             if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return flags, impls, hooks


def test_state_is_restored_also_on_exceptions(case):
    kind, model, x, _ = case
    fused = [b.module for b in adapter_for(model).attention_blocks() if hasattr(b.module, "fused_attn")]
    for mod in fused[::2]:  # a mix of fast and explicit paths on entry
        mod.fused_attn = True
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model):
            adapter_for(model).forward(x[:1])
            raise RuntimeError("boom")
    assert _state(model) == before
    for _ in range(3):
        _captured(model, x[:1])
    assert _state(model) == before


def test_distance_equals_the_literal_full_map_computation(case):
    kind, model, x, _ = case
    adapter = adapter_for(model)
    layout = adapter.window_layout()
    res = vitlens.attention_distance(model, x, batch_size=1)
    maps, _ = _captured(model, x)
    assert res.distance.shape[0] == len(layout)
    assert list(res.heads) == [b.num_heads for b in adapter.attention_blocks()]
    for i, (a, g) in enumerate(zip(maps, layout.blocks)):
        h = a.shape[1]
        literal = windowed_distance_literal(a, g).mean(0).numpy()
        np.testing.assert_allclose(res.distance[i, :h], literal, rtol=1e-5, err_msg=f"block {i}")
        assert np.isnan(res.distance[i, h:]).all()
        if g.is_global:  # one window over the whole map: the global definition
            tl = TokenLayout(prefix_kinds=(), grid_size=g.grid_size, patch_stride=g.stride, input_size=g.input_size)
            np.testing.assert_allclose(res.distance[i, :h], mean_attention_distance(a, tl).mean(0).numpy(), rtol=1e-5)
    assert np.nanstd(res.distance) > 0.5  # heads and blocks differ: the comparison is not vacuous
    frame = res.to_frame()
    assert {"layer", "stage", "block", "head"} <= set(frame.columns) and len(frame) == int(res.heads.sum())


def test_receptive_field_and_compare_place_blocks_on_relative_depth(case):
    kind, model, x, _ = case
    adapter = adapter_for(model)
    erf = vitlens.effective_receptive_field(model, x, batch_size=2, objective="relu_sum")
    grids = [g.grid_size for g in adapter.window_layout().blocks]
    assert [tuple(s) for s in erf.feature_size] == grids
    assert erf.depth_fraction[0] == 0 and erf.depth_fraction[-1] == 1
    from vitlens.analyses.locality import locality

    frame = locality(fields=[erf]).to_frame()
    assert frame["depth_fraction"].between(0, 1).all() and frame["value_px"].notna().all()


def test_rollout_and_position_similarity_refuse_clearly(case):
    kind, model, x, _ = case
    if kind == "timm-sam":
        sim = vitlens.position_embedding_similarity(model)   # SAM has an absolute table: analysed
        assert sim is not None
        with pytest.raises(UnsupportedModelError, match="attends within windows in"):
            vitlens.attention_rollout(model, x)
        return
    with pytest.raises(UnsupportedModelError, match="windows of feature maps that shrink from stage to stage"):
        vitlens.attention_rollout(model, x)
    with pytest.raises(UnsupportedModelError):
        vitlens.position_embedding_similarity(model)
    assert adapter_for(model).position_table() is None


def test_positions_cover_every_token_once(case):
    kind, model, x, _ = case
    for g in adapter_for(model).window_layout().blocks:
        pos, valid = token_positions(g)
        flat = (pos[..., 0] * g.grid_size[1] + pos[..., 1])[valid]
        assert sorted(flat.tolist()) == list(range(g.grid_size[0] * g.grid_size[1]))


def test_cli_distance_writes_stage_and_block_columns(tmp_path, monkeypatch):
    import json

    import pandas as pd
    from PIL import Image

    import vitlens.models.loading as models
    from vitlens.cli import main

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 70, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    kw = dict(img_size=56, embed_dim=8, depths=(1, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=4)
    orig = models.load_model
    monkeypatch.setattr("vitlens.jobs.common.load_model", lambda n, **k: orig(n, **{**k, **kw}))
    out = tmp_path / "out"
    rc = main(["distance", "--model", "swin_tiny_patch4_window7_224", "--random-init", "--images", str(d),
               "--out", str(out), "--batch-size", "2"])
    assert rc == 0
    csv = pd.read_csv(out / "attention_distance.csv")
    assert list(csv.columns[:5]) == ["model", "layer", "stage", "block", "head"]
    assert len(csv) == 1 + 2 * 2 + 2 * 2 + 4 and (csv["n_images"] == 3).all()
    # a stage's unshifted blocks share one reference; its shifted blocks have their own (their mask's keys)
    assert csv[csv.block % 2 == 0].groupby("stage")["uniform_px"].nunique().max() == 1
    assert csv[csv.block % 2 == 1].groupby("stage")["uniform_px"].nunique().max() == 1
    assert (out / "attention_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    blocks = run["models"][0]["window_layout"]["blocks"]
    assert [b["stride"][0] for b in blocks] == [4, 8, 8, 16, 16, 32]


def test_swin_with_an_absolute_table_has_it_analysed():
    import transformers
    cfg = transformers.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=32, patch_size=4,
                                  window_size=4, use_absolute_embeddings=True)
    torch.manual_seed(0)
    model = transformers.SwinModel(cfg).eval()
    sim = vitlens.position_embedding_similarity(model)
    table = model.embeddings.position_embeddings.detach()[0].reshape(8, 8, -1).double()
    flat = torch.nn.functional.normalize(table.reshape(64, -1), dim=-1)
    np.testing.assert_allclose(sim.similarity.reshape(64, 64), (flat @ flat.T).numpy(), atol=1e-6)


def test_attention_distance_sits_at_its_blocks_depth_beside_the_receptive_field(case):
    kind, model, x, _ = case
    blocks = adapter_for(model).attention_blocks()
    dist = vitlens.attention_distance(model, x)
    assert dist.depths == tuple(b.depth for b in blocks)
    erf = vitlens.effective_receptive_field(model, x[:1], objective="relu_sum")
    frame = vitlens.Locality((dist,), (erf,)).to_frame()
    att = frame[frame.metric == "attention_distance"].drop_duplicates("layer").sort_values("layer")
    depth = np.array([b.depth for b in blocks])
    np.testing.assert_allclose(att.depth_fraction.to_numpy(), depth / depth.max())
