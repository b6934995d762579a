"""Effective receptive field: closed forms, hand-computed theoretical fields, a literal reference
implementation, and the ``vitlens erf`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn as nn
from conftest import FAMILIES, batch, build
from PIL import Image

from vitlens.analyses.fields.effective import (
    ReceptiveFieldAccumulator,
    effective_receptive_field,
    stream_receptive_field,
)
from vitlens.analyses.fields.geometry import spread_and_radii
from vitlens.analyses.fields.theoretical import theoretical_receptive_field
from vitlens.capture.outputs import default_layers
from vitlens.cli import main
from vitlens.data.images import ImageSet
from vitlens.models.layout import token_layout
from vitlens.runtime.errors import VitlensError

GAUSS_MEAN_RADIUS, GAUSS_R50, GAUSS_R90 = 1.2533, 1.1774, 2.1460  # times sigma (Rayleigh distribution)


# --------------------------------------------------------------------------- helpers


def reference_erf(model: nn.Module, x: torch.Tensor, layer: str, select, *, relu_objective=False,
                  relu_gradient=False) -> np.ndarray:
    """Literal: one image and one layer at a time, a fresh forward pass each; mean map [H, W]."""
    module = dict(model.named_modules())[layer]
    maps = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        got = {}
        h = module.register_forward_hook(lambda m, inp, out: got.__setitem__("out", out))
        try:
            model(xi)
        finally:
            h.remove()
        unit = select(got["out"])[0]  # [channel]
        obj = (unit.relu() if relu_objective else unit).sum()
        (g,) = torch.autograd.grad(obj, xi)
        g = g[0].relu() if relu_gradient else g[0].abs()
        maps.append(g.sum(0).double().numpy())
    return np.mean(maps, axis=0)


def conv_stack(k: int, channels: int = 2) -> nn.Sequential:
    """k 3x3 convolutions (padding 1), all weights equal and positive, no bias, no nonlinearity."""
    layers = []
    for i in range(k):
        conv = nn.Conv2d(3 if i == 0 else channels, channels, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1.0 / 9)
        layers.append(conv)
    return nn.Sequential(*layers).eval()


def box_power(k: int) -> np.ndarray:
    """The k-fold convolution of the 3-wide box, normalised: [2k + 1]."""
    b = np.array([1.0])
    for _ in range(k):
        b = np.convolve(b, np.ones(3))
    return b / b.sum()


def linearise(model: nn.Module) -> nn.Module:
    """Same geometry, but linear with positive weights: norms and activations become identities,
    max pooling becomes average pooling, every parameter becomes positive. The input gradient of a
    unit is then positive exactly on its theoretical receptive field."""
    from timm.layers import LayerNorm2d
    from torch.nn.modules.batchnorm import _BatchNorm

    for name, m in list(model.named_modules()):
        for cname, c in list(m.named_children()):
            mod = type(c).__module__
            if isinstance(c, (_BatchNorm, nn.LayerNorm, LayerNorm2d)) or (
                    not list(c.children()) and (mod == "torch.nn.modules.activation"
                                                or mod.startswith("timm.layers.activations"))):
                setattr(m, cname, nn.Identity())
            elif isinstance(c, nn.MaxPool2d):
                setattr(m, cname, nn.AvgPool2d(c.kernel_size, c.stride, c.padding))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.abs() + 0.1)
    return model.double().eval()


def support_box(m: np.ndarray) -> tuple[tuple[int, int], tuple[float, float]]:
    """Side lengths and centre (pixel-centre coordinates) of the bounding box of ``m > 0``."""
    ys, xs = np.nonzero(m > 0)
    size = (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    centre = ((ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2)
    return size, centre


def small_resnet(zero_init_last: bool = True, seed: int = 0) -> nn.Module:
    """timm's ResNet-18 layout (same module classes and geometry) with narrow channels."""
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(seed)
    return ResNet(BasicBlock, [2, 2, 2, 2], channels=(8, 16, 16, 16), stem_width=8, num_classes=2,
                  zero_init_last=zero_init_last).eval()


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- scalars


