"""Spatial localisation: every (token, input patch) CKA against its definition computed pair by
pair, the summary and panel in closed form, minibatches, and the command (one and two processes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torchvision
import transformers as T
from cli_runs import run, torchrun
from conftest import batch, build
from PIL import Image
from reference import minibatch_cka_literal

from vitlens import Localization, spatial_localization
from vitlens.analyses.representations.localization import panel_tokens, summarise
from vitlens.models.families.registry import adapter_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _output(model, module, forward, x):
    """The output of ``module`` for ``x`` (the test's own hook)."""
    got = {}

    def keep(_module, _args, out):
        got["y"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

    h = module.register_forward_hook(keep)
    try:
        with torch.no_grad():
            forward(x)
    finally:
        h.remove()
    return got["y"]


def _literal(tokens, pixels, cell, grid, batch_size):
    """CKA of every (token position, input cell) pair, one pair at a time, from the definition:
    ``tokens`` ``[n, gh, gw, dim]``, ``pixels`` ``[n, 3, H, W]``."""
    gh, gw = grid
    ch, cw = cell
    n = tokens.shape[0] // batch_size * batch_size
    out = np.zeros((gh, gw, gh, gw))
    for i in range(gh):
        for j in range(gw):
            a = [tokens[s:s + batch_size, i, j].numpy() for s in range(0, n, batch_size)]
            for k in range(gh):
                for l in range(gw):
                    patch = pixels[:, :, k * ch:(k + 1) * ch, l * cw:(l + 1) * cw].reshape(pixels.shape[0], -1)
                    b = [patch[s:s + batch_size].numpy() for s in range(0, n, batch_size)]
                    out[i, j, k, l] = minibatch_cka_literal(a, b)
    return out


@pytest.mark.parametrize("family", ["vit", "gap_no_cls", "deit_distilled"])
def test_timm_vit_tokens_against_the_definition(family):
    m = build(family)
    x = batch(family, 9)
    prefix = adapter_for(m).token_layout().num_prefix_tokens
    y = _output(m, m.blocks[-1], m, x)[:, prefix:].reshape(9, 4, 4, -1)
    r = spatial_localization(m, x, batch_size=4)
    np.testing.assert_allclose(r.cka, _literal(y, x, (8, 8), (4, 4), 4), rtol=1e-6, atol=1e-9)
    assert (r.kind, r.layer, r.grid, r.cell, r.depth_fraction) == ("vit", "blocks.1", (4, 4), (8, 8), 1.0)
    assert (r.n_images, r.n_batches, r.n_batches_dropped, r.n_images_dropped) == (8, 2, 1, 1)


def test_a_chosen_block_and_another_minibatch():
    m = build("vit")
    x = batch("vit", 10)
    y = _output(m, m.blocks[0], m, x)[:, 1:].reshape(10, 4, 4, -1)
    r = spatial_localization(m, x, layer="blocks.0", batch_size=5)
    np.testing.assert_allclose(r.cka, _literal(y, x, (8, 8), (4, 4), 5), rtol=1e-6, atol=1e-9)
    assert r.depth_fraction == 0.0 and r.n_batches == 2


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_cnn_positions_map_to_input_cells_of_the_stride(lib):
    torch.manual_seed(0)
    m = (timm.create_model("resnet18", num_classes=4) if lib == "timm"
         else torchvision.models.resnet18(num_classes=4)).eval()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = _output(m, m.layer3, m, x).permute(0, 2, 3, 1)               # [n, 4, 4, channel]
    r = spatial_localization(m, x, layer="layer3", batch_size=4)
    assert (r.kind, r.grid, r.cell) == ("cnn", (4, 4), (16, 16))
    np.testing.assert_allclose(r.cka, _literal(y, x, (16, 16), (4, 4), 4), rtol=1e-6, atol=1e-9)
    assert spatial_localization(m, x, batch_size=4).layer == "layer4"


def test_other_families_last_block():
    torch.manual_seed(0)
    hf = T.CLIPVisionModel(T.CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, image_size=32, patch_size=8)).eval()
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, num_classes=5).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hf_last = [mod for _, mod in adapter_for(hf)._named("hidden_states")][-1]
    for m, block in ((hf, hf_last), (tv, tv.encoder.layers[1])):
        y = _output(m, block, adapter_for(m).forward, x)[:, 1:].reshape(8, 4, 4, -1)
        r = spatial_localization(m, x, batch_size=4)
        np.testing.assert_allclose(r.cka, _literal(y, x, (8, 8), (4, 4), 4), rtol=1e-6, atol=1e-9)


