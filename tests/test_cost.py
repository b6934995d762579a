"""Cost profile: parameter parts, FLOPs against closed forms, memory, the tidy table, figures and ``vitlens cost``."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # the CPU profiler's start/stop lines

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from vitlens import CostProfile, VitlensError, cost_profile
from vitlens.analyses.cost import COLUMNS, QUANTITIES, flop_parts, parameter_parts
from vitlens.cli import main

VIT, CNN = "vitlens/vit-tiny-shapes", "vitlens/resnet-tiny-shapes"
D = 32  # width of the tiny ViT


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=D,
                             depth=2, num_heads=2, num_classes=10).eval()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, channels=(8, 16, 32, 64), stem_width=8,
                             num_classes=10).eval()


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def flops_only() -> CostProfile:
    return cost_profile([tiny_vit(), tiny_cnn()], [16, 32, 64, 128, 256], name=["vit", "cnn"],
                        measure_memory=False, measure_throughput=False)


@pytest.fixture(scope="module")
def measured() -> CostProfile:
    return cost_profile([tiny_vit(), tiny_cnn()], [32, 64], batch_size=2, repeats=2, warmup=1,
                        name=["vit", "cnn"])


def test_parameter_parts_sum_to_the_total_split_by_module_kind():
    vit, cnn = tiny_vit(), tiny_cnn()
    p = parameter_parts(vit)
    assert p["total"] == numel(vit) == sum(v for k, v in p.items() if k != "total")
    assert p["attention"] == sum(numel(b.attn) for b in vit.blocks)
    assert p["mlp"] == sum(numel(b.mlp) for b in vit.blocks)
    assert p["embedding"] == numel(vit.patch_embed) + vit.pos_embed.numel() + vit.cls_token.numel()
    assert p["convolution"] == 0
    c = parameter_parts(cnn)
    assert c["total"] == numel(cnn) == sum(v for k, v in c.items() if k != "total")
    assert c["convolution"] == sum(numel(m) for m in cnn.modules() if isinstance(m, nn.Conv2d))
    assert c["attention"] == c["mlp"] == c["embedding"] == 0


class Toy(nn.Module):
    """A 3x3 convolution stem, one transformer block over its ``H x W`` positions, a linear head."""

    def __init__(self, d: int = 16, heads: int = 2, ratio: int = 2, classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, d, 3, padding=1)
        self.blocks = nn.Sequential(Block(d, heads, mlp_ratio=ratio))
        self.head = nn.Linear(d, classes)

    def forward(self, x):                                  # x [batch, 3, H, W]
        t = self.stem(x).flatten(2).transpose(1, 2)        # [batch, N = H W, d]
        return self.head(self.blocks(t).mean(1))           # [batch, classes]


def test_flops_of_a_hand_built_block_match_the_closed_form():
    d, r, classes, h, w = 16, 2, 5, 6, 7
    toy = Toy(d=d, ratio=r, classes=classes).eval()
    for m in toy.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    n = h * w
    f = flop_parts(toy, torch.randn(1, 3, h, w))
    assert f["attention"] == 2 * (2 * n * n * d)                     # q k^T and attn v
    assert f["transformer_linear"] == 2 * n * d * (3 * d + d + r * d + r * d)  # qkv, proj, fc1, fc2
    assert f["convolution"] == 2 * 3 * 3 * 3 * d * h * w              # 2 k^2 C_in C_out H W
    assert f["other"] == 2 * d * classes                              # the head
    assert f["total"] == sum(v for k, v in f.items() if k != "total")


def test_attention_share_grows_with_tokens_as_the_closed_form(flops_only):
    s = flops_only.flop_shares("vit")
    np.testing.assert_array_equal(s["tokens"], [(px // 8) ** 2 + 1 for px in (16, 32, 64, 128, 256)])
    share = s["attention"] / (s["attention"] + s["linear"])
    # 4 N^2 d against 24 N d^2 (qkv 6, proj 2, MLP of ratio 4: 16) per block
    np.testing.assert_allclose(share, 1 / (1 + 6 * D / s["tokens"]), rtol=1e-12)
    assert np.all(np.diff(s["attention"]) > 0) and np.all(np.diff(s["linear"]) < 0)
    n = flops_only.attention_crossing("vit")
    assert 65 < n < 257 and n == pytest.approx(6 * D)  # the ratio N / 6d is linear in N
    text = " ".join(flops_only.reading())
    assert "exceed the linear layers of its blocks from 128 px (257 tokens" in text


def test_cnn_flops_scale_with_the_pixel_count(flops_only):
    px, tok, conv = flops_only.select("cnn", "flops", "convolution")
    np.testing.assert_array_equal(conv[2:] / conv[1:-1], [4.0] * 3)  # sides multiple of the stride 32: exact
    assert set(tok) == {-1}
    cnn = cost_profile(tiny_cnn(), [32, 64, 128, 256], name="cnn", measure_memory=False,
                       measure_throughput=False)
    assert cnn.flop_exponent("cnn") == pytest.approx(1.0, abs=1e-3)  # the head's few FLOPs do not grow
    assert flops_only.flop_exponent("vit") > 1.1


def test_memory_grows_with_batch_and_explicit_maps_cost_more(measured):
    _, _, one = measured.select("vit", "peak_memory", batch_size=1)
    _, _, two = measured.select("vit", "peak_memory", batch_size=2)
    assert np.all(two > one) and np.all(one > 0)
    # (a CNN on CPU need not: at batch 1 PyTorch may pick an im2col convolution with its own buffer)
    assert np.all(measured.select("cnn", "peak_memory")[2] > 0)
    _, _, fused = measured.select("vit", "peak_memory", batch_size=2)
    _, _, explicit = measured.select("vit", "peak_memory_explicit", batch_size=2)
    _, _, maps = measured.select("vit", "attention_map_memory", batch_size=2)
    assert explicit[-1] > fused[-1]
    np.testing.assert_array_equal(maps, explicit - fused)
    assert set(measured.part[measured.quantity == "peak_memory"]) == {"cpu-profiler"}
    _, _, med = measured.select("vit", "throughput", "median")
    _, _, lo = measured.select("vit", "throughput", "min")
    _, _, hi = measured.select("vit", "throughput", "max")
    assert np.all(lo <= med) and np.all(med <= hi)


def test_frame_is_tidy_and_the_result_read_only(measured):
    df = measured.to_frame()
    assert list(df.columns) == COLUMNS
    assert set(df.quantity) == set(QUANTITIES)
    assert set(df.kind) == {"vit", "cnn"} and set(df.device) == {"cpu"} and set(df.precision) == {"fp32"}
    assert set(df[df.quantity == "throughput"].batch_size) == {2}
    with pytest.raises(ValueError):
        measured.value[0] = 0.0
    with pytest.raises(Exception):
        measured.device = "cuda"
    text = measured.reading()
    assert any("a CPU figure, 1 torch thread" in s for s in text)
    assert any("times cnn's" in s and "At 32 px (vit's own input size)" in s for s in text)
    assert any("not within the sizes measured" in s for s in text)
    json.dumps(measured.to_dict())


def test_the_callers_model_is_left_as_it_was():
    vit = tiny_vit().train()
    flags = [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    cost_profile(vit, [16, 64], batch_size=2, repeats=1, warmup=0)
    assert vit.training and vit.patch_embed.img_size == (32, 32)
    assert flags == [m.fused_attn for m in vit.modules() if hasattr(m, "fused_attn")]
    after = vit.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("sizes, words", [([0], "positive"), ([32, -8], "positive"), ([36], "multiple of")])
def test_bad_sizes_are_refused_in_one_sentence(sizes, words):
    with pytest.raises(VitlensError, match=words):
        cost_profile(tiny_vit(), sizes, measure_memory=False, measure_throughput=False)


def test_figures_draw_what_the_profile_holds(measured, tmp_path):
    import matplotlib.pyplot as plt

    from vitlens.plotting.cost import cost_figure, plot_attention_share, plot_flops, plot_memory, plot_throughput

    for plot in (plot_flops, plot_memory, plot_attention_share, plot_throughput):
        ax = plot(measured)
        assert len(ax.get_lines()) >= 2
        plt.close(ax.figure)
    assert measured.plot().get_xscale() == "log"
    fig = cost_figure(measured)
    assert len(fig.axes) == 4
    fig.savefig(tmp_path / "cost.png")
    plt.close(fig)
    assert (tmp_path / "cost.png").stat().st_size > 0


def test_cli_writes_the_table_figures_and_record(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "cost"
    assert main(["cost", "--vit", VIT, "--cnn", CNN, "--input-size", "32", "64", "--batch-size", "2",
                 "--repeats", "2", "--warmup", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cost.csv", "cost.png", "cost.svg", "run.json"]
    df = pd.read_csv(out / "cost.csv")
    assert list(df.columns) == COLUMNS and set(df.model) == {VIT, CNN} and set(df.input_px) == {32, 64}
    rec = json.loads((out / "run.json").read_text())
    assert rec["command"] == "cost" and rec["reading"] and rec["input_sizes"] == [32, 64]
    assert {"platform", "cpu_count", "torch_threads", "torch", "device", "precision"} <= set(rec["machine"])
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("sizes", [["0"], ["36"]])
def test_cli_refuses_bad_sizes_and_writes_nothing(tmp_path, capsys, sizes):
    out = tmp_path / "cost"
    assert main(["cost", "--vit", VIT, "--cnn", CNN, "--input-size", *sizes, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "vitlens: error:" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
