"""The capture contract, on a tiny random instance of every supported family."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import FAMILIES, batch, build
from reference import recompute_attention

import vitlens
from vitlens.capture.attention import attention_modules


def _flags(model):
    return [m.fused_attn for _, m in attention_modules(model)]


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_maps_equal_independent_recomputation(family):
    model = build(family)
    x = batch(family, n=3)
    expected = recompute_attention(model, x)
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    layout = vitlens.token_layout(model, FAMILIES[family][2])
    assert len(cap.maps) == len(expected) == len(attention_modules(model))
    for got, want in zip(cap.maps, expected):
        heads = attention_modules(model)[0][1].num_heads
        assert got.shape == (3, heads, layout.num_tokens, layout.num_tokens)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)), rtol=0, atol=1e-5)


def test_outputs_unchanged_and_flags_restored(family):
    model = build(family)
    x = batch(family)
    before = _flags(model)
    assert any(before), "timm builds these models with fused attention on by default"
    hooks = _hook_count(model)
    with torch.no_grad():
        plain = model(x)
        with vitlens.capture_attention(model):
            captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)
    assert _flags(model) == before
    assert _hook_count(model) == hooks


def test_flags_and_hooks_restored_when_body_raises(tiny_vit):
    before = _flags(tiny_vit)
    with pytest.raises(RuntimeError, match="boom"):
        with vitlens.capture_attention(tiny_vit):
            assert not any(_flags(tiny_vit))
            raise RuntimeError("boom")
    assert _flags(tiny_vit) == before
    assert _hook_count(tiny_vit) == 0


def test_many_contexts_leave_nothing_behind(tiny_vit):
    x = batch("vit", n=1)
    for _ in range(50):
        with torch.no_grad(), vitlens.capture_attention(tiny_vit) as cap:
            tiny_vit(x)
        assert len(cap.maps) == 2
    assert _hook_count(tiny_vit) == 0


def test_several_forwards_concatenate_along_batch(tiny_vit):
    x1, x2 = batch("vit", n=2, seed=1), batch("vit", n=3, seed=2)
    with torch.no_grad(), vitlens.capture_attention(tiny_vit) as cap:
        tiny_vit(x1)
        tiny_vit(x2)
    with torch.no_grad(), vitlens.capture_attention(tiny_vit) as whole:
        tiny_vit(torch.cat([x1, x2]))
    for a, b in zip(cap.maps, whole.maps):
        assert a.shape[0] == 5
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_layer_selection_and_callback():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=4,
                              num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), vitlens.capture_attention(model) as full:
        model(x)
    with torch.no_grad(), vitlens.capture_attention(model, layers=[0, -1]) as some:
        model(x)
    assert some.layer_indices == [0, 3] and some.names == ["blocks.0.attn", "blocks.3.attn"]
    torch.testing.assert_close(some.maps[1], full.maps[3])
    seen = []
    with torch.no_grad(), vitlens.capture_attention(model, callback=lambda i, a: seen.append((i, a))) as cb:
        model(x)
    assert cb.maps == [] and [i for i, _ in seen] == [0, 1, 2, 3]
    torch.testing.assert_close(seen[2][1], full.maps[2])
    with pytest.raises(ValueError, match="out of range"):
        with vitlens.capture_attention(model, layers=[4]):
            pass


def test_gradients_flow_when_not_detached(tiny_vit):
    x = batch("vit", n=2)
    with vitlens.capture_attention(tiny_vit, detach=False) as cap:
        logits = tiny_vit(x)
    grads = torch.autograd.grad(logits[:, 0].sum(), cap.maps)
    assert all(g.shape == m.shape for g, m in zip(grads, cap.maps))
    assert any(g.abs().sum() > 0 for g in grads)


def test_dropout_in_training_mode_is_not_captured():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                              num_heads=2, attn_drop_rate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    for m in cap.maps:  # probabilities before dropout: rows still sum to one
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)), rtol=0, atol=1e-5)
    assert model.training


def test_cnn_is_a_clear_error(tiny_cnn):
    with pytest.raises(vitlens.UnsupportedModelError, match="not a Vision Transformer"):
        with vitlens.capture_attention(tiny_cnn):
            pass


def test_unknown_attention_module_is_named():
    cait = timm.create_model("cait_xxs24_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=1, num_heads=2, depth_token_only=1)  # talking-heads attention
    with pytest.raises(vitlens.UnsupportedModelError, match="TalkingHeadAttn"):
        with vitlens.capture_attention(cait):
            pass


def test_module_that_forms_no_probabilities_is_an_error(tiny_vit):
    attn = tiny_vit.blocks[1].attn
    attn.forward = lambda x, attn_mask=None, **kw: x  # a changed module that never calls attn_drop
    with pytest.raises(vitlens.UnsupportedModelError, match="blocks.1.attn"):
        with torch.no_grad(), vitlens.capture_attention(tiny_vit):
            tiny_vit(batch("vit"))
    assert _hook_count(tiny_vit) == 0
