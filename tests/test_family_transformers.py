"""The transformers family: tiny random-weight models built from configs, no downloads."""

from __future__ import annotations

import copy
import gc
import json
import time
import weakref

import pytest
import torch
import torch.nn.functional as F
import transformers

from vitlens.models.families.registry import adapter_for, load_by_prefix  # noqa: E402
from vitlens.models.families.transformers import (  # noqa: E402
    IMAGENET_DEFAULT_MEAN,
    OPENAI_CLIP_MEAN,
    TransformersAdapter,
    _get_impl,
)
from vitlens.runtime.errors import ModelLoadError, UnsupportedModelError  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             image_size=32, patch_size=8)


def _build(kind: str):
    T = transformers
    torch.manual_seed(0)
    if kind == "vit":
        return T.ViTForImageClassification(T.ViTConfig(**SMALL, num_labels=5))
    if kind == "deit_distilled":
        return T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**SMALL, num_labels=5))
    if kind == "dinov2":
        return T.Dinov2Model(T.Dinov2Config(**SMALL))
    if kind == "dinov2_registers":
        return T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=3))
    if kind == "clip_vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**SMALL))
    if kind == "clip":
        text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    vocab_size=64, max_position_embeddings=16)
        return T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=SMALL, projection_dim=16))
    if kind == "siglip_vision":
        return T.SiglipVisionModel(T.SiglipVisionConfig(**SMALL))
    if kind == "beit":
        return T.BeitForImageClassification(T.BeitConfig(**SMALL, use_relative_position_bias=True, num_labels=5))
    raise KeyError(kind)


KINDS = ["vit", "deit_distilled", "dinov2", "dinov2_registers", "clip_vision", "clip", "siglip_vision", "beit"]
PREFIX = {"vit": ("cls",), "deit_distilled": ("cls", "dist"), "dinov2": ("cls",),
          "dinov2_registers": ("cls", "reg", "reg", "reg"), "clip_vision": ("cls",), "clip": ("cls",),
          "siglip_vision": (), "beit": ("cls",)}
TABLE_PREFIX = {"vit": 1, "deit_distilled": 2, "dinov2": 1, "dinov2_registers": 1, "clip_vision": 1,
                "clip": 1, "siglip_vision": 0, "beit": None}


@pytest.fixture(scope="module")
def models(one_thread):
    return {k: _build(k).eval() for k in KINDS}


