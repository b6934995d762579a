"""Every analysis on every family, through the public API: tiny random-weight transformers,
torchvision and open_clip models give the same answers as the literal definitions on their own
captured maps, and a torchvision CNN takes the receptive field and the locality comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import vitlens
from vitlens.analyses.embeddings.position import cosine_similarity_grid
from vitlens.models.families.registry import adapter_for


def _hf(kind):
    from test_family_transformers import _build
    return _build(kind).eval()


def _tv():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=5).eval()


def _oc():
    from test_family_open_clip import _clip
    return _clip()


BUILDERS = {"hf-vit": lambda: _hf("vit"), "hf-deit-distilled": lambda: _hf("deit_distilled"),
            "hf-dinov2-registers": lambda: _hf("dinov2_registers"), "hf-siglip": lambda: _hf("siglip_vision"),
            "hf-clip": lambda: _hf("clip"), "torchvision-vit": _tv, "open_clip-vit": _oc}
CLASSIFIERS = {"hf-vit", "hf-deit-distilled", "torchvision-vit"}


@pytest.fixture(scope="module", params=list(BUILDERS))
def family_model(request, one_thread):
    return request.param, BUILDERS[request.param]()


def _x(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_distance_equals_the_definition_on_the_captured_maps(family_model):
    kind, model = family_model
    x = _x()
    layout = vitlens.token_layout(model)
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        adapter_for(model).forward(x)
    assert len(cap.maps) == len(adapter_for(model).attention_blocks())
    centres = layout.patch_centers()
    dist = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    p = layout.patch_slice
    want = []
    for a in cap.maps:  # literal: renormalise the patch block, weight by distance, mean over queries
        a = a.double().numpy()[..., p, p]
        want.append(((a / a.sum(-1, keepdims=True)) * dist).sum(-1).mean(-1).mean(0))
    got = vitlens.attention_distance(model, x, batch_size=1)
    np.testing.assert_allclose(got.distance, np.stack(want), rtol=1e-5)
    assert got.layer_names == tuple(cap.names)


def test_rollout_both_methods_and_posembed(family_model):
    kind, model = family_model
    x = _x()
    layout = vitlens.token_layout(model)
    plain = vitlens.attention_rollout(model, x)
    assert plain.maps.shape == (2, *layout.grid_size) and (plain.maps >= 0).all()
    if kind in CLASSIFIERS:
        grad = vitlens.attention_rollout(model, x, method="grad-rollout", target_class=[0, 1])
        assert grad.target.tolist() == [0, 1] and np.isfinite(grad.maps).all()
    table = adapter_for(model).position_table()
    pos = vitlens.position_embedding_similarity(model)
    np.testing.assert_allclose(pos.similarity, cosine_similarity_grid(table.patches.double().numpy()), atol=1e-6)


def test_receptive_field_and_locality(family_model):
    kind, model = family_model
    x = _x(1)
    erf = vitlens.effective_receptive_field(model, x)
    assert erf.layers == tuple(adapter_for(model).block_outputs()) and np.isfinite(erf.spread_px).all()
    dist = vitlens.attention_distance(model, x)
    frame = vitlens.Locality((dist,), (erf,)).to_frame()
    assert set(frame.kind) == {"vit"} and frame.value_px.notna().all()


def test_torchvision_cnn_receptive_field_grows_and_attention_is_refused():
    torch.manual_seed(0)
    cnn = torchvision.models.resnet18(num_classes=5).eval()
    erf = vitlens.effective_receptive_field(cnn, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert erf.layers == ("maxpool", "layer1", "layer2", "layer3", "layer4")
    assert erf.theoretical_px[-1] > erf.theoretical_px[0]
    with pytest.raises(vitlens.UnsupportedModelError, match="convolutional"):
        vitlens.attention_distance(cnn, torch.randn(1, 3, 64, 64))


def test_images_use_the_family_preprocessing(tmp_path):
    from PIL import Image

    from vitlens.data.images import ImageSet

    Image.fromarray((np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    model = _hf("vit")
    p = adapter_for(model).preprocessing()
    imgs = ImageSet.for_model(model, [tmp_path])
    (x, idx), = list(imgs.batches(4))
    assert tuple(x.shape) == (1, 3, *p.input_size) and idx == [0]
    got = vitlens.attention_distance(model, imgs)
    assert got.n_images == 1


@pytest.mark.parametrize("kind", ["hf-vit", "hf-deit-distilled", "hf-siglip", "torchvision-vit", "open_clip-vit"])
def test_cost_counts_every_familys_attention_products(kind, one_thread):
    from vitlens.analyses.cost import cost_profile

    model = BUILDERS[kind]()
    layout = vitlens.token_layout(model)
    blocks = adapter_for(model).attention_blocks()
    frame = cost_profile(model, [32], measure_memory=False, measure_throughput=False).to_frame()
    got = frame[(frame.quantity == "flops") & (frame.part == "attention")].value.item()
    n, d = layout.num_tokens, 32  # width 32 in every tiny model here
    assert got == len(blocks) * 2 * (2 * n * n * d)  # q k^T and attention x v, per block
    # the image tower only (what the FLOPs measure): a CLIP model's text tower is not counted
    tower = ([model.vision_model, model.visual_projection] if kind == "hf-clip" else
             [model.visual] if kind == "open_clip-vit" else [model])
    assert frame[(frame.quantity == "parameters") & (frame.part == "total")].value.item() == \
        sum(p.numel() for t in tower for p in t.parameters())
    assert torch.backends.mha.get_fastpath_enabled()  # torch's setting is back

