"""Token norms and high-norm tokens: literal recomputations on tiny random models of every family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAMILIES, batch, build

import vitlens
from vitlens.analyses.representations.norm_histogram import RELATIVE_BIN_WIDTH, NormHistogram
from vitlens.analyses.representations.tokens import token_norms
from vitlens.capture.attention import capture_attention
from vitlens.capture.outputs import capture_outputs
from vitlens.models.layout import token_layout
from vitlens.runtime.errors import UnsupportedModelError

# A small factor, so that random models have tokens above it; no norm may sit at the threshold.
FACTOR = 1.15


def _maps(model, x, forward=None):
    """Every block's full map ``[image, head, query, key]`` from a stored capture."""
    with torch.no_grad(), capture_attention(model) as cap:
        (forward or model)(x)
    return [m.double() for m in cap.maps]


def _rank(values, q):
    """The value of rank ceil(q n) of ``values`` (the lower median for an even count)."""
    v = np.sort(np.ravel(values))
    return v[max(int(np.ceil(q * v.size)) - 1, 0)]


def _check(result, norms, maps, layout, factor=FACTOR, attention_block="same"):
    """``result`` against literal computations from ``norms`` ``[block, image, token]`` (float64 numpy)
    and ``maps`` (one ``[image, head, query, key]`` per block)."""
    P = layout.num_prefix_tokens
    L, n = norms.shape[:2]
    patch = norms[:, :, P:]
    assert result.n_images == n and result.num_blocks == L
    for b in range(L):
        exact = _rank(patch[b], 0.5)
        assert abs(result.median[b] - exact) <= RELATIVE_BIN_WIDTH * exact
        assert result.threshold[b] == pytest.approx(factor * result.median[b], rel=1e-12)
        for k, vals in enumerate([norms[b, :, :P], patch[b]]):
            if vals.size == 0:
                assert result.hist[b, k].sum() == 0 and np.isnan(result.mean[b, k])
                continue
            assert result.hist[b, k].sum() == vals.size
            np.testing.assert_allclose([result.mean[b, k], result.min[b, k], result.max[b, k]],
                                       [vals.mean(), vals.min(), vals.max()], rtol=2e-5)
            assert result.std[b, k] == pytest.approx(vals.std(), abs=1e-5 * vals.mean())  # float32 norms
    thr = result.threshold[:, None, None]
    margin = np.abs(patch - thr) / thr
    assert margin.min() > 2e-6, "a norm sits at the threshold (within float32 rounding): choose another factor"
    marks = patch > thr                                                   # [block, image, patch]
    assert marks.any() and not marks.all()
    gh, gw = layout.grid_size
    np.testing.assert_array_equal(result.positions, marks.sum(1).reshape(L, gh, gw))
    for b in range(L):
        np.testing.assert_array_equal(result.images_per_count[b],
                                      np.bincount(marks[b].sum(1), minlength=layout.num_patches + 1))
    np.testing.assert_allclose(result.high_norm_share, marks.mean((1, 2)))
    np.testing.assert_allclose(result.high_norm_per_image, marks.sum(2).mean(1))
    c = layout.class_token_index
    for b in range(L):
        a = b if attention_block == "same" else b + 1
        if a >= L:
            assert np.isnan(result.cls_attention[b]).all() and np.isnan(result.patch_attention[b]).all()
            continue
        A = maps[a].numpy()
        m = marks[b][:, None, None, :]                                    # [image, 1, 1, patch]
        to_marked = (A[..., P:] * m).sum(-1)                              # [image, head, query]
        np.testing.assert_allclose(result.patch_attention[b], to_marked[:, :, P:].mean(-1).mean(0), atol=1e-6)
        if c is None:
            assert np.isnan(result.cls_attention[b]).all()
        else:
            np.testing.assert_allclose(result.cls_attention[b], to_marked[:, :, c].mean(0), atol=1e-6)


def _factor(norms, layout):
    """A factor that marks some patch tokens of every block (half-way, in ratio, from the median to
    the block's largest norm, for the block where that is least)."""
    patch = norms[:, :, layout.num_prefix_tokens:].reshape(norms.shape[0], -1)
    ratio = (patch.max(1) / np.median(patch, axis=1)).min()
    return float(1 + 0.5 * (ratio - 1))


