"""The torchvision family: a tiny random VisionTransformer and ResNet, no downloads."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vitlens.models.families._mha import recompute_mha
from vitlens.models.families.registry import adapter_for, load_by_prefix
from vitlens.models.families.torchvision import CROP_SIZE, IMAGENET_MEAN, RESIZE_SIZE, TorchvisionAdapter
from vitlens.runtime.errors import ModelLoadError, UnsupportedModelError


@pytest.fixture(scope="module")
def vit(one_thread):
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=5).eval()


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _capture(adapter, x, grad=False):
    maps, inputs = {}, {}
    blocks = adapter.attention_blocks()

    def keep_query(i):
        def hook(_module, args, kwargs):
            inputs.setdefault(i, kwargs.get("query", args[0] if args else None))
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


@pytest.mark.parametrize("grad", [False, True], ids=["fast_path", "python_path"])
def test_maps_equal_recomputation_from_in_proj(vit, grad):
    adapter = adapter_for(vit)
    assert isinstance(adapter, TorchvisionAdapter)
    maps, inputs, _ = _capture(adapter, _x(), grad=grad)
    layout = adapter.token_layout()
    assert layout.prefix_kinds == ("cls",) and layout.grid_size == (4, 4)
    assert len(maps) == 2
    for b, a, q in zip(adapter.attention_blocks(), maps, inputs):
        assert a.shape == (2, 2, layout.num_tokens, layout.num_tokens)  # [batch, head, query, key]
        torch.testing.assert_close(a, recompute_mha(b.module, q.detach()), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)


def test_outputs_unchanged_and_need_weights_restored(vit):
    adapter = adapter_for(vit)
    x = _x()
    with torch.no_grad():
        before = vit(x)
    _, _, captured = _capture(adapter, x)
    torch.testing.assert_close(captured, before, atol=1e-6, rtol=1e-5)
    mha = adapter.attention_blocks()[0].module
    q = torch.randn(1, 5, 32)
    with torch.no_grad():
        # callers get what they asked for inside the context: nothing, or head-averaged weights
        with adapter.exact_attention([0], lambda i, a: None):
            none = mha(q, q, q, need_weights=False)[1]
            avg = mha(q, q, q)[1]
        ref_avg = mha(q, q, q)[1]
    assert none is None and avg.shape == (1, 5, 5)
    torch.testing.assert_close(avg, ref_avg)
    with pytest.raises(RuntimeError, match="body"):
        with adapter.exact_attention([0, 1], lambda i, a: None):
            raise RuntimeError("body")
    for b in adapter.attention_blocks():
        assert not b.module._forward_hooks and not b.module._forward_pre_hooks
    with torch.no_grad():
        assert mha(q, q, q, need_weights=False)[1] is None  # need_weights behaviour is the module's again
        assert torch.equal(vit(x), before)


def test_training_dropout_is_refused():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                             hidden_dim=32, mlp_dim=64, attention_dropout=0.1).train()
    adapter = adapter_for(m)
    with pytest.raises(UnsupportedModelError, match="dropout"):
        with adapter.exact_attention([0], lambda i, a: None):
            adapter.forward(_x())
    assert not m.encoder.layers[0].self_attention._forward_pre_hooks


def test_position_table_and_resampling(vit):
    adapter = adapter_for(vit)
    t = adapter.position_table()
    assert t.patches.shape == (4, 4, 32) and t.prefix_entries == 1 and t.trainable
    torch.testing.assert_close(t.patches.reshape(16, 32), vit.encoder.pos_embedding[0, 1:].detach())
    big = adapter.position_table(48)
    expected = F.interpolate(t.patches.permute(2, 0, 1)[None], size=(6, 6), mode="bicubic",
                             align_corners=True)[0].permute(1, 2, 0)
    torch.testing.assert_close(big.patches, expected)
    with pytest.raises(UnsupportedModelError, match="exactly 32"):
        adapter.token_layout(48)


def test_block_outputs_filters_preprocessing(vit):
    adapter = adapter_for(vit)
    assert adapter.block_outputs() == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert all(vit.get_submodule(n) is not None for n in adapter.block_outputs())
    assert adapter.patch_filters().shape == (32, 3, 8, 8)
    p = adapter.preprocessing()
    assert p.input_size == (32, 32) and p.mean == IMAGENET_MEAN and p.interpolation == "bilinear"
    assert p.crop_pct == pytest.approx(CROP_SIZE / RESIZE_SIZE) and p.resize_shortest


def test_cnn_stages_and_clear_refusal():
    cnn = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    adapter = adapter_for(cnn)
    assert adapter.block_outputs() == ["maxpool", "layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(UnsupportedModelError, match="convolutional network"):
        adapter.attention_blocks()
    with pytest.raises(UnsupportedModelError, match="convolutional network"):
        adapter.token_layout()
    assert adapter.position_table() is None and adapter.patch_filters() is None
    assert adapter.preprocessing().input_size == (224, 224)


def test_load_random_checkpoint_and_errors(tmp_path):
    m = load_by_prefix("torchvision:resnet18", pretrained=False)
    assert isinstance(m, torchvision.models.ResNet) and m.vitlens_source["weights"] == "random"
    path = tmp_path / "r18.pth"
    torch.save(m.state_dict(), path)
    again = load_by_prefix("torchvision:resnet18", checkpoint=path)
    assert torch.equal(again.fc.weight, m.fc.weight)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_by_prefix("torchvision:resnet34", checkpoint=path)
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_by_prefix("torchvision:resnet181", pretrained=False)
    with pytest.raises(ModelLoadError, match="no weights 'NOPE'"):
        load_by_prefix("torchvision:resnet18:NOPE")


def test_uncached_weights_fail_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="not reachable"):
        load_by_prefix("torchvision:vit_b_16")
    assert time.monotonic() - t < 10