def test_gaussian_closed_forms():
    sigma, size = 4.0, 64
    c = (32.0, 32.0)
    y, x = np.mgrid[0:size, 0:size] + 0.5
    g = np.exp(-((y - c[0]) ** 2 + (x - c[1]) ** 2) / (2 * sigma ** 2))
    spread, (r50, r90) = spread_and_radii(g, c, (0.5, 0.9))
    assert spread == pytest.approx(GAUSS_MEAN_RADIUS * sigma, rel=0.01)
    assert r50 == pytest.approx(GAUSS_R50 * sigma, rel=0.01)
    assert r90 == pytest.approx(GAUSS_R90 * sigma, rel=0.01)
    # scale invariance of the mass
    assert spread_and_radii(7.5 * g, c)[0] == pytest.approx(spread, rel=1e-12)


def test_radius_interpolation_by_hand():
    # one row; centre at pixel 0's centre, so pixel x is at distance x and its mass covers radii x +- 0.5
    g = np.zeros((1, 8))
    g[0, 1], g[0, 3] = 1.0, 1.0
    spread, (r25, r50, r90, r100) = spread_and_radii(g, (0.5, 0.5), (0.25, 0.5, 0.9, 1.0))
    assert spread == pytest.approx(2.0)
    assert r25 == pytest.approx(1.0)            # half of pixel 1's ring [0.5, 1.5]
    assert r50 == pytest.approx(1.5)            # the smallest radius holding it all
    assert r90 == pytest.approx(2.5 + 0.8)      # 0.4 of pixel 3's 0.5 in its ring [2.5, 3.5]
    assert r100 == pytest.approx(3.5)
    # a pixel at the centre itself: its ring is [0, 0.5]
    g0 = np.zeros((3, 3))
    g0[1, 1] = 1.0
    s0, (q0,) = spread_and_radii(g0, (1.5, 1.5), (0.5,))
    assert s0 == 0.0 and q0 == pytest.approx(0.25)
    assert all(np.isnan(v) for v in np.atleast_1d(spread_and_radii(np.zeros((4, 4)), (2, 2))[1]))
    with pytest.raises(ValueError):
        spread_and_radii(-g, (0.5, 0.5))


# --------------------------------------------------------------------------- closed form: conv stack


