"""What every analysis leaves on a model and in the process: nothing. And the bugs of per-image
inputs, streams, seeds, names, register tokens, map order, train mode and bf16 row sums."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import timm
import torch
from conftest import batch, build
from PIL import Image

import vitlens
from vitlens.analyses.attention.distance import DistanceAccumulator, uniform_distance
from vitlens.analyses.attention.streaming import new_accumulator, stream_distance
from vitlens.capture.attention import attention_modules
from vitlens.data.images import ImageSet
from vitlens.jobs.common import load_models
from vitlens.models.tokens import TokenLayout

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _state(model: torch.nn.Module):
    """Everything an analysis could leave behind on a model."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    flags = tuple(getattr(m, "fused_attn", None) for m in model.modules())
    modes = tuple(m.training for m in model.modules())
    grads = tuple(p.grad is None for p in model.parameters())
    return hooks, flags, modes, grads


def _write(folder, names, corrupt=()):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        if n in corrupt:
            (folder / n).write_bytes(b"not an image")
        else:
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(folder / n)


# --------------------------------------------------------------------------- per-image inputs


def test_per_image_targets_follow_their_files_after_a_skipped_file(tmp_path):
    """Files a, b (corrupt), c, d with targets [0, 1, 2, 3] are explained with [0, 2, 3]."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=4, **TINY).eval()
    _write(tmp_path, ["a.png", "b.png", "c.png", "d.png"], corrupt={"b.png"})
    images = ImageSet.for_model(model, [tmp_path], input_size=32)
    with pytest.warns(UserWarning, match="skipped"):
        got = vitlens.attention_rollout(model, images, method="grad-rollout", target_class=[0, 1, 2, 3],
                                        batch_size=2)
    assert got.names == ("a.png", "c.png", "d.png")
    assert got.indices == (0, 2, 3)
    assert got.target.tolist() == [0, 2, 3]
    alone = vitlens.attention_rollout(model, ImageSet.for_model(model, [tmp_path / "c.png"], input_size=32),
                                      method="grad-rollout", target_class=2)
    np.testing.assert_allclose(got.maps[1], alone.maps[0], rtol=1e-5, atol=1e-8)


def test_target_count_must_match_the_images():
    model = build("vit")
    with pytest.raises(vitlens.VitlensError, match="2 target classes given for 3 images"):
        vitlens.attention_rollout(model, batch("vit", n=3), method="grad-rollout", target_class=[0, 1])


# --------------------------------------------------------------------------- nothing left behind


def test_stream_distance_leaves_nothing_on_the_model_between_batches():
    model = build("vit")
    x, other = batch("vit", n=2), batch("vit", n=3, seed=7)
    before = _state(model)
    acc = new_accumulator(model)
    stream = stream_distance(model, x, acc, batch_size=1)
    assert next(stream) == [0]
    assert _state(model) == before  # no hook, flag or mode while the caller holds control
    model(other)  # the caller's own forward pass is not counted
    assert list(stream) == [[1]]
    got = acc.result()
    assert got.n_images == 2
    np.testing.assert_allclose(got.distance, vitlens.attention_distance(model, x).distance, rtol=1e-6)


ANALYSES = {
    "distance": lambda m, x: vitlens.attention_distance(m, x),
    "rollout": lambda m, x: vitlens.attention_rollout(m, x),
    "grad-rollout": lambda m, x: vitlens.attention_rollout(m, x, method="grad-rollout"),
    "erf": lambda m, x: vitlens.effective_receptive_field(m, x),
    "posembed": lambda m, x: vitlens.position_embedding_similarity(m),
}


@pytest.mark.parametrize("analysis", list(ANALYSES))
def test_no_analysis_leaves_state_behind(analysis):
    """Hooks, fused-attention flags, every module's mode, parameter grads, the global RNGs and the
    warning filters are as they were, after a call that succeeds and after one that raises."""
    model = build("vit")
    model.blocks[1].train()  # a mixed mode must come back exactly
    x = batch("vit", n=2)
    before = _state(model)
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    filters = list(warnings.filters)
    ANALYSES[analysis](model, x)
    assert _state(model) == before
    assert torch.equal(torch.get_rng_state(), rng[0])
    assert np.array_equal(np.random.get_state()[1], rng[1]) and random.getstate() == rng[2]
    assert warnings.filters == filters
    if analysis != "posembed":
        with pytest.raises(ValueError):
            ANALYSES[analysis](model, torch.randn(2, 3, 32))  # not [image, 3, height, width]
        assert _state(model) == before


def test_loading_random_models_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    (a,) = load_models([("vitlens/vit-tiny-shapes", None)], random_init=True, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    (b,) = load_models([("vitlens/vit-tiny-shapes", None)], random_init=True, seed=3)
    (c,) = load_models([("vitlens/vit-tiny-shapes", None)], random_init=True, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# --------------------------------------------------------------------------- train mode


def test_train_mode_gives_the_eval_results_and_is_restored():
    """Dropout, attention dropout and drop-path would make every map random: each analysis runs
    the model in eval mode inside the call and hands it back in training mode."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", drop_rate=0.5, attn_drop_rate=0.5,
                              drop_path_rate=0.5, **TINY)
    x = batch("vit", n=2)
    model.eval()
    want = {k: f(model, x) for k, f in ANALYSES.items() if k != "posembed"}
    model.train()
    for k, f in ANALYSES.items():
        if k == "posembed":
            continue
        got = f(model, x)
        assert all(m.training for m in model.modules())
        for field in ("distance", "maps", "spread_px"):
            if hasattr(got, field):
                np.testing.assert_allclose(getattr(got, field), getattr(want[k], field), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- names, seeds


def test_every_analysis_records_the_name_the_model_was_loaded_by():
    model = vitlens.load_model("vitlens/vit-tiny-shapes")
    x = torch.randn(2, 3, 64, 64)
    names = {k: f(model, x).model for k, f in ANALYSES.items()}
    assert set(names.values()) == {"vitlens/vit-tiny-shapes"}, names


def test_erf_random_init_honours_the_seed(tmp_path):
    from vitlens.cli import main
    from vitlens.data.shapes import save_images

    save_images(tmp_path, 2, seed=0)
    imgs = tmp_path / "images"
    runs = {}
    for seed in (0, 5):
        out = tmp_path / f"erf{seed}"
        assert main(["erf", "--model", "vitlens/vit-tiny-shapes", "--random-init", "--seed", str(seed),
                     "--images", str(imgs), "--out", str(out), "--layer", "blocks.1"]) == 0
        runs[seed] = (out / "receptive_field.csv").read_text()
    assert runs[0] != runs[5]
    (model,) = load_models([("vitlens/vit-tiny-shapes", None)], random_init=True, seed=5)
    want = vitlens.effective_receptive_field(model, ImageSet.for_model(model, [imgs]), layers=["blocks.1"])
    import pandas as pd
    got = pd.read_csv(tmp_path / "erf5" / "receptive_field.csv")
    np.testing.assert_allclose(got["spread_px"], want.spread_px, rtol=1e-5)


# --------------------------------------------------------------------------- register tokens


def test_eva_with_registers_works_in_every_attention_analysis():
    model = build("eva_registers")  # timm Eva: reg_token, no class token
    x = batch("eva_registers", n=2)
    layout = vitlens.token_layout(model)
    assert layout.prefix_kinds == ("reg",) and layout.num_tokens == 17
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    assert all(m.shape == (2, 2, 17, 17) for m in cap.maps)
    d = vitlens.attention_distance(model, x)
    assert d.distance.shape == (2, 2) and np.isfinite(d.distance).all()
    for method in ("rollout", "grad-rollout"):
        r = vitlens.attention_rollout(model, x, method=method)
        assert r.maps.shape == (2, 4, 4) and r.readout == "patch_mean"
    assert vitlens.effective_receptive_field(model, x).spread_px.shape == (2,)
    with pytest.raises(vitlens.UnsupportedModelError, match="rotary"):
        vitlens.position_embedding_similarity(model)


# --------------------------------------------------------------------------- map order


def test_maps_raise_when_layers_ran_a_different_number_of_times():
    model = build("vit")
    x = batch("vit", n=1)
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
        tokens = torch.randn(1, 17, 32)
        model.blocks[1].attn(tokens)  # block 1 runs twice, block 0 once
    with pytest.raises(vitlens.UnsupportedModelError, match="different number of times"):
        cap.maps
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        model(x)
    assert [m.shape[0] for m in cap.maps] == [1, 1] and cap.names == [n for n, _ in attention_modules(model)]


# --------------------------------------------------------------------------- bf16 row sums


def test_reduced_precision_rows_are_renormalised_before_discard():
    """Uniform attention over 65 tokens (1 prefix): 1/65 is not a bf16 number, so bf16 rows sum to
    65 * bf16(1/65) != 1. The discard distance must be the exact one, 64/65 of the patch uniform."""
    layout = TokenLayout(("cls",), (8, 8), (8.0, 8.0), (64, 64))
    n = layout.num_tokens
    attn = torch.full((1, 1, n, n), 1.0 / n, dtype=torch.bfloat16)
    assert abs(float(attn[0, 0, 0].float().sum()) - 1) > 1e-4  # the rounding the fix removes
    got = vitlens.mean_attention_distance(attn, layout, prefix_tokens="discard").item()
    assert got == pytest.approx(uniform_distance(layout) * 64 / 65, rel=1e-6)
    acc = DistanceAccumulator(layout, 1, 1, prefix_tokens="discard")
    acc.update(0, attn)
    assert acc.result().distance[0, 0] == pytest.approx(uniform_distance(layout) * 64 / 65, rel=1e-6)
