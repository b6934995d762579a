"""Skip-connection norm ratios: every family against the blocks stepped through by hand, the
closed-form cases, streaming, refusals, and the command end to end."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import open_clip
import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
import torchvision
import transformers as T
from cli_runs import run, torchrun
from conftest import batch, build
from PIL import Image
from timm.layers import StdConv2d

from vitlens import SkipRatios, UnsupportedModelError, skip_ratios
from vitlens.models.families.registry import adapter_for

pytestmark = pytest.mark.usefixtures("one_thread")

HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)


# --------------------------------------------------------------------------- literal references

def _ratio(x, f):
    """Per-token ratio ``[batch, token]`` of ``||x|| / ||f||`` over the last axis, float64."""
    return (x.double().norm(dim=-1) / f.double().norm(dim=-1)).numpy()


def _first_input(model, first_block, forward, x):
    """The stream entering the first block (read by the test's own hook)."""
    got = {}

    def keep(_module, args, kwargs):
        got.setdefault("x", (args[0] if args else next(iter(kwargs.values()))).detach().clone())

    h = first_block.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            forward(x)
    finally:
        h.remove()
    return got["x"]


def _step(blocks, x, attn_branch, mlp_branch):
    """Run the blocks by hand: ``x += f_attn(x)``, ``x += f_mlp(x)``; per-token ratios
    ``[block, sublayer, batch, token]``."""
    out = []
    with torch.no_grad():
        for blk in blocks:
            f = attn_branch(blk, x)
            r_attn = _ratio(x, f)
            x = x + f
            f = mlp_branch(blk, x)
            out.append([r_attn, _ratio(x, f)])
            x = x + f
    return np.array(out)


def _expected(per_token, prefix: int, n_tokens: int = 16):
    """``ratio [block, sublayer, kind]`` and ``token_ratio [block, sublayer, token]`` from per-token ratios."""
    kinds = ([per_token[..., :prefix]] if prefix else []) + [per_token[..., prefix:]]
    ratio = np.stack([k.mean(axis=(-1, -2)) for k in kinds], axis=-1)
    return ratio, per_token[..., :n_tokens].mean(axis=-2)


def _check(model, x, per_token, prefix, token_kinds):
    r = skip_ratios(model, x, batch_size=2)
    ratio, token = _expected(per_token, prefix)
    assert r.token_kinds == token_kinds and r.sublayers == ("attention", "mlp")
    np.testing.assert_allclose(r.ratio, ratio, rtol=1e-6)
    np.testing.assert_allclose(r.token_ratio, token, rtol=1e-6)
    assert r.n_images == x.shape[0]
    return r


def _timm_attn(blk, x):
    return blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))


def _timm_mlp(blk, x):
    return blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2_registers", "gap_no_cls", "clip"])
def test_timm_vits_equal_the_blocks_stepped_through_by_hand(family):
    m = build(family)
    if family == "dinov2_registers":        # layer scale: the branch is read after it
        for blk in m.blocks:
            blk.ls1.gamma.data.uniform_(0.5, 2.0)
            blk.ls2.gamma.data.uniform_(0.5, 2.0)
    x = batch(family, 3)
    x0 = _first_input(m, m.blocks[0], m, x)
    per_token = _step(m.blocks, x0, _timm_attn, _timm_mlp)
    prefix = adapter_for(m).token_layout().num_prefix_tokens
    r = _check(m, x, per_token, prefix, ("prefix", "patch") if prefix else ("patch",))
    assert r.kind == "vit" and r.blocks == ("blocks.0", "blocks.1")
    np.testing.assert_allclose(r.depth_fraction, [0.0, 1.0])


def test_timm_beit_reads_gamma_scaled_branches():
    m = build("beit")
    x = batch("beit", 3)
    x0 = _first_input(m, m.blocks[0], m, x)
    rel = m.rel_pos_bias() if m.rel_pos_bias is not None else None

    def attn(blk, x):
        f = blk.attn(blk.norm1(x), shared_rel_pos_bias=rel)
        return f if blk.gamma_1 is None else blk.gamma_1 * f

    def mlp(blk, x):
        f = blk.mlp(blk.norm2(x))
        return f if blk.gamma_2 is None else blk.gamma_2 * f

    _check(m, x, _step(m.blocks, x0, attn, mlp), 1, ("prefix", "patch"))


