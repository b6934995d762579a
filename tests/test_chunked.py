"""Chunked attention statistics: rows formed from each block's own q and k equal the full maps on
every family; distance, entropy and prefix share equal the full-map path and literal formulas;
closed forms; no [query, key] map of a layer is ever formed; outputs and state unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import FAMILIES, batch, build
from torch.utils._python_dispatch import TorchDispatchMode

from vitlens.analyses.attention.entropy import attention_entropy, prefix_share, reduce_attention_rows
from vitlens.analyses.attention.streaming import attention_distance
from vitlens.capture.attention import capture_attention
from vitlens.capture.chunked import capture_attention_rows, chunk_rows, resolve_attention_path
from vitlens.models.families.registry import adapter_for
from vitlens.models.layout import token_layout
from vitlens.models.tokens import TokenLayout
from vitlens.runtime.errors import UnsupportedModelError

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- models of every family

def _sharpen(model):
    """Sharper attention than random init, so that heads differ and entropies are far from 1."""
    with torch.no_grad():
        for b in adapter_for(model).attention_blocks():
            m = b.module
            for name in ("qkv", "q_proj", "k_proj", "query", "key"):
                lin = getattr(m, name, None)
                if isinstance(lin, torch.nn.Linear):
                    lin.weight.mul_(4)
            if isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_weight[: 2 * m.embed_dim].mul_(4)
    return model


def _hf(kind):
    import transformers as T
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                 patch_size=8)
    torch.manual_seed(0)
    return {"hf-vit": lambda: T.ViTForImageClassification(T.ViTConfig(**small, num_labels=5)),
            "hf-deit": lambda: T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**small, num_labels=5)),
            "hf-dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**small)),
            "hf-dinov2-registers": lambda: T.Dinov2WithRegistersModel(
                T.Dinov2WithRegistersConfig(**small, num_register_tokens=3)),
            "hf-clip": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**small)),
            "hf-siglip": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**small))}[kind]()


def _other(kind):
    torch.manual_seed(0)
    if kind == "torchvision":
        import torchvision
        return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=5)
    if kind == "open_clip":
        import open_clip
        cfg = dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2.0)
        text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
        return open_clip.model.CLIP(embed_dim=16, vision_cfg=cfg, text_cfg=text)
    if kind == "qk_norm":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                                 depth=2, num_heads=2, qk_norm=True)
    if kind == "sam":
        m = timm.create_model("samvit_base_patch16", pretrained=False, img_size=80, embed_dim=16, depth=4,
                              num_heads=2, global_attn_indexes=(1, 3), window_size=3, num_classes=3, neck_chans=8)
        with torch.no_grad():
            for blk in m.blocks:
                blk.attn.rel_pos_h.normal_()
                blk.attn.rel_pos_w.normal_()
        return m
    return _hf(kind)


OTHER = {"qk_norm": 32, "hf-vit": 32, "hf-deit": 32, "hf-dinov2": 32, "hf-dinov2-registers": 32, "hf-clip": 32,
         "hf-siglip": 32, "torchvision": 32, "open_clip": 32, "sam": 80}
CASES = list(FAMILIES) + list(OTHER)


def _case(kind):
    if kind in FAMILIES:
        return _sharpen(build(kind)).eval(), batch(kind, n=3)
    x = torch.randn(3, 3, OTHER[kind], OTHER[kind], generator=torch.Generator().manual_seed(1))
    return _sharpen(_other(kind)).eval(), x


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param, *_case(request.param)


# --------------------------------------------------------------------------- rows equal full maps

def _full_maps(model, x):
    adapter = adapter_for(model)
    n = len(adapter.attention_blocks())
    maps = {}
    with torch.no_grad(), adapter.exact_attention(range(n), lambda i, a: maps.setdefault(i, a.clone())):
        adapter.forward(x)
    return [maps[i] for i in range(n)]


def test_rows_equal_full_maps_in_any_chunks(case):
    """Every block's rows, formed in chunks of a size that does not divide the token count, equal
    the probabilities the module forms on its explicit path."""
    kind, model, x = case
    full = _full_maps(model, x)
    got = {}

    def keep(i, rows):
        n = rows.shape[2]
        rows.chunk = next(c for c in (3, 4, 5, 7) if n % c)
        got[i] = torch.cat([p for _, _, p in rows.chunks()], dim=2)

    with torch.no_grad(), capture_attention_rows(model, callback=keep):
        adapter_for(model).forward(x)
    assert sorted(got) == list(range(len(full)))
    for i, ref in enumerate(full):
        torch.testing.assert_close(got[i].reshape(ref.shape), ref.float(), atol=2e-5, rtol=1e-4)  # float32 logits


def test_outputs_unchanged_and_state_restored(case):
    kind, model, x = case
    adapter = adapter_for(model)
    fused = [getattr(b.module, "fused_attn", None) for b in adapter.attention_blocks()]
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    sdpa = F.scaled_dot_product_attention
    with torch.no_grad():
        plain = adapter.forward(x)
        with capture_attention_rows(model, callback=lambda i, r: next(r.chunks())):
            hooked = adapter.forward(x)
    assert torch.equal(plain, hooked)
    assert F.scaled_dot_product_attention is sdpa
    assert [getattr(b.module, "fused_attn", None) for b in adapter.attention_blocks()] == fused
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


def test_state_restored_when_the_body_raises():
    model, x = _sharpen(build("eva02")), batch("eva02")
    sdpa = F.scaled_dot_product_attention

    def boom(i, rows):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"), torch.no_grad(), capture_attention_rows(model, callback=boom):
        model(x)
    assert F.scaled_dot_product_attention is sdpa
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- statistics: chunked = full-map = literal

def _literal(maps, layout):
    """Per-(layer, head) entropy and prefix share by the definition, from full maps (float64 loops
    over patch queries): -sum p log p / log N over all keys; the row's mass on prefix keys."""
    P, N = layout.num_prefix_tokens, layout.num_tokens
    ent = np.zeros((len(maps), maps[0].shape[1]))
    pre = np.zeros_like(ent)
    for l, a in enumerate(maps):
        a = a.double().numpy()
        for h in range(a.shape[1]):
            es, ps = [], []
            for b in range(a.shape[0]):
                for q in range(P, N):
                    row = a[b, h, q]
                    es.append(-sum(v * math.log(v) for v in row if v > 0) / math.log(N))
                    ps.append(row[:P].sum())
            ent[l, h], pre[l, h] = np.mean(es), np.mean(ps)
    return ent, pre