def _x(size=32, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _capture(adapter, x):
    maps = {}
    with torch.no_grad(), adapter.exact_attention(range(len(adapter.attention_blocks())),
                                                  lambda i, a: maps.setdefault(i, a.clone())):
        out = adapter.forward(x)
    return [maps[i] for i in sorted(maps)], out


def _eager_reference(model, x):
    """The library's own eager attentions (output_attentions=True) on a copy of the model."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    root = TransformersAdapter(ref).root
    with torch.no_grad():
        return list(root(pixel_values=x, output_attentions=True).attentions)


@pytest.mark.parametrize("kind", KINDS)
def test_maps_equal_eager_output_attentions(models, kind):
    model = models[kind]
    adapter = adapter_for(model)
    assert isinstance(adapter, TransformersAdapter)
    x = _x()
    maps, _ = _capture(adapter, x)
    ref = _eager_reference(model, x)
    assert len(maps) == len(ref) == 2
    layout = adapter.token_layout()
    assert layout.prefix_kinds == PREFIX[kind]
    for a, r in zip(maps, ref):
        assert a.shape == (2, 2, layout.num_tokens, layout.num_tokens)
        assert torch.equal(a, r)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)


def test_maps_equal_recomputation_from_q_and_k(models):
    model = models["vit"]
    adapter = adapter_for(model)
    inputs = {}

    def keep_input(i):
        def hook(_module, args):
            inputs.setdefault(i, args[0])
        return hook

    handles = [b.module.register_forward_pre_hook(keep_input(b.depth)) for b in adapter.attention_blocks()]
    try:
        maps, _ = _capture(adapter, _x())
    finally:
        for h in handles:
            h.remove()
    for b in adapter.attention_blocks():
        h = inputs[b.depth]  # [batch, token, channel], after layernorm_before
        q = b.module.q_proj(h).view(2, -1, 2, 16).transpose(1, 2)  # [batch, head, token, head_dim]
        k = b.module.k_proj(h).view(2, -1, 2, 16).transpose(1, 2)
        torch.testing.assert_close(maps[b.depth], torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "clip", "siglip_vision", "beit"])
def test_outputs_unchanged_by_capture(models, kind):
    model = models[kind]
    adapter = adapter_for(model)
    x = _x()
    with torch.no_grad():
        fast = adapter.forward(x)  # the model's own implementation (sdpa)
    _, captured = _capture(adapter, x)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        plain = TransformersAdapter(eager).forward(x)
    assert torch.equal(captured, plain)  # bit for bit the model's eager path
    torch.testing.assert_close(captured, fast, atol=1e-5, rtol=1e-5)


def test_implementation_restored_after_exit_and_exception(models):
    model = models["clip"]
    adapter = adapter_for(model)
    configs = adapter._configs()
    assert len(configs) >= 3  # the CLIP config and its text and vision configs
    before = [_get_impl(c) for c in configs]
    assert "eager" not in before
    _capture(adapter, _x())
    assert [_get_impl(c) for c in configs] == before
    with pytest.raises(RuntimeError, match="body"):
        with adapter.exact_attention([0, 1], lambda i, a: None):
            assert all(_get_impl(c) == "eager" for c in configs)
            adapter.forward(_x())
            raise RuntimeError("body")
    assert [_get_impl(c) for c in configs] == before
    assert not any(b.module._forward_hooks for b in adapter.attention_blocks())


def test_training_dropout_is_refused_not_misread():
    T = transformers
    model = T.ViTModel(T.ViTConfig(**SMALL, attention_probs_dropout_prob=0.1)).train()
    adapter = TransformersAdapter(model)
    with pytest.raises(UnsupportedModelError, match="dropout"):
        with adapter.exact_attention([0], lambda i, a: None):
            adapter.forward(_x())
    assert _get_impl(model.config) != "eager"


@pytest.mark.parametrize("kind", ["vit", "dinov2_registers", "siglip_vision", "deit_distilled"])
def test_other_input_size(models, kind):
    adapter = adapter_for(models[kind])
    layout = adapter.token_layout(48)
    assert layout.grid_size == (6, 6) and layout.input_size == (48, 48)
    maps, _ = _capture(adapter, _x(48))
    assert maps[0].shape[-1] == layout.num_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_position_table(models, kind):
    adapter = adapter_for(models[kind])
    table = adapter.position_table()
    if TABLE_PREFIX[kind] is None:
        assert table is None  # BEiT: relative position bias
        return
    assert table.patches.shape == (4, 4, 32) and table.prefix_entries == TABLE_PREFIX[kind]
    assert table.trainable
    big = adapter.position_table(48)
    assert big.patches.shape == (6, 6, 32)
    grid = table.patches.permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False,
                             antialias=kind == "dinov2_registers")[0].permute(1, 2, 0)
    torch.testing.assert_close(big.patches, expected, atol=1e-5, rtol=1e-5)


def test_block_outputs_filters_and_vision_tower_only(models):
    for kind in KINDS:
        model = models[kind]
        adapter = adapter_for(model)
        names = adapter.block_outputs()
        assert len(names) == 2 and all(model.get_submodule(n) is not None for n in names)
        assert all(model.get_submodule(b.name) is b.module for b in adapter.attention_blocks())
        assert adapter.patch_filters().shape == (32, 3, 8, 8)
    assert all(b.name.startswith("vision_model.") for b in adapter_for(models["clip"]).attention_blocks())


def test_preprocessing_defaults(models):
    p = adapter_for(models["vit"]).preprocessing()
    assert p.input_size == (32, 32) and p.mean == (0.5, 0.5, 0.5) and p.interpolation == "bilinear"
    assert p.crop_mode == "squash" and p.crop_pct == 1.0
    p = adapter_for(models["clip"]).preprocessing()
    assert p.mean == OPENAI_CLIP_MEAN and p.interpolation == "bicubic" and p.resize_shortest
    p = adapter_for(models["deit_distilled"]).preprocessing()
    assert p.mean == IMAGENET_DEFAULT_MEAN and p.crop_pct == pytest.approx(0.875)


def test_registry_cache_and_unknown_models(models):
    model = models["vit"]
    assert adapter_for(model) is adapter_for(model)
    temp = _build("vit")
    ref = weakref.ref(temp)
    adapter_for(temp)
    del temp
    gc.collect()
    assert ref() is None  # the cache keeps no model alive
    with pytest.raises(UnsupportedModelError, match="Linear.*transformers"):
        adapter_for(torch.nn.Linear(2, 2))
    pvt = transformers.PvtModel(transformers.PvtConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1]))
    with pytest.raises(UnsupportedModelError, match="pvt"):
        adapter_for(pvt).attention_blocks()


def test_load_local_directory(models, tmp_path):
    model = models["vit"]
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
        "do_normalize": True, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    loaded = load_by_prefix(f"hf:{tmp_path}", device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.vitlens_source["weights"].startswith("local:")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(adapter_for(loaded).forward(x), adapter_for(model).forward(x))
    p = adapter_for(loaded).preprocessing()
    assert p.mean == (0.1, 0.2, 0.3) and p.interpolation == "bicubic" and p.input_size == (32, 32)
    assert p.crop_pct == pytest.approx(32 / 40) and p.resize_shortest and p.crop_mode == "center"
    assert load_by_prefix("vit_tiny_patch16_224") is None  # plain timm names are not the registry's


def test_uncached_hub_name_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="no local copy is cached"):
        load_by_prefix("hf:vitlens-test/no-such-model-anywhere")
    assert time.monotonic() - t < 10