def test_summary_and_panel_in_closed_form():
    cka = np.full((3, 3, 3, 3), 0.2)
    for i in range(3):
        for j in range(3):
            cka[i, j, i, j] = 0.9
    cka[0, 0, 0, 0] = 0.1                                              # one token best elsewhere
    s = summarise(cka)
    assert s["own_patch_share"] == pytest.approx(8 / 9)
    assert s["cka_own"] == pytest.approx((8 * 0.9 + 0.1) / 9)
    assert s["cka_other"] == pytest.approx(0.2)
    cka[1, 1] = np.nan                                                 # a constant token: left out
    assert summarise(cka)["own_patch_share"] == pytest.approx(7 / 8)
    assert panel_tokens((7, 7)) == ((0, 0), (2, 1), (4, 2), (4, 4))
    assert panel_tokens((14, 14)) == ((0, 0), (4, 2), (9, 4), (9, 9))
    assert panel_tokens((13, 13)) == ((0, 0), (4, 2), (8, 4), (8, 8))


def test_result_is_frozen_and_the_model_untouched():
    m = build("vit").train()
    r = spatial_localization(m, batch("vit", 4), batch_size=4)
    assert isinstance(r, Localization) and r.cka.shape == (4, 4, 4, 4)
    with pytest.raises(ValueError):
        r.cka[0, 0, 0, 0] = 1.0
    assert all(mod.training for mod in m.modules())
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    f = r.to_frame()
    assert len(f) == 1 and f.own_patch_share.item() == r.own_patch_share
    assert len(r.pairs_frame()) == 256
    from vitlens.plotting.localization import localization_figure

    ax = r.plot(token=(1, 2))
    np.testing.assert_allclose(ax.images[0].get_array(), r.cka[1, 2])
    assert len([a for a in localization_figure([r, r]).axes if a.images]) == 2 * len(r.panel)
    with pytest.raises(ValueError, match="at least 4"):
        spatial_localization(m, batch("vit", 4), batch_size=3)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("loc_imgs")
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


def _args(images, out, *models, batch_size=4):
    argv = ["localization", "--random-init", "--images", str(images), "--out", str(out), "--batch-size",
            str(batch_size)]
    for m in models:
        argv += ["--model", m]
    return argv


def test_command_writes_the_files(tmp_path, images):
    out = tmp_path / "loc"
    assert run(_args(images, out, "vit_tiny_patch16_224", "resnet18")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["localization.csv", "localization.npy", "localization.npz",
                                                     "localization.png", "localization.svg", "run.json"]
    assert np.load(out / "localization.npy").shape == (14, 14, 14, 14)
    z = np.load(out / "localization.npz")
    assert z["m1_cka"].shape == (7, 7, 7, 7)
    np.testing.assert_array_equal(z["m0_cka"], np.load(out / "localization.npy"))
    f = pd.read_csv(out / "localization.csv")
    assert list(f.kind) == ["vit", "cnn"] and list(f.layer) == ["blocks.11", "layer4"]
    assert (f.n_images == 8).all() and (f.n_batches == 2).all()
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "localization" and rec["models"][1]["cell"] == [32, 32]
    assert run(_args(images, tmp_path / "bad", "resnet18", batch_size=3)) == 2


def test_two_processes_give_the_one_process_result(tmp_path, images):
    torchrun(_args(images, tmp_path / "two", "resnet18"))
    assert run(_args(images, tmp_path / "one", "resnet18")) == 0
    np.testing.assert_allclose(np.load(tmp_path / "two" / "localization.npy"),
                               np.load(tmp_path / "one" / "localization.npy"), rtol=1e-6, atol=1e-9)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