def test_chunked_statistics_equal_full_map_path_and_literal(case):
    kind, model, x = case
    full = attention_distance(model, x, batch_size=2, attention_path="full")
    chunked = attention_distance(model, x, batch_size=2, attention_path="chunked", attention_memory=1e-3)
    assert full.attention_path == "full" and chunked.attention_path == "chunked"
    for name in ("distance", "std", "entropy", "prefix_share"):
        a, b = getattr(full, name), getattr(chunked, name)
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5, err_msg=name)
    if kind != "sam":
        ent, pre = _literal(_full_maps(model, x), full.layout)
        np.testing.assert_allclose(chunked.entropy, ent, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(chunked.prefix_share, pre, rtol=1e-5, atol=1e-7)
        assert 0.05 < np.nanmin(chunked.entropy) and np.nanmax(chunked.entropy) < 0.999
        if full.layout.num_prefix_tokens == 0:
            assert (chunked.prefix_share == 0).all()
        else:
            assert (chunked.prefix_share > 0).all()


def test_chunk_size_does_not_change_results():
    model, x = _sharpen(build("dinov2_registers")), batch("dinov2_registers", n=3)  # 21 tokens
    runs = [attention_distance(model, x, batch_size=3, attention_path="chunked", attention_memory=mb)
            for mb in (1e-3, 0.02, 100.0)]
    for r in runs[1:]:
        for name in ("distance", "entropy", "prefix_share"):
            np.testing.assert_allclose(getattr(r, name), getattr(runs[0], name), rtol=1e-5, atol=1e-6)


def test_chunk_rows_follow_the_budget():
    per_row = 8 * 12 * 1370 * 4 * 4
    assert chunk_rows(8, 12, 1370, 1370, 64) == 64 * 2 ** 20 // per_row
    assert chunk_rows(8, 12, 1370, 1370, 1e-6) == 1
    assert chunk_rows(1, 1, 10, 10, 1e6) == 10
    with pytest.raises(ValueError):
        chunk_rows(1, 1, 10, 10, 0)


# --------------------------------------------------------------------------- closed forms

def _layout(prefix=("cls",), grid=(3, 4)):
    return TokenLayout(prefix, grid, (16.0, 16.0), (16 * grid[0], 16 * grid[1]))


def _reduce(attn, layout, chunk=5):
    chunks = [(s, min(s + chunk, attn.shape[2]), attn[:, :, s:s + chunk]) for s in range(0, attn.shape[2], chunk)]
    c = torch.as_tensor(layout.patch_centers(), dtype=torch.float64)
    return reduce_attention_rows(chunks, num_prefix=layout.num_prefix_tokens, centres=c)


def test_uniform_attention_has_entropy_one():
    layout = _layout()
    n = layout.num_tokens
    attn = torch.full((2, 3, n, n), 1.0 / n)
    torch.testing.assert_close(attention_entropy(attn, layout), torch.ones(2, 3))
    torch.testing.assert_close(_reduce(attn, layout)[1], torch.ones(2, 3))


def test_one_hot_attention_has_entropy_zero():
    layout = _layout()
    n = layout.num_tokens
    attn = torch.zeros(1, 2, n, n)
    attn[0, 0] = torch.eye(n)
    attn[0, 1, :, 0] = 1.0                     # every row on the class token
    assert torch.equal(attention_entropy(attn, layout), torch.zeros(1, 2))
    assert torch.equal(_reduce(attn, layout)[1], torch.zeros(1, 2))


@pytest.mark.parametrize("m", [0.0, 0.25, 0.5, 0.9])
def test_mass_m_on_the_class_token_gives_prefix_share_m(m):
    layout = _layout(prefix=("cls", "reg"))
    n, P = layout.num_tokens, layout.num_prefix_tokens
    attn = torch.zeros(2, 2, n, n, dtype=torch.float64)
    attn[..., 0] = m
    attn[..., P:] = (1 - m) / (n - P)
    assert torch.allclose(prefix_share(attn, layout).double(), torch.full((2, 2), m, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(_reduce(attn.float(), layout)[2].double(), torch.full((2, 2), m, dtype=torch.float64),
                          atol=1e-7)


def test_no_prefix_tokens_gives_prefix_share_zero():
    layout = _layout(prefix=())
    n = layout.num_tokens
    attn = torch.softmax(torch.randn(2, 2, n, n), -1)
    assert torch.equal(prefix_share(attn, layout), torch.zeros(2, 2))
    assert torch.equal(_reduce(attn, layout)[2], torch.zeros(2, 2))


def test_chunked_distance_keeps_the_distance_closed_forms():
    """Uniform over all patches: the uniform distance; one-hot on self: 0 (prefix renormalised out)."""
    from vitlens.analyses.attention.distance import mean_attention_distance, uniform_distance
    layout = _layout(grid=(4, 5))
    n = layout.num_tokens
    attn = torch.full((1, 1, n, n), 1.0 / n)
    assert _reduce(attn, layout, chunk=3)[0].item() == pytest.approx(uniform_distance(layout), rel=1e-6)
    attn = torch.eye(n).expand(1, 2, n, n)
    assert torch.equal(_reduce(attn, layout)[0], torch.zeros(1, 2))
    attn = torch.softmax(3 * torch.randn(2, 3, n, n), -1)
    torch.testing.assert_close(_reduce(attn, layout, chunk=7)[0], mean_attention_distance(attn, layout))


# --------------------------------------------------------------------------- memory: no [query, key] map formed

class _Shapes(TorchDispatchMode):
    """Every tensor an op returns, by shape."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _square(shapes, n):
    return [s for s in shapes if len(s) >= 2 and s[-1] == n and s[-2] == n]


@pytest.mark.parametrize("kind", ["vit", "dinov2_registers", "beit", "eva02", "torchvision", "sam"])
def test_the_chunked_path_never_forms_a_query_key_map(kind):
    """Inside every callback (rows formed and reduced), no tensor has a [query, key] map of all N
    queries; the largest is one chunk. The full-map path does form them (so the check can fail)."""
    model, x = _case(kind)
    if kind == "sam":
        from vitlens.analyses.attention.streaming import new_accumulator
        acc = new_accumulator(model, x.shape[-2:], attention_path="chunked", attention_memory=1e-3)
        global_blocks = [i for i in range(len(acc.layout)) if acc.layout[i].is_global]
    else:
        from vitlens.analyses.attention.streaming import new_accumulator
        acc = new_accumulator(model, x.shape[-2:], attention_path="chunked", attention_memory=1e-3)
        global_blocks = None
    seen: dict[int, list] = {}

    def watched(layer, rows):
        with _Shapes() as mode:
            acc.update_rows(layer, rows)
        seen[layer] = (rows.shape, rows.chunk, rows.qk.q.shape[-1], mode.shapes)

    with torch.no_grad(), capture_attention_rows(model, callback=watched, memory_mb=1e-3):
        adapter_for(model).forward(x)
    checked = 0
    for layer, ((b, h, n, k), chunk, d, shapes) in seen.items():
        if global_blocks is not None and layer not in global_blocks:
            continue                              # SAM's windowed blocks: window maps, by design
        assert n > 8 and not _square(shapes, n), f"block {layer} formed a {n} x {n} map"
        rows_over_keys = [sh for sh in shapes if len(sh) >= 2 and sh[-1] == k and sh[-2] != d]  # not k^T
        assert rows_over_keys and max(sh[-2] for sh in rows_over_keys) <= chunk < n / 4
        checked += 1
    assert checked
    if kind != "sam":                             # the full path's callback gets whole maps
        with _Shapes() as mode, torch.no_grad(), capture_attention(model, callback=lambda i, a: None):
            adapter_for(model).forward(x)
        assert _square(mode.shapes, n)


def test_the_whole_chunked_forward_forms_no_query_key_map():
    """A plain ViT: across the whole forward pass with the chunked statistics on, no op returns a
    [query, key] map (the fused attention forms none, and neither does the reduction)."""
    model, x = _case("dinov2_registers")
    n = adapter_for(model).token_layout().num_tokens
    with _Shapes() as mode, torch.no_grad():
        attention_distance(model, x, batch_size=3, attention_path="chunked", attention_memory=1e-3)
    assert mode.shapes and not _square(mode.shapes, n)
    with _Shapes() as mode, torch.no_grad():
        attention_distance(model, x, batch_size=3, attention_path="full")
    assert _square(mode.shapes, n)


# --------------------------------------------------------------------------- paths

def test_auto_path_falls_back_to_full_maps_where_recomputation_is_not_exact():
    from test_family_windowed import build as windowed
    swin, size, _ = windowed("timm-swin")
    path, note = resolve_attention_path(swin.eval(), "auto")
    assert path == "full" and "window" in note
    with pytest.raises(UnsupportedModelError):
        resolve_attention_path(swin, "chunked")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    r = attention_distance(swin, x, batch_size=2)
    assert r.attention_path == "full" and np.isfinite(r.entropy[0, 0]) and (r.prefix_share[r.heads[:, None] >
                                                                                             np.arange(r.num_heads)] == 0).all()
    assert resolve_attention_path(build("vit"), "auto")[0] == "chunked"
    assert resolve_attention_path(build("vit"), "full")[0] == "full"
    with pytest.raises(ValueError):
        resolve_attention_path(build("vit"), "fast")


def test_windowed_entropy_is_one_for_uniform_window_attention():
    from vitlens.analyses.attention.windowed_distance import windowed_entropy
    from vitlens.models.windows import BlockGeometry
    g = BlockGeometry(grid_size=(4, 4), stride=(16.0, 16.0), window_size=(2, 2), shift=(0, 0), input_size=(64, 64))
    attn = torch.full((2 * 4, 3, 4, 4), 0.25)
    torch.testing.assert_close(windowed_entropy(attn, g), torch.ones(2, 3))
    attn = torch.eye(4).expand(8, 3, 4, 4)
    assert torch.equal(windowed_entropy(attn, g), torch.zeros(2, 3))


# --------------------------------------------------------------------------- the command

@pytest.mark.parametrize("path", ["auto", "full"])
def test_distance_command_writes_entropy_prefix_share_and_the_path(tmp_path, monkeypatch, path):
    import json

    import pandas as pd
    from PIL import Image

    import vitlens.models.loading as models
    from vitlens.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"im{i}.png")
    kw = dict(img_size=56, embed_dim=32, depth=2, num_heads=2)
    orig = models.load_model
    monkeypatch.setattr("vitlens.jobs.common.load_model", lambda n, **k: orig(n, **{**k, **kw}))
    out = tmp_path / "out"
    rc = main(["distance", "--model", "vit_small_patch14_reg4_dinov2", "--random-init", "--images",
               str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2", "--attention-path", path,
               "--attention-memory", "0.01"])
    assert rc == 0
    csv = pd.read_csv(out / "attention_distance.csv")
    assert {"entropy", "prefix_share"} <= set(csv.columns)
    assert csv["entropy"].between(0, 1).all() and csv["prefix_share"].between(0, 1).all()
    assert (csv["prefix_share"] > 0).all()                      # class token and four registers
    assert (out / "attention_entropy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "run.json").read_text())
    ran = rec["models"][0]["attention_path"]
    assert ran == ("chunked" if path == "auto" else "full")
    assert rec["conventions"]["attention_memory_mb"] == 0.01


def test_distance_command_refuses_a_bad_memory_budget(tmp_path):
    from vitlens.cli import main
    (tmp_path / "imgs").mkdir()
    rc = main(["distance", "--model", "vit_tiny_patch16_224", "--random-init", "--images", str(tmp_path / "imgs"),
               "--out", str(tmp_path / "out"), "--attention-memory", "0"])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_auto_reads_whole_maps_that_fit_the_budget_and_forms_rows_for_larger_ones():
    """``auto``: a batch whose whole map fits the budget is read from the model (as fast as its
    forward pass); a larger one is formed a block of query rows at a time; both give one result."""
    model = build("vit")
    x = batch("vit", n=4)
    n, heads = token_layout(model).num_tokens, model.blocks[0].attn.num_heads
    fits_two = 2 * heads * n * n * 4 * 4 / 2 ** 20  # MB: batches of 2 fit, batches of 4 do not
    small = attention_distance(model, x, batch_size=2, attention_path="auto", attention_memory=fits_two)
    large = attention_distance(model, x, batch_size=4, attention_path="auto", attention_memory=fits_two)
    mixed = attention_distance(model, x[:3], batch_size=2, attention_path="auto", attention_memory=fits_two * 0.6)
    assert small.attention_path == "full" and "fit the memory budget" in small.attention_path_note
    assert large.attention_path == "chunked" and mixed.attention_path == "full and chunked"
    for name in ("distance", "entropy", "prefix_share"):
        np.testing.assert_allclose(getattr(large, name), getattr(small, name), rtol=2e-5, atol=2e-5)