def _timm_norms(model, x):
    """``[block, image, token]`` norms from timm's own ``forward_intermediates``, prefix tokens first."""
    with torch.no_grad():
        out = model.forward_intermediates(x, return_prefix_tokens=True, norm=False, output_fmt="NLC",
                                          intermediates_only=True)
    blocks = []
    for o in out:
        tokens = torch.cat([o[1], o[0]], 1) if isinstance(o, tuple) else o
        blocks.append(tokens.double().norm(dim=-1))
    return torch.stack(blocks).numpy()


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_timm_families_against_forward_intermediates(fam, one_thread):
    model, x = build(fam), batch(fam, n=3)
    layout = token_layout(model, tuple(x.shape[-2:]))
    norms = _timm_norms(model, x)
    factor = _factor(norms, layout)
    r = token_norms(model, x, norm_factor=factor, batch_size=2)
    _check(r, norms, _maps(model, x), layout, factor)
    frame = r.to_frame()
    kinds = ["prefix", "patch"] if layout.num_prefix_tokens else ["patch"]
    assert list(frame.token_kind) == kinds * r.num_blocks
    assert frame.loc[frame.token_kind == "patch", "threshold"].notna().all()
    assert frame.loc[frame.token_kind == "prefix", "threshold"].isna().all()
    assert frame.cls_attention_to_high_norm.notna().any() == layout.has_class_token


def test_next_block_reads_the_following_attention(one_thread):
    model, x = build("vit"), batch("vit", n=3)
    r = token_norms(model, x, norm_factor=FACTOR, attention_block="next")
    _check(r, _timm_norms(model, x), _maps(model, x), token_layout(model), attention_block="next")
    assert r.to_dict()["attention_block"] == "next"


def test_registers_are_prefix_tokens(one_thread):
    model, x = build("dinov2_registers"), batch("dinov2_registers", n=2)
    r = token_norms(model, x, norm_factor=FACTOR)
    assert r.layout.prefix_kinds == ("cls", "reg", "reg", "reg", "reg")
    frame = r.to_frame()
    prefix = frame[frame.token_kind == "prefix"]
    assert (prefix.n_tokens == 2 * 5).all() and (prefix.tokens_per_image == 5).all()
    assert (frame[frame.token_kind == "patch"].n_tokens == 2 * 16).all()
    norms = _timm_norms(model, x)
    np.testing.assert_allclose(r.max[:, 0], norms[:, :, :5].max((1, 2)), rtol=2e-5)


def _plant(model, block: int, token: int, scale: float):
    def hook(_m, _inp, out):
        out = out.clone()
        out[:, token] *= scale
        return out
    return model.blocks[block].register_forward_hook(hook)


def test_a_planted_high_norm_token_is_found_where_it_is(one_thread):
    model, x = build("vit"), batch("vit", n=4)
    layout = token_layout(model)
    patch = 6                                                              # grid (1, 2) of 4 x 4
    handle = _plant(model, 0, layout.num_prefix_tokens + patch, 40.0)
    try:
        r = token_norms(model, x, attention_block="next")                 # default factor
        maps = _maps(model, x)
    finally:
        handle.remove()
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[1, 2] = 4
    np.testing.assert_array_equal(r.positions[0], expected)
    assert r.images_per_count[0, 1] == 4 and r.high_norm_per_image[0] == 1.0
    assert r.high_norm_share[0] == pytest.approx(1 / 16)
    # block 1 reads the planted token as a key: its class row's mass on it, per head
    k = layout.num_prefix_tokens + patch
    np.testing.assert_allclose(r.cls_attention[0], maps[1][:, :, 0, k].mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(r.patch_attention[0], maps[1][:, :, layout.num_prefix_tokens:, k].mean((0, 2)).numpy(),
                               atol=1e-6)
    assert np.isnan(r.cls_attention[1]).all()                             # no block after the last
    assert not model.blocks[0]._forward_hooks


def test_results_do_not_depend_on_the_batch_size(one_thread):
    model, x = build("deit_distilled"), batch("deit_distilled", n=5)
    a = token_norms(model, x, norm_factor=FACTOR, batch_size=5)
    b = token_norms(model, x, norm_factor=FACTOR, batch_size=2)
    np.testing.assert_array_equal(a.hist, b.hist)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.cls_attention, b.cls_attention, atol=1e-7)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)


def test_model_is_left_as_it_was_and_arrays_are_read_only(one_thread):
    model, x = build("vit").train(), batch("vit", n=2)
    fused = [blk.attn.fused_attn for blk in model.blocks]
    r = token_norms(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    for name in ("hist", "positions", "cls_attention", "threshold", "images_per_count"):
        with pytest.raises(ValueError):
            getattr(r, name).flat[0] = 0
    assert "median" in r.rule and r.to_dict()["high_norm_rule"] == r.rule


def test_bad_models_and_arguments_are_refused():
    import timm

    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=8,
                             depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=3).eval()
    with pytest.raises(UnsupportedModelError, match="windowed"):
        token_norms(swin, torch.zeros(1, 3, 56, 56))
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    with pytest.raises(UnsupportedModelError):
        token_norms(cnn, torch.zeros(1, 3, 32, 32))
    model = build("vit")
    with pytest.raises(ValueError, match="norm_factor"):
        token_norms(model, batch("vit"), norm_factor=0)
    with pytest.raises(ValueError, match="attention_block"):
        token_norms(model, batch("vit"), attention_block="previous")


