"""The open_clip family: tiny random CLIP models built from small custom configs, no downloads."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vitlens.models.families._mha import recompute_mha  # noqa: E402
from vitlens.models.families.open_clip import OPENAI_MEAN, OpenClipAdapter  # noqa: E402
from vitlens.models.families.registry import adapter_for, load_by_prefix  # noqa: E402
from vitlens.runtime.errors import ModelLoadError, UnsupportedModelError  # noqa: E402

TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)


def _clip(**vision):
    torch.manual_seed(0)
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0, **vision)
    return open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=TEXT).eval()


@pytest.fixture(scope="module")
def clip(one_thread):
    return _clip()


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _capture(adapter, x, grad=False):
    maps, inputs = {}, {}
    blocks = adapter.attention_blocks()

    def keep_query(i):
        def hook(_module, args, kwargs):
            inputs.setdefault(i, args[0] if args else kwargs["query"])
        return hook

    pre = [b.module.register_forward_pre_hook(keep_query(b.depth), with_kwargs=True) for b in blocks]
    try:
        with torch.set_grad_enabled(grad), adapter.exact_attention(range(len(blocks)),
                                                                   lambda i, a: maps.setdefault(i, a.detach().clone())):
            out = adapter.forward(x)
    finally:
        for h in pre:
            h.remove()
    return [maps[i] for i in sorted(maps)], [inputs[i] for i in sorted(inputs)], out


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_maps_equal_recomputation_from_q_and_k(clip, grad):
    adapter = adapter_for(clip)
    assert isinstance(adapter, OpenClipAdapter)
    maps, inputs, _ = _capture(adapter, _x(), grad=grad)
    layout = adapter.token_layout()
    assert layout.prefix_kinds == ("cls",) and layout.grid_size == (4, 4) and layout.num_tokens == 17
    assert [b.name for b in adapter.attention_blocks()] == [f"visual.transformer.resblocks.{i}.attn" for i in (0, 1)]
    for b, a, q in zip(adapter.attention_blocks(), maps, inputs):
        assert a.shape == (2, 2, 17, 17)  # [batch, head, query, key]
        torch.testing.assert_close(a, recompute_mha(b.module, q.detach()), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)


def test_outputs_unchanged_hooks_removed_text_tower_untouched(clip):
    adapter = adapter_for(clip)
    x = _x()
    text = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = clip.encode_image(x)
        text_before = clip.encode_text(text)
    seen = []
    with torch.no_grad(), adapter.exact_attention([0, 1], lambda i, a: seen.append(i)):
        captured = adapter.forward(x)
        text_inside = clip.encode_text(text)
    assert seen == [0, 1]  # the text tower's attention is not a vision block
    torch.testing.assert_close(captured, before, atol=1e-6, rtol=1e-5)
    assert torch.equal(text_inside, text_before)
    with pytest.raises(RuntimeError, match="body"):
        with adapter.exact_attention([1], lambda i, a: None):
            raise RuntimeError("body")
    for b in adapter.attention_blocks():
        assert not b.module._forward_hooks and not b.module._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), before)


def test_bare_tower_and_attention_pool():
    model = _clip(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)
    tower = model.visual
    adapter = adapter_for(tower)
    assert adapter.prefix == "" and len(adapter.attention_blocks()) == 2
    maps, _, out = _capture(adapter, _x())
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)  # the pooler is not a block
    assert out.shape[0] == 2


def test_position_table_and_resampling(clip):
    adapter = adapter_for(clip)
    t = adapter.position_table()
    assert t.patches.shape == (4, 4, 32) and t.prefix_entries == 1 and t.trainable
    torch.testing.assert_close(t.patches.reshape(16, 32), clip.visual.positional_embedding[1:].detach())
    big = adapter.position_table(48)
    expected = F.interpolate(t.patches.permute(2, 0, 1)[None], size=(6, 6), mode="bicubic",
                             align_corners=False, antialias=True)[0].permute(1, 2, 0)
    torch.testing.assert_close(big.patches, expected)
    fixed = adapter_for(_clip(pos_embed_type="sin_cos_2d")).position_table()
    assert not fixed.trainable
    with pytest.raises(UnsupportedModelError, match="exactly 32"):
        adapter.token_layout(48)


def test_outputs_filters_preprocessing(clip):
    adapter = adapter_for(clip)
    assert adapter.block_outputs() == ["visual.transformer.resblocks.0", "visual.transformer.resblocks.1"]
    assert adapter.patch_filters().shape == (32, 3, 8, 8)
    p = adapter.preprocessing()
    assert p.input_size == (32, 32) and p.mean == OPENAI_MEAN and p.interpolation == "bicubic"
    assert p.crop_mode == "center" and p.resize_shortest and p.crop_pct == 1.0
    model = _clip()
    open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                               "interpolation": "bilinear", "resize_mode": "squash"})
    p = adapter_for(model).preprocessing()
    assert p.mean == (0.5, 0.5, 0.5) and p.interpolation == "bilinear" and p.crop_mode == "squash"
    assert not p.resize_shortest


def test_refusals():
    custom = _clip(qk_norm=True)
    with pytest.raises(UnsupportedModelError, match="fused kernel"):
        adapter_for(custom).attention_blocks()
    torch.manual_seed(0)
    rn = open_clip.model.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=64),
                              text_cfg=TEXT).eval()
    adapter = adapter_for(rn)
    assert adapter.block_outputs() == ["visual.avgpool"] + [f"visual.layer{i}" for i in (1, 2, 3, 4)]
    assert all(rn.get_submodule(n) is not None for n in adapter.block_outputs())
    with pytest.raises(UnsupportedModelError, match="convolutional network"):
        adapter.attention_blocks()
    assert adapter.position_table() is None


def test_training_dropout_is_refused():
    model = _clip()
    model.visual.transformer.resblocks[0].attn.dropout = 0.1
    model.train()
    adapter = adapter_for(model)
    with pytest.raises(UnsupportedModelError, match="dropout"):
        with adapter.exact_attention([0], lambda i, a: None):
            adapter.forward(_x())


def test_load_errors_are_clear_and_fast(monkeypatch):
    with pytest.raises(ModelLoadError, match="ViT-B-32"):
        load_by_prefix("open_clip:ViT-B-33")
    with pytest.raises(ModelLoadError, match="no pretrained tag 'nope'"):
        load_by_prefix("open_clip:ViT-B-32:nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="not reachable"):
        load_by_prefix("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert time.monotonic() - t < 10