def test_conv_stack_is_a_box_convolution():
    K, size = 5, 33
    model = conv_stack(K)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    r = effective_receptive_field(model, x, layers=[str(i) for i in range(K)], batch_size=2, progress=False)
    assert r.kind == "cnn" and r.layers == tuple(str(i) for i in range(K))
    assert np.allclose(r.centre_px, 16.5)  # centre unit 16 of 33: the image centre
    ys = np.arange(size) + 0.5 - 16.5
    for li in range(K):
        k = li + 1
        m = r.maps[li] / r.maps[li].sum()
        # the whole map is the outer product of the k-fold box, centred on the centre unit
        b = np.zeros(size)
        b[16 - k:16 + k + 1] = box_power(k)
        np.testing.assert_allclose(m, np.outer(b, b), atol=1e-7)
        # per-axis variance k (3^2 - 1) / 12
        var_y = (m.sum(1) * ys ** 2).sum()
        var_x = (m.sum(0) * ys ** 2).sum()
        assert var_y == pytest.approx(k * (3 ** 2 - 1) / 12, rel=1e-6)
        assert var_x == pytest.approx(k * (3 ** 2 - 1) / 12, rel=1e-6)
        # the measured spread: exactly the box distribution's mean radius, and near the Gaussian's
        o = np.arange(-k, k + 1)
        exact = (np.outer(box_power(k), box_power(k)) * np.sqrt(o[:, None] ** 2 + o[None, :] ** 2)).sum()
        assert r.spread_px[li] == pytest.approx(exact, rel=1e-6)
        if k >= 2:
            sigma = math.sqrt(k * (3 ** 2 - 1) / 12)
            assert r.spread_px[li] == pytest.approx(GAUSS_MEAN_RADIUS * sigma, rel=0.015)
        assert r.theoretical_px[li] == 2 * k + 1
    # spread grows with depth, like sqrt(depth)
    assert np.all(np.diff(r.spread_px) > 0) and np.all(np.diff(r.r90_px) > 0)
    assert r.spread_px[3] / r.spread_px[0] == pytest.approx(2.0, rel=0.1)
    # uniform reference: mean distance from the centre of a square, (sqrt 2 + ln(1 + sqrt 2)) / 6 of its side
    assert r.uniform_spread_px[0] == pytest.approx(size * (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6, rel=0.01)
    assert no_hooks(model)


def test_spread_grows_with_depth_in_a_resnet():
    model = small_resnet(zero_init_last=False)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    r = effective_receptive_field(model, x, progress=False)
    assert r.layers == ("act1", "layer1", "layer2", "layer3", "layer4")
    assert np.all(np.diff(r.spread_px[:4]) > 0), r.spread_px
    assert np.all(np.diff(r.r90_px[:4]) > 0), r.r90_px


# --------------------------------------------------------------------------- theoretical field


def test_theoretical_field_resnet18_by_hand(tiny_cnn):
    f = theoretical_receptive_field(tiny_cnn)
    # conv1 7x7 s2 -> 7 (jump 2); maxpool 3x3 s2 -> 7 + 2*2 = 11 (jump 4);
    # layer1: four 3x3 convs at jump 4 -> 11 + 4*8 = 43;
    # layer2: 3x3 s2 at jump 4 -> 51 (jump 8), three 3x3 at jump 8 -> 51 + 3*16 = 99;
    # layer3: 99 + 2*8 = 115 (jump 16), + 3*32 -> 211; layer4: 211 + 2*16 = 243 (jump 32), + 3*64 -> 435.
    expect = {"act1": (7, 2), "layer1": (43, 4), "layer2": (99, 8), "layer3": (211, 16), "layer4": (435, 32)}
    assert list(f) == list(expect)
    for name, (size, jump) in expect.items():
        assert f[name].size == (size, size) and f[name].jump == (jump, jump), name
        assert f[name].start == (0.5, 0.5)  # odd kernels, symmetric padding: aligned to pixel 0
        assert f[name].size_px == size and f[name].defined


def test_theoretical_field_resnet50_and_convnext_by_hand():
    r50 = theoretical_receptive_field(timm.create_model("resnet50", pretrained=False))
    # bottlenecks have one 3x3 each (the stride sits on it): layer1 11 + 3*8 = 35;
    # layer2 35 + 2*4 = 43, + 3*16 = 91; layer3 91 + 2*8 = 107, + 5*32 = 267; layer4 267 + 2*16 = 299, + 2*64 = 427
    assert {k: v.size_px for k, v in r50.items()} == {"act1": 7, "layer1": 35, "layer2": 91, "layer3": 267,
                                                       "layer4": 427}
    cx = theoretical_receptive_field(timm.create_model("convnext_atto", pretrained=False))
    # stem 4x4 s4 -> 4 (jump 4, start 0.5 + 1.5 = 2); depths (2, 2, 6, 2) of 7x7 depthwise convs:
    # stage0 4 + 2*24 = 52; stage1: 2x2 s2 -> 56 (jump 8), + 2*48 = 152;
    # stage2: 152 + 8 = 160 (jump 16), + 6*96 = 736; stage3: 736 + 16 = 752 (jump 32), + 2*192 = 1136
    assert {k: v.size_px for k, v in cx.items()} == {"stages.0": 52, "stages.1": 152, "stages.2": 736,
                                                      "stages.3": 1136}
    assert [v.start[0] for v in cx.values()] == [2.0, 4.0, 8.0, 16.0]
    se = theoretical_receptive_field(timm.create_model("seresnet18", pretrained=False))
    assert se["act1"].size_px == 7
    assert math.isnan(se["layer1"].size_px) and "SEModule" in se["layer1"].reason


@pytest.mark.parametrize("arch", ["resnet", "convnext"])
def test_theoretical_field_is_the_gradient_support(arch):
    """Independent check: a linearised copy with positive weights has input gradients that are
    positive exactly on the theoretical field, centred on the unit's position."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    if arch == "resnet":
        model = ResNet(BasicBlock, [2, 2, 2, 2], channels=(4, 4, 4, 4), stem_width=4, num_classes=2)
        layers = ["act1", "layer1", "layer2", "layer3"]
    else:
        model = ConvNeXt(depths=(1, 1, 1, 1), dims=(4, 4, 4, 4), num_classes=2)
        layers = ["stages.0", "stages.1", "stages.2"]
    model = linearise(model)
    x = torch.randn(1, 3, 256, 256, dtype=torch.float64)
    r = effective_receptive_field(model, x, layers=layers, progress=False)
    for li, name in enumerate(layers):
        size, centre = support_box(r.maps[li])
        assert size == (r.theoretical_px[li], r.theoretical_px[li]), name
        assert centre == pytest.approx(tuple(r.centre_px[li])), name
    if arch == "resnet":  # top-left aligned: unit i of layer3 (jump 16) sits at 0.5 + 16 i, not (i + 0.5) 16
        assert tuple(r.centre_px[3]) == (0.5 + 8 * 16, 0.5 + 8 * 16)
        grid = effective_receptive_field(model, x, layers=["layer3"], unit_position="grid", progress=False)
        assert tuple(grid.centre_px[0]) == (8.5 * 16, 8.5 * 16)


# --------------------------------------------------------------------------- against a literal reference


@pytest.mark.parametrize("objective,gradient", [("sum", "abs"), ("relu_sum", "relu")])
def test_cnn_matches_reference_and_batching(objective, gradient):
    tiny_cnn = small_resnet(zero_init_last=False)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    r1 = effective_receptive_field(tiny_cnn, x, batch_size=2, progress=False, objective=objective,
                                   input_gradient=gradient)
    r3 = effective_receptive_field(tiny_cnn, x, batch_size=3, progress=False, objective=objective,
                                   input_gradient=gradient)
    np.testing.assert_allclose(r1.maps, r3.maps, rtol=1e-4, atol=1e-5 * r3.maps.max())  # float32
    for li, name in enumerate(r3.layers):
        i, j = r3.centre_index[li]
        ref = reference_erf(tiny_cnn, x, name, lambda o: o[:, :, i, j], relu_objective=objective == "relu_sum",
                            relu_gradient=gradient == "relu")
        np.testing.assert_allclose(r3.maps[li], ref, rtol=1e-4, atol=1e-5 * ref.max())
        assert (i, j) == (r3.feature_size[li][0] // 2, r3.feature_size[li][1] // 2)
    assert r3.n_images == 3 and r3.maps.dtype == np.float64
    assert np.all(r3.spread_std_px >= 0)
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert not any(m.training for m in tiny_cnn.modules()) and no_hooks(tiny_cnn)


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2_registers"])
def test_vit_centre_token_skips_prefix_tokens(family):
    model = build(family)
    x = batch(family, n=2)
    layout = token_layout(model, FAMILIES[family][2])
    assert layout.num_prefix_tokens == {"vit": 1, "deit_distilled": 2, "dinov2_registers": 5}[family]
    r = effective_receptive_field(model, x, batch_size=2, progress=False)
    assert r.kind == "vit" and r.layers == tuple(f"blocks.{i}" for i in range(len(model.blocks)))
    gh, gw = layout.grid_size
    token = layout.num_prefix_tokens + (gh // 2) * gw + gw // 2
    sy, sx = layout.patch_stride
    for li, name in enumerate(r.layers):
        ref = reference_erf(model, x, name, lambda o: o[:, token, :])
        np.testing.assert_allclose(r.maps[li], ref, rtol=1e-4, atol=1e-6 * ref.max())
        assert tuple(r.centre_px[li]) == ((gh // 2 + 0.5) * sy, (gw // 2 + 0.5) * sx)
        assert tuple(r.centre_index[li]) == (gh // 2, gw // 2)
    # the token at the same grid index without the prefix offset is another token, with another map
    wrong = reference_erf(model, x, r.layers[-1], lambda o: o[:, token - layout.num_prefix_tokens, :])
    assert not np.allclose(r.maps[-1], wrong, rtol=1e-2, atol=1e-3 * wrong.max())
    assert np.isnan(r.theoretical_px).all() and all("attention" in s for s in r.theoretical_reason)
    assert no_hooks(model)


@pytest.mark.parametrize("family", ["gap_no_cls", "beit", "eva02", "dynamic"])
def test_vit_families_and_non_square_grids(family):
    model = build(family)
    x = batch(family, n=1)
    layout = token_layout(model, FAMILIES[family][2])
    r = effective_receptive_field(model, x, progress=False)
    gh, gw = layout.grid_size
    token = layout.num_prefix_tokens + (gh // 2) * gw + gw // 2
    ref = reference_erf(model, x, r.layers[-1], lambda o: o[:, token, :])
    np.testing.assert_allclose(r.maps[-1], ref, rtol=1e-4, atol=1e-6 * ref.max())
    np.testing.assert_allclose(r.centre_px[-1], layout.patch_centers()[(gh // 2) * gw + gw // 2])
    if family == "dynamic":  # 48 x 40 px, 6 x 5 patches of 8 px: centre patch (3, 2) at (28, 20)
        assert tuple(r.centre_index[0]) == (3, 2) and tuple(r.centre_px[0]) == (28.0, 20.0)
    assert np.isfinite(r.spread_px).all() and (r.r50_px <= r.r90_px).all()


# --------------------------------------------------------------------------- API behaviour


def test_depth_and_frame(tiny_cnn):
    x = torch.randn(1, 3, 32, 32)
    full = effective_receptive_field(tiny_cnn, x, progress=False)
    assert default_layers(tiny_cnn) == list(full.layers)
    np.testing.assert_array_equal(full.depth, np.arange(5))
    np.testing.assert_allclose(full.depth_fraction, np.arange(5) / 4)
    # a subset keeps its place in the whole model, in forward order whatever order it was given in
    part = effective_receptive_field(tiny_cnn, x, layers=["layer4", "layer2"], progress=False)
    assert part.layers == ("layer2", "layer4")
    np.testing.assert_array_equal(part.depth, [2, 4])
    np.testing.assert_allclose(part.depth_fraction, [0.5, 1.0])
    np.testing.assert_allclose(part.maps, full.maps[[2, 4]], rtol=1e-6)
    f = full.to_frame()
    for col in ["model", "layer", "depth", "depth_fraction", "spread_px", "r50_px", "r90_px", "theoretical_px"]:
        assert col in f.columns
    assert len(f) == 5 and list(f["layer"]) == list(full.layers)
    assert (f["r50_px"] <= f["r90_px"]).all()
    assert full.maps.shape == (5, 32, 32) and full.input_size == (32, 32)
    import matplotlib.pyplot as plt
    ax = full.plot()
    assert len(ax.lines) >= 1
    plt.close("all")


def test_refuses_unknown_layers(tiny_cnn):
    with pytest.raises(VitlensError, match="no module named"):
        effective_receptive_field(tiny_cnn, torch.randn(1, 3, 32, 32), layers=["layer9"], progress=False)
    with pytest.raises(VitlensError, match="feature map"):  # the classifier has no spatial axes
        effective_receptive_field(tiny_cnn, torch.randn(1, 3, 32, 32), layers=["fc"], progress=False)
    assert no_hooks(tiny_cnn)


def _write_images(folder, n=3, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(folder / f"im{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_imageset_uses_the_model_preprocessing(tiny_cnn, tmp_path):
    folder = _write_images(tmp_path / "imgs")
    images = ImageSet.for_model(tiny_cnn, folder, input_size=32)
    with pytest.warns(UserWarning, match="skipped"):
        r = effective_receptive_field(tiny_cnn, images, batch_size=2, progress=False)
    assert r.n_images == 3 and len(images.skipped) == 1 and r.input_size == (32, 32)
    x = torch.cat([xb for xb, _ in ImageSet.for_model(tiny_cnn, folder, input_size=32).batches(8)])
    r_t = effective_receptive_field(tiny_cnn, x, progress=False)
    np.testing.assert_allclose(r.maps, r_t.maps, rtol=1e-5, atol=1e-12)


def test_sums_over_parts_of_the_images_add_up_to_one_pass(tiny_cnn):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    whole = effective_receptive_field(tiny_cnn, x, batch_size=5, progress=False)
    a, b, idle = (ReceptiveFieldAccumulator(tiny_cnn, input_size=(32, 32)) for _ in range(3))
    assert idle.state()["map_sum"].shape == (5, 32, 32)  # shaped before any image: a process with none
    assert list(stream_receptive_field(a, x, batch_size=2, indices=[0, 2, 4])) == [[0, 2], [4]]
    assert list(stream_receptive_field(b, x, batch_size=2, indices=[3, 1])) == [[3, 1]]
    summed = ReceptiveFieldAccumulator(tiny_cnn)
    summed.prepare((32, 32))
    summed.load_state({k: v + b.state()[k] + idle.state()[k] for k, v in a.state().items()})
    a.merge(b)
    a.merge(idle)
    for r in (a.result(), summed.result()):
        assert r.n_images == 5 and r.layers == whole.layers
        np.testing.assert_allclose(r.maps, whole.maps, rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(r.spread_px, whole.spread_px, rtol=1e-6)
        np.testing.assert_allclose(r.spread_std_px, whole.spread_std_px, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(r.r90_px, whole.r90_px, rtol=1e-6)
    with pytest.raises(ValueError, match="no images"):
        idle.result()
    with pytest.raises(ValueError, match="does not match"):
        ReceptiveFieldAccumulator(tiny_cnn, input_size=(40, 40)).load_state(a.state())
    with pytest.raises(ValueError, match="one size"):
        a.update(torch.randn(1, 3, 40, 40))


# --------------------------------------------------------------------------- command line


def test_erf_command(tmp_path):
    folder = _write_images(tmp_path / "imgs", n=1)
    out = tmp_path / "out"
    argv = ["erf", "--model", "resnet18", "--model", "vit_tiny_patch16_224", "--random-init", "--images",
            str(folder), "--input-size", "48", "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 0
    f = pd.read_csv(out / "receptive_field.csv")
    for col in ["model", "layer", "depth", "depth_fraction", "spread_px", "r50_px", "r90_px"]:
        assert col in f.columns
    assert set(f["model"]) == {"resnet18 (random init)", "vit_tiny_patch16_224 (random init)"}
    vit = f[f["model"].str.startswith("vit")]
    assert list(vit["layer"]) == [f"blocks.{i}" for i in range(12)]
    assert vit["depth_fraction"].iloc[0] == 0 and vit["depth_fraction"].iloc[-1] == 1
    assert list(f.loc[f["model"].str.startswith("resnet"), "theoretical_px"]) == [7, 43, 99, 211, 435]
    assert (f["spread_px"] > 0).all() and (f["r50_px"] <= f["r90_px"]).all()
    with Image.open(out / "receptive_field.png") as im:
        assert im.size[0] > 800 and im.size[1] > 600
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "erf" and len(rec["models"]) == 2
    assert all(m["images"]["n_images"] == 1 and m["images"]["n_files"] == 2 for m in rec["models"])
    assert f["n_images"].eq(1).all()
    assert all(s["path"].endswith("broken.jpg") for m in rec["models"] for s in m["images"]["skipped"])
    assert rec["models"][1]["token_layout"]["grid_size"] == [3, 3]
    # the folder is checked before anything is computed
    before = (out / "receptive_field.csv").stat().st_mtime_ns
    assert main(argv) == 2
    assert (out / "receptive_field.csv").stat().st_mtime_ns == before