def _hf(kind):
    torch.manual_seed(0)
    return {"vit": lambda: T.ViTForImageClassification(T.ViTConfig(**HF, num_labels=5)),
            "dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**HF, layerscale_value=0.7)),
            "clip": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**HF)),
            "siglip": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**HF)),
            "beit": lambda: T.BeitForImageClassification(T.BeitConfig(**HF, layer_scale_init_value=0.3,
                                                                      num_labels=5))}[kind]().eval()


def _hf_steps(kind):
    if kind in ("vit", "beit"):
        def attn(l, x):
            f = l.attention(l.layernorm_before(x))[0]
            return f * l.lambda_1 if kind == "beit" else f

        def mlp(l, x):
            f = l.mlp(l.layernorm_after(x))
            return f * l.lambda_2 if kind == "beit" else f
    elif kind == "dinov2":
        def attn(l, x):
            return l.layer_scale1(l.attention(l.norm1(x))[0])

        def mlp(l, x):
            return l.layer_scale2(l.mlp(l.norm2(x)))
    else:
        def attn(l, x):
            return l.self_attn(l.layer_norm1(x), attention_mask=None)[0]

        def mlp(l, x):
            return l.mlp(l.layer_norm2(x))
    return attn, mlp


@pytest.mark.parametrize("kind", ["vit", "dinov2", "clip", "siglip", "beit"])
def test_transformers_vits_equal_the_layers_stepped_through_by_hand(kind):
    m = _hf(kind)
    layers = [l for _, l in adapter_for(m)._named("hidden_states")]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x0 = _first_input(m, layers[0], adapter_for(m).forward, x)
    if kind == "beit":   # BEiT's layers need the relative position bias: step them with the model's own call
        pytest.importorskip("transformers")
        per_token = _beit_steps(m, layers, x0)
    else:
        per_token = _step(layers, x0, *_hf_steps(kind))
    prefix = 0 if kind == "siglip" else 1
    _check(m, x, per_token, prefix, ("prefix", "patch") if prefix else ("patch",))


def _beit_steps(m, layers, x0):
    """BEiT: the attention branch read from the layer's attention module with the bias the layer
    itself passes (taken by the test's own hook), scaled by lambda by hand."""
    kwargs = {}
    def keep(i):
        def hook(_module, _args, kw):
            kwargs.setdefault(i, kw.get("attention_mask"))
        return hook

    hooks = [l.attention.register_forward_pre_hook(keep(i), with_kwargs=True) for i, l in enumerate(layers)]
    try:
        with torch.no_grad():
            m(pixel_values=torch.zeros(1, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    out, x = [], x0
    with torch.no_grad():
        for i, l in enumerate(layers):
            f = l.lambda_1 * l.attention(l.layernorm_before(x), attention_mask=kwargs[i])[0]
            ra = _ratio(x, f)
            x = x + f
            f = l.lambda_2 * l.mlp(l.layernorm_after(x))
            out.append([ra, _ratio(x, f)])
            x = x + f
    return np.array(out)


def test_torchvision_vit_equals_its_encoder_blocks_by_hand():
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=5).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    blocks = list(m.encoder.layers)
    x0 = _first_input(m, blocks[0], m, x)

    def attn(b, x):
        y = b.ln_1(x)
        return b.self_attention(y, y, y, need_weights=False)[0]

    _check(m, x, _step(blocks, x0, attn, lambda b, x: b.mlp(b.ln_2(x))), 1, ("prefix", "patch"))


def test_open_clip_vit_equals_its_resblocks_by_hand():
    torch.manual_seed(0)
    cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0, ls_init_value=0.5)
    m = open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=dict(context_length=8, vocab_size=64, width=32,
                                                                          heads=2, layers=1)).eval()
    blocks = list(m.visual.transformer.resblocks)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x0 = _first_input(m, blocks[0], m.encode_image, x)

    def attn(b, x):
        y = b.ln_1(x)
        return b.ls_1(b.attn(y, y, y, need_weights=False)[0])

    _check(m, x, _step(blocks, x0, attn, lambda b, x: b.ls_2(b.mlp(b.ln_2(x)))), 1, ("prefix", "patch"))


# --------------------------------------------------------------------------- CNN residual units

def _active(m):
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data = torch.rand(mod.weight.shape, generator=g) + 0.5
            mod.bias.data = torch.randn(mod.bias.shape, generator=g) * 0.1
    return m.eval()