# --------------------------------------------------------------------------- other libraries

def _hooked_norms(model, names, run, x, tokens=lambda t: t):
    """``[block, image, token]`` norms from plain forward hooks on the block modules."""
    seen = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: seen.setdefault(n, (o[0] if isinstance(o, tuple) else o).detach())) for n in names]
    try:
        with torch.no_grad():
            run(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([tokens(seen[n]).double().norm(dim=-1) for n in names]).numpy()


def _hf(kind):
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                 patch_size=8)
    torch.manual_seed(0)
    if kind == "vit":
        return T.ViTModel(T.ViTConfig(**small)).eval()
    if kind == "dinov2_registers":
        return T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**small, num_register_tokens=2)).eval()
    return T.SiglipVisionModel(T.SiglipVisionConfig(**small)).eval()


@pytest.mark.parametrize("kind", ["vit", "dinov2_registers", "siglip"])
def test_transformers_against_hidden_states(kind, one_thread):
    model = _hf(kind)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layout = token_layout(model)
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states[1:]   # each layer's output
    norms = torch.stack([h.double().norm(dim=-1) for h in hidden]).numpy()
    factor = _factor(norms, layout)
    r = token_norms(model, x, norm_factor=factor)
    adapter = vitlens.models.families.registry.adapter_for(model)
    _check(r, norms, _maps(model, x, adapter.forward), layout, factor)
    assert np.isnan(r.cls_attention).all() == (kind == "siglip")


def test_torchvision_against_manual_block_stepping(one_thread):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model._process_input(x)
        t = torch.cat([model.class_token.expand(t.shape[0], -1, -1), t], 1) + model.encoder.pos_embedding
        norms = []
        for layer in model.encoder.layers:
            t = layer(t)
            norms.append(t.double().norm(dim=-1))
    norms = torch.stack(norms).numpy()
    factor = _factor(norms, token_layout(model))
    r = token_norms(model, x, norm_factor=factor)
    _check(r, norms, _maps(model, x), token_layout(model), factor)


def test_open_clip_against_manual_block_stepping(one_thread):
    import open_clip

    torch.manual_seed(0)
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=text).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    v = model.visual
    names = [f"visual.transformer.resblocks.{i}" for i in range(2)]
    norms = _hooked_norms(model, names, model.encode_image, x)
    with torch.no_grad():                                                 # and by stepping the blocks by hand
        t = v._embeds(x)
        for i, blk in enumerate(v.transformer.resblocks):
            t = blk(t)
            np.testing.assert_allclose(t.double().norm(dim=-1).numpy(), norms[i], rtol=1e-6)
    factor = _factor(norms, token_layout(model))
    r = token_norms(model, x, norm_factor=factor)
    _check(r, norms, _maps(model, x, model.encode_image), token_layout(model), factor)


# --------------------------------------------------------------------------- pieces

def test_norm_histogram_quantiles_and_moments():
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.lognormal(0, 1, 5000), [0.0, 5e-7, 2e8]])
    h = NormHistogram((2,))
    for chunk in np.array_split(vals, 7):
        h.add((0,), torch.as_tensor(chunk))
    assert h.count[0] == vals.size and h.hist[0].sum() == vals.size and h.count[1] == 0
    assert h.hist[0, 0] == 2 and h.hist[0, -1] == 1                       # [0, 1e-6) and [1e8, inf)
    np.testing.assert_allclose([h.mean()[0], h.std()[0], h.min[0], h.max[0]],
                               [vals.mean(), vals.std(), 0.0, 2e8], rtol=1e-9)
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        exact = _rank(vals, q)
        assert abs(h.quantile(q)[0] - exact) <= RELATIVE_BIN_WIDTH * exact
    assert np.isnan(h.quantile(0.5)[1])
    assert h.quantile(1.0)[0] == 2e8 and h.quantile(0.0)[0] == 0.0


def test_output_capture_callback_keeps_nothing(tiny_vit):
    x = batch("vit")
    seen = {}
    with torch.no_grad(), capture_outputs(tiny_vit, ["blocks.0", "blocks.1"]) as cap:
        stored = {k: v.clone() for k, v in cap.run(x).items()}
    with torch.no_grad(), capture_outputs(tiny_vit, ["blocks.0", "blocks.1"],
                                          callback=lambda n, o: seen.setdefault(n, o.clone())) as cap:
        assert cap.run(x) == {} and cap.order == ["blocks.0", "blocks.1"]
    for k in stored:
        torch.testing.assert_close(seen[k], stored[k])


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("token_imgs")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (d / "bad.png").write_text("not a png")
    return d


