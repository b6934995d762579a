"""Random-weight baselines: residual branches are made active, what was done is recorded, and a
model whose branches are silent is warned about."""

from __future__ import annotations

import json
import warnings

import pytest
import timm
import torch

from vitlens.analyses.fields.effective import effective_receptive_field
from vitlens.jobs.common import load_models, model_record
from vitlens.models.baselines import activate_residual_branches, silence_warning, silent_residual_branches


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _timm_default(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


def test_random_resnet_receptive_field_grows_with_depth(one_thread):
    [m] = load_models([("resnet18", None)], random_init=True)
    assert not any(silent_residual_branches(m).values())
    rec = model_record(m)["initialisation"]
    assert len(rec["zero_norm_scales_set_to_1"]) == 8 and "layer1.0.bn2.weight" in rec["zero_norm_scales_set_to_1"]
    assert "residual branches made active" in rec["initialisation"]
    json.dumps(rec)
    fixed = effective_receptive_field(m, _images()).spread_px
    silent = effective_receptive_field(_timm_default("resnet18"), _images()).spread_px
    assert all(b > a for a, b in zip(fixed[:-1], fixed[1:]))          # every stage looks farther
    assert fixed[-1] > 4 * fixed[0] and fixed[-1] > 3 * silent[-1]
    assert silent[-1] - silent[1] < 1.0                                 # timm's own init: it never grows


def test_random_convnext_receptive_field_grows_with_depth(one_thread):
    [m] = load_models([("convnext_atto", None)], random_init=True)
    rec = m.vitlens_initialisation
    assert rec["layer_scales_set_to_1"] and all(s["was"] == pytest.approx(1e-6) for s in rec["layer_scales_set_to_1"])
    assert all(float(b.gamma.detach().min()) == 1.0 for s in m.stages for b in s.blocks)
    fixed = effective_receptive_field(m, _images(), objective="relu_sum").spread_px
    silent = effective_receptive_field(_timm_default("convnext_atto"), _images(), objective="relu_sum").spread_px
    assert all(b > a for a, b in zip(fixed[:-1], fixed[1:]))
    assert all(f > 1.5 * s for f, s in zip(fixed, silent))


def test_vit_keeps_timm_default_and_says_so():
    [m] = load_models([("vit_tiny_patch16_224", None)], random_init=True, img_size=32, patch_size=8, depth=2)
    rec = m.vitlens_initialisation
    assert not rec["changed"] and "baseline unchanged" in rec["initialisation"]
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), ref.state_dict().values()))


def test_other_initialisers_are_kept():
    m = _timm_default("resnet10t")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    changed = set(activate_residual_branches(m)["zero_norm_scales_set_to_1"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, torch.ones_like(v)) if k in changed else torch.equal(v, before[k]), k


def test_silent_checkpoint_is_warned_about(tmp_path):
    ckpt = tmp_path / "untrained.pth"
    torch.save(_timm_default("resnet10t").state_dict(), ckpt)
    with pytest.warns(UserWarning, match="residual branches that contribute nothing"):
        [m] = load_models([("resnet10t", str(ckpt))])
    assert "initialisation" not in model_record(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_models([("vitlens/resnet-tiny-shapes", None)])   # trained: no warning
    assert silence_warning("x", {"zero_norm_scales": [], "small_layer_scales": []}) is None