def _unit_inputs(m, units, x):
    got = []
    def keep(_module, args):
        got.append(args[0].detach().clone())

    hs = [u.register_forward_pre_hook(keep) for u in units]
    try:
        with torch.no_grad():
            m(x)
    finally:
        for h in hs:
            h.remove()
    return got


def _cnn_reference(units, inputs, branch):
    """Per unit: the position ratios ``[batch, h * w]`` and the whole-map ratios ``[batch]``."""
    pos, whole = [], []
    with torch.no_grad():
        for u, x in zip(units, inputs):
            f = branch(u, x)
            s = u.downsample(x) if u.downsample is not None else x
            pos.append((s.double().norm(dim=1) / f.double().norm(dim=1)).flatten(1).numpy())
            whole.append((s.double().flatten(1).norm(dim=1) / f.double().flatten(1).norm(dim=1)).numpy())
    return pos, whole


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_resnet_units_equal_the_units_by_hand(lib):
    torch.manual_seed(0)
    m = _active(timm.create_model("resnet18", num_classes=4) if lib == "timm"
                else torchvision.models.resnet18(num_classes=4))
    units = [u for u in m.modules() if type(u).__name__ == "BasicBlock"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def branch(u, x):
        act = u.act1 if lib == "timm" else u.relu
        return u.bn2(u.conv2(act(u.bn1(u.conv1(x)))))

    pos, whole = _cnn_reference(units, _unit_inputs(m, units, x), branch)
    r = skip_ratios(m, x, batch_size=2)
    assert r.kind == "cnn" and r.sublayers == ("residual",) and r.token_kinds == ("position",)
    assert len(r.blocks) == 8 and r.token_ratio.shape == (8, 1, 0)
    np.testing.assert_allclose(r.ratio[:, 0, 0], [p.mean() for p in pos], rtol=1e-6)
    r = skip_ratios(m, x, batch_size=2, cnn_norm="map")
    np.testing.assert_allclose(r.ratio[:, 0, 0], [w.mean() for w in whole], rtol=1e-6)


def test_resnetv2_preactivation_units_equal_the_units_by_hand():
    """BiT's pre-activation units: drop_path(conv3(norm3(...))) + (downsample(norm1(x)) or x)."""
    torch.manual_seed(0)
    m = _active(timm.models.resnetv2.ResNetV2(layers=[1, 1, 1, 1], num_classes=4, stem_type="fixed",
                                               conv_layer=partial(StdConv2d, eps=1e-8)))
    units = [u for u in m.modules() if type(u).__name__ == "PreActBottleneck"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    pos = []
    with torch.no_grad():
        for u, xi in zip(units, _unit_inputs(m, units, x)):
            pre = u.norm1(xi)
            f = u.conv3(u.norm3(u.conv2(u.norm2(u.conv1(pre)))))
            s = u.downsample(pre) if u.downsample is not None else xi
            pos.append((s.double().norm(dim=1) / f.double().norm(dim=1)).flatten(1).numpy())
    r = skip_ratios(m, x, batch_size=2)
    assert len(r.blocks) == 4 and r.kind == "cnn"
    np.testing.assert_allclose(r.ratio[:, 0, 0], [p.mean() for p in pos], rtol=1e-6)


def test_open_clip_modified_resnet_units():
    torch.manual_seed(0)
    m = open_clip.model.CLIP(embed_dim=16, vision_cfg=dict(layers=[1, 1, 1, 1], width=16, image_size=64),
                             text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1))
    _active(m)
    units = [u for u in m.visual.modules() if type(u).__name__ == "Bottleneck"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def branch(u, x):
        out = u.act2(u.bn2(u.conv2(u.act1(u.bn1(u.conv1(x))))))
        return u.bn3(u.conv3(u.avgpool(out)))

    pos, _ = _cnn_reference(units, _unit_inputs(m, units, x), branch)
    r = skip_ratios(m, x, batch_size=3)
    np.testing.assert_allclose(r.ratio[:, 0, 0], [p.mean() for p in pos], rtol=1e-6)


# --------------------------------------------------------------------------- closed forms

class _Echo(nn.Module):
    def forward(self, x, **_):
        return x


def test_a_zero_branch_gives_an_infinite_ratio():
    m = build("vit")
    nn.init.zeros_(m.blocks[0].attn.proj.weight)
    nn.init.zeros_(m.blocks[0].attn.proj.bias)
    r = skip_ratios(m, batch("vit", 2))
    assert np.isinf(r.ratio[0, 0]).all() and np.isinf(r.token_ratio[0, 0]).all()
    assert np.isfinite(r.ratio[0, 1]).all() and np.isfinite(r.ratio[1]).all()
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", num_classes=4).eval()        # timm zero-initialises the last BatchNorm
    assert np.isinf(skip_ratios(cnn, torch.randn(2, 3, 32, 32)).ratio).all()


def test_a_branch_equal_to_its_input_gives_one():
    m = build("vit")
    m.blocks[0].norm1, m.blocks[0].attn = nn.Identity(), _Echo()
    r = skip_ratios(m, batch("vit", 2))
    np.testing.assert_allclose(r.ratio[0, 0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(r.token_ratio[0, 0], 1.0, rtol=1e-12)


@pytest.mark.parametrize("c", [0.25, 3.0])
def test_scaling_a_branch_by_c_divides_the_ratio_by_c(c):
    from timm.layers import LayerScale

    m, x = build("vit"), batch("vit", 3)
    before = skip_ratios(m, x)
    m.blocks[0].ls1 = LayerScale(32, init_values=c)
    after = skip_ratios(m, x)
    np.testing.assert_allclose(after.ratio[0, 0], before.ratio[0, 0] / c, rtol=1e-6)   # c f(x) rounded in float32
    np.testing.assert_allclose(after.token_ratio[0, 0], before.token_ratio[0, 0] / c, rtol=1e-6)
    cnn = _active(timm.create_model("resnet18", num_classes=4))
    xc = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = skip_ratios(cnn, xc, cnn_norm="map")
    unit = cnn.layer1[0]
    unit.bn2.weight.data *= c
    unit.bn2.bias.data *= c
    np.testing.assert_allclose(skip_ratios(cnn, xc, cnn_norm="map").ratio[0, 0], base.ratio[0, 0] / c, rtol=1e-6)


# --------------------------------------------------------------------------- streaming, state, refusals

def test_batches_do_not_change_the_result_and_the_model_is_left_as_it_was():
    m = build("deit_distilled").train()
    x = batch("deit_distilled", 5)
    a = skip_ratios(m, x, batch_size=1)
    b = skip_ratios(m, x, batch_size=5)
    np.testing.assert_allclose(a.ratio, b.ratio, rtol=1e-10)
    np.testing.assert_allclose(a.token_ratio, b.token_ratio, rtol=1e-10)
    assert m.training and all(mod.training for mod in m.modules())
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    assert a.token_labels[:3] == ("cls", "dist", "patch 0")
    assert a.conventions["was_training"] is True
    with pytest.raises(ValueError):
        a.ratio[0, 0, 0] = 1.0


def test_result_frames_and_dict():
    r = skip_ratios(build("vit"), batch("vit", 2))
    f = r.to_frame()
    assert list(f.columns) == ["model", "kind", "block", "block_name", "depth_fraction", "sublayer", "token_kind",
                               "ratio", "n_tokens", "n_images"]
    assert len(f) == 2 * 2 * 2 and set(f["token_kind"]) == {"prefix", "patch"}
    assert f.loc[(f.block == 1) & (f.sublayer == "mlp") & (f.token_kind == "patch"), "n_tokens"].item() == 2 * 16
    assert len(r.token_frame()) == 2 * 2 * 16
    assert r.to_dict()["prefix_kinds"] == ["cls"]
    assert isinstance(r, SkipRatios)
    from vitlens.plotting.skip import plot_skip_tokens, skip_figure

    ax = r.plot()
    assert len(ax.get_lines()) == 4 and ax.get_yscale() == "log"     # attention/mlp x prefix/patch
    assert plot_skip_tokens(r).images[0].get_array().shape == (4, 16)  # block x sub-layer rows, tokens
    assert len(skip_figure([r, r]).axes) >= 3


def test_windowed_and_parallel_blocks_are_refused():
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, embed_dim=16, depths=(1, 1),
                             num_heads=(1, 1), window_size=7).eval()
    with pytest.raises(UnsupportedModelError, match="windows"):
        skip_ratios(swin, torch.randn(1, 3, 56, 56))
    from timm.models.vision_transformer import ParallelScalingBlock, VisionTransformer
    par = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            block_fn=ParallelScalingBlock).eval()
    with pytest.raises(UnsupportedModelError, match="parallel"):
        skip_ratios(par, torch.randn(1, 3, 32, 32))
    with pytest.raises(UnsupportedModelError, match="residual blocks"):
        skip_ratios(torchvision.models.vgg11(num_classes=2).eval(), torch.randn(1, 3, 32, 32))


def test_a_block_whose_output_is_not_the_sum_is_refused():
    m = build("vit")
    h = m.blocks[1].register_forward_hook(lambda _module, _args, out: out * 2)   # replaces the output
    try:
        with pytest.raises(UnsupportedModelError, match="not the sum"):
            skip_ratios(m, batch("vit", 2))
    finally:
        h.remove()
    assert not m.blocks[0]._forward_hooks


# --------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("skip_imgs")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


def test_command_writes_the_files(tmp_path, images):
    out = tmp_path / "skip"
    assert run(["skip", "--model", "vit_tiny_patch16_224", "--model", "resnet18", "--random-init",
                "--images", str(images), "--out", str(out), "--batch-size", "2", "--n-tokens", "5"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "skip_ratio.csv", "skip_ratio.png",
                                                     "skip_ratio.svg", "skip_tokens.npz"]
    f = pd.read_csv(out / "skip_ratio.csv")
    for col in ("model", "kind", "block", "depth_fraction", "sublayer", "token_kind", "ratio", "n_images"):
        assert col in f.columns
    vit, cnn = f[f.kind == "vit"], f[f.kind == "cnn"]
    assert len(vit) == 12 * 2 * 2 and set(vit.sublayer) == {"attention", "mlp"} and vit.block.min() == 0
    assert len(cnn) == 8 and set(cnn.sublayer) == {"residual"} and set(cnn.token_kind) == {"position"}
    assert (f.n_images == 5).all() and np.isfinite(f.ratio).all()    # --random-init activates the branches
    z = np.load(out / "skip_tokens.npz")
    assert z["m0_token_ratio"].shape == (12, 2, 5) and z["m1_token_ratio"].shape == (8, 1, 0)
    assert list(z["m0_token_labels"][:2]) == ["cls", "patch 0"]
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "skip" and [m["cnn_norm"] for m in rec["models"]] == ["position", "position"]
    assert run(["skip", "--model", "swin_tiny_patch4_window7_224", "--random-init", "--images", str(images),
                "--out", str(tmp_path / "swin")]) == 2


def test_two_processes_give_the_one_process_result(tmp_path, images):
    argv = ["skip", "--model", "resnet18", "--random-init", "--images", str(images), "--batch-size", "2"]
    torchrun(argv + ["--out", str(tmp_path / "two")])
    assert run(argv + ["--out", str(tmp_path / "one")]) == 0
    one, two = (pd.read_csv(tmp_path / d / "skip_ratio.csv") for d in ("one", "two"))
    np.testing.assert_allclose(two.ratio, one.ratio, rtol=1e-5)
    assert (two.n_images == 5).all()
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2


def test_a_post_norm_timm_block_reads_its_normalised_branches():
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, block_fn=ResPostBlock).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x0 = _first_input(m, m.blocks[0], m, x)
    per_token = _step(m.blocks, x0, lambda b, x: b.norm1(b.attn(x)), lambda b, x: b.norm2(b.mlp(x)))
    _check(m, x, per_token, 1, ("prefix", "patch"))


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, images, monkeypatch):
    import vitlens.jobs.skip as job
    from vitlens.runtime.resume import StopRequest

    class StopAfterTwo(StopRequest):
        checks = 0

        @property
        def requested(self):
            StopAfterTwo.checks += 1
            return StopAfterTwo.checks > 2

        @requested.setter
        def requested(self, value):
            pass

    argv = ["skip", "--model", "resnet18", "--random-init", "--images", str(images), "--batch-size", "2"]
    assert run(argv + ["--out", str(tmp_path / "full")]) == 0
    monkeypatch.setattr(job, "StopRequest", StopAfterTwo)
    assert run(argv + ["--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / "skip_ratio.csv").exists()
    monkeypatch.setattr(job, "StopRequest", StopRequest)
    assert run(argv + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    full, cut = (pd.read_csv(tmp_path / d / "skip_ratio.csv") for d in ("full", "cut"))
    np.testing.assert_allclose(cut.ratio, full.ratio, rtol=1e-6)
    assert (cut.n_images == 5).all()