def test_command_writes_the_files_and_equals_the_function(tmp_path, images, one_thread):
    from cli_runs import run

    from vitlens.data import ImageSet

    out = tmp_path / "tok"
    argv = ["tokens", "--model", "vitlens/vit-tiny-shapes", "--images", str(images), "--out", str(out),
            "--batch-size", "2", "--norm-factor", "1.2", "--figure-block", "1", "--figure-block", "3"]
    assert run(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tokens.csv", "tokens.npz", "token_norms.png", "token_norms.svg", "high_norm_positions.png",
         "high_norm_positions.svg", "run.json"])
    import pandas as pd

    frame = pd.read_csv(out / "tokens.csv")
    for col in ("model", "block", "depth_fraction", "token_kind", "norm_median", "threshold", "high_norm_share",
                "high_norm_per_image", "cls_attention_to_high_norm", "patch_attention_to_high_norm", "n_images"):
        assert col in frame.columns, col
    assert (frame.n_images == 5).all() and set(frame.token_kind) == {"prefix", "patch"}
    model = vitlens.load_model("vitlens/vit-tiny-shapes")
    ref = token_norms(model, ImageSet.for_model(model, [images]), norm_factor=1.2, batch_size=2)
    z = np.load(out / "tokens.npz")
    np.testing.assert_array_equal(z["m0_positions"], ref.positions)
    np.testing.assert_allclose(z["m0_cls_attention"], ref.cls_attention, atol=1e-7)
    patch = frame[frame.token_kind == "patch"]
    np.testing.assert_allclose(patch.threshold, ref.threshold, rtol=1e-5)
    np.testing.assert_allclose(patch.high_norm_share, ref.high_norm_share, rtol=1e-5)
    rec = json.loads((out / "run.json").read_text())
    assert "1.2 times the median" in rec["high_norm_rule"]
    assert rec["models"][0]["n_images"] == 5 and len(rec["models"][0]["images"]["skipped"]) == 1
    assert run(argv) == 2                                                  # results there: --overwrite needed


@pytest.mark.parametrize("extra, needle", [(["--norm-factor", "0"], "--norm-factor"),
                                           (["--figure-block", "0"], "--figure-block"),
                                           (["--figure-block", "99"], "beyond")])
def test_command_refuses_bad_values(tmp_path, images, capsys, extra, needle):
    from cli_runs import run

    argv = ["tokens", "--model", "vitlens/vit-tiny-shapes", "--images", str(images), "--out", str(tmp_path / "o"),
            *extra]
    assert run(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o" / "tokens.csv").exists()


def test_figures_draw_every_block_also_with_norms_beyond_the_bins(one_thread):
    import matplotlib.pyplot as plt

    from vitlens.plotting.tokens import high_norm_positions_figure, plot_norm_histogram, token_norms_figure

    model, x = build("vit"), batch("vit", n=2)

    def hook(_m, _inp, out):                                              # a norm in the last finite bins
        out = out.clone()
        out[:, 3] *= 9.9e7 / out[:, 3].norm(dim=-1, keepdim=True)
        return out

    handle = model.blocks[0].register_forward_hook(hook)
    try:
        r = token_norms(model, x)
    finally:
        handle.remove()
    assert r.hist[0, 1, -30:-1].sum() == 2 and r.positions[0].sum() == 2
    ax = plot_norm_histogram(r, block=0)
    assert ax.get_xscale() == "log" and np.isfinite(ax.get_xlim()).all()
    assert "block 1" in ax.get_title()
    assert "token norms" in r._repr_html_() and "<img" in r._repr_html_()
    figs = [token_norms_figure([r, r], blocks=[0, 1]), high_norm_positions_figure([r])]
    assert figs[0].axes[0].get_xscale() == "log" and len(figs[0].axes) == 4
    for f in [ax.figure, *figs]:
        plt.close(f)


def test_reduced_precision_forward_keeps_float32_reductions(one_thread):
    model, x = build("vit"), batch("vit", n=3)
    full = token_norms(model, x)
    half = token_norms(model, x, precision="bf16")
    np.testing.assert_allclose(half.threshold, full.threshold, rtol=0.03)
    assert half.mean.dtype == np.float64 and half.n_nonfinite == 0
    with pytest.raises(ValueError, match="precision"):
        token_norms(model, x, precision="fp8")
