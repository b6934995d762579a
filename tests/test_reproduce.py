"""vitlens reproduce / fetch: the presets, their runs on random weights, the readings, and offline use.

The default tests run every preset end to end through the same code path as a real run, with the
preset's checkpoints swapped for timm's small test architectures (``swap``, documented in the README)
and random weights; the same runs on the presets' real architectures are marked slow.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vitlens
from vitlens.presets import PRESETS, get_preset, preset_help
from vitlens.report.papers.analyses import RUNNERS
from vitlens.report.papers.readings import read_figure, random_filter_share
from vitlens.runtime.errors import ModelLoadError, VitlensError

from cli_runs import run as cli


def tiny_swap(preset) -> dict[str, str]:
    """Every checkpoint of ``preset`` run as timm's small test ViT or ResNet."""
    return {c: ("test_resnet" if c.startswith("resnet") else "test_vit") for c in preset.checkpoints}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four images in an ImageNet-validation-like layout: one folder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for i in range(4):
        d = root / f"n0000000{i % 2}"
        d.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (180, 200, 3), dtype=np.uint8)).save(d / f"img{i}.jpg")
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty hub cache, the hub switched off: nothing can be downloaded."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


# --------------------------------------------------------------------------- the registry


def test_every_checkpoint_is_a_timm_pretrained_name():
    import timm

    known = set(timm.list_pretrained())
    for p in PRESETS.values():
        assert p.checkpoints, p.id
        for c in p.checkpoints:
            assert c in known, (p.id, c)
            assert p.checkpoint_notes.get(c), (p.id, c)


def test_every_analysis_has_a_runner_and_the_figures_are_named():
    assert set(PRESETS) >= {"vit-fig7", "raghu-locality", "raghu-representations", "pretraining"}
    for p in PRESETS.values():
        assert set(p.analyses) <= set(RUNNERS), p.id
        assert len({f.key for f in p.figures}) == len(p.figures)
        assert p.finding.count(". ") == 0 and p.finding.endswith("."), p.id  # one sentence


def test_help_lists_presets_checkpoints_images_and_findings(capsys):
    with pytest.raises(SystemExit):
        cli(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for p in PRESETS.values():
        assert p.id in text and " ".join(p.finding.split()) in text
        assert all(c in text for c in p.checkpoints)
    assert "128 (attention_distance)" in text and "5000 (attention_distance)" in text
    assert "32 (effective_receptive_field)" in text
    assert preset_help().count("checkpoints:") == len(PRESETS)


def test_unknown_preset_and_swap_are_refused(photos, tmp_path):
    with pytest.raises(VitlensError, match="raghu-locality"):
        get_preset("raghu")
    with pytest.raises(VitlensError, match="does not use"):
        vitlens.reproduce("vit-fig7", photos, tmp_path / "o", random_init=True, swap={"resnet50": "test_vit"})
    rr = PRESETS["raghu-representations"]
    with pytest.raises(VitlensError, match="at least 4 images"):
        vitlens.reproduce(rr, photos, tmp_path / "o2", random_init=True, num_images=3, swap=tiny_swap(rr))
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------- end to end, random weights


def _check_outputs(out, preset, res):
    record = json.loads((out / "run.json").read_text())
    page = (out / "index.html").read_text()
    assert "random weights" in page and "nothing here is evidence" in page
    assert len(res.figures) == len(preset.figures)
    for f in preset.figures:
        assert res.figures[f.label].is_file() and res.figures[f.label].stat().st_size > 5000
        assert f.finding in page.replace("&#x27;", "'")
        assert res.verdicts[f.label] in ("shown", "not shown", "partly shown", "pending", "no verdict")
    for fig in record["figures"]:
        for panel in fig["panels"]:
            if not panel["pending"]:
                assert any(panel["analysis"] in p.name for p in res.data), panel["analysis"]
    return record, page


@pytest.mark.parametrize("preset_id", list(PRESETS))
def test_every_preset_runs_on_random_weights(preset_id, photos, tmp_path, one_thread):
    p = PRESETS[preset_id]
    start = time.perf_counter()
    res = vitlens.reproduce(p, photos, tmp_path / "out", random_init=True, num_images=4, batch_size=4,
                            swap=tiny_swap(p), progress=False)
    record, page = _check_outputs(tmp_path / "out", p, res)
    assert record["random_init"] is True and record["swap"] == tiny_swap(p)
    for c in p.checkpoints:
        assert f"{c} ran as {tiny_swap(p)[c]}" in page  # every swap is named on the page
    pending = {f.label: p2.analysis for f in p.figures for p2 in f.panels
               if p2.analysis in ("skip_ratios", "spatial_localization")}
    for label, fn in pending.items():  # panels of analyses still to come say what they wait for
        if hasattr(vitlens, fn):
            assert res.verdicts[label] != "pending"
        else:
            assert res.verdicts[label] == "pending" and fn in page
    assert time.perf_counter() - start < 240


def test_the_command_line_runs_a_preset(photos, tmp_path, capsys, one_thread):
    p = PRESETS["vit-fig7"]
    swaps = [a for c, n in tiny_swap(p).items() for a in ("--swap", f"{c}={n}")]
    assert cli(["reproduce", "vit-fig7", "--images", str(photos), "--out", str(tmp_path / "o"), "--random-init",
                "--num-images", "2", *swaps]) == 0
    out = capsys.readouterr().out
    assert "Fig. 7:" in out and "index.html" in out
    assert (tmp_path / "o" / "figures" / "vit-fig7_fig7.png").is_file()
    frame = __import__("pandas").read_csv(tmp_path / "o" / "data" / "fig7_attention_distance.csv")
    assert set(frame["n_images"]) == {2} and frame["layer"].min() == 0


def test_csv_holds_the_analysis_numbers(photos, tmp_path, one_thread):
    """The preset's distance CSV equals the public function's result on the same model and images."""
    import pandas as pd

    from vitlens.data.images import ImageSet
    from vitlens.jobs.common import load_models

    p = PRESETS["pretraining"]
    vitlens.reproduce(p, photos, tmp_path / "o", random_init=True, num_images=2, seed=3, swap=tiny_swap(p),
                      progress=False)
    frame = pd.read_csv(tmp_path / "o" / "data" / "selfsup_attention_distance.csv")
    (m,) = load_models([("test_vit", None)], random_init=True, seed=3)
    ref = vitlens.attention_distance(m, ImageSet.for_model(m, [photos], num_images=2))
    mine = frame[frame["checkpoint"] == "vit_base_patch16_224.mae"].sort_values(["layer", "head"])
    np.testing.assert_allclose(mine["distance_px"].to_numpy(), ref.distance.ravel(), rtol=1e-5)


def test_a_model_an_analysis_cannot_read_leaves_the_other_figures(photos, tmp_path, one_thread):
    """A CNN without residual units the skip ratios read (MobileNetV3 here): that panel says so."""
    p = PRESETS["raghu-representations"]
    swap = {**tiny_swap(p), "resnetv2_50x1_bit.goog_in21k": "mobilenetv3_small_050"}
    res = vitlens.reproduce(p, photos, tmp_path / "o", random_init=True, num_images=4, swap=swap, progress=False)
    assert res.verdicts["Fig. 7"] == "pending" and res.verdicts["Fig. 1"] != "pending"
    assert "cannot read one of its models" in (tmp_path / "o" / "index.html").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("preset_id", list(PRESETS))
def test_every_preset_runs_on_its_real_architectures(preset_id, photos, tmp_path):
    p = PRESETS[preset_id]
    res = vitlens.reproduce(p, photos, tmp_path / "out", random_init=True, num_images=4, batch_size=4,
                            progress=False)
    _check_outputs(tmp_path / "out", p, res)


# --------------------------------------------------------------------------- readings from numbers


def _distance(values, uniform=100.0, model="m"):
    d = np.asarray(values, dtype=float)
    return SimpleNamespace(distance=d, uniform=uniform, num_layers=d.shape[0], num_heads=d.shape[1], units="px",
                           model=model)


def _runs(panel, results, checkpoints=None):
    from vitlens.report.papers.analyses import PanelRun

    r = PanelRun(panel)
    for i, x in enumerate(results):
        r.add(x, getattr(x, "model", getattr(x, "model_a", "")), (checkpoints or panel.checkpoints)[i], 1)
    return r


def test_distance_reading_counts_local_and_global_heads():
    fig = PRESETS["vit-fig7"].figures[0]
    panel = fig.panels[2]
    shows = _distance([[10, 90, 40, 85], [50, 60, 70, 80], [95, 96, 97, 98]])  # 2 local, 2 global in block 1
    rd = read_figure(fig, [_runs(panel, [shows])], {})
    assert rd.verdicts == [True, True]
    assert "lowest block: 2 of 4 heads below half the uniform distance (local) and 2 at or above 80%" in rd.lines[0]
    flat = _distance([[60, 70, 65, 62], [60, 70, 65, 62], [61, 70, 65, 62]])  # no local head; no growth
    rd = read_figure(fig, [_runs(panel, [flat])], {})
    assert rd.verdicts == [False, False] and rd.verdict == "not shown"
    assert "unlike" in rd.lines[0] and "does not grow" in rd.lines[1]


def test_twin_reading_compares_local_heads_with_the_bigger_data_twin():
    p = PRESETS["raghu-locality"]
    fig3, fig4 = p.figures[0], p.figures[1]
    top = [[99, 99, 99], [98, 97, 99]]
    big = _runs(fig3.panels[0], [_distance([[10, 20, 90], [10, 95, 96], *top], model=n) for n in "abc"])
    small = _runs(fig4.panels[0], [_distance([[60, 20, 90], [70, 95, 96], *top], model="d"),
                                   _distance([[10, 20, 90], [10, 95, 96], *top], model="e")])
    rd = read_figure(fig4, [small], {"fig3": [big]})
    assert rd.verdicts == [True, False]  # 1 local against 3; then 3 against 3
    assert "1 of 6 heads local in blocks 1-2, against 3 of 6" in rd.lines[0]
    rd3 = read_figure(fig3, [big], {})
    assert rd3.verdicts == [True, True, True]


def test_filter_reading_uses_the_random_filter_baseline():
    # Gaussian filters: the literal PCA share of the first k components, computed here with numpy.
    x = np.random.default_rng(0).standard_normal((64, 48))
    s = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    assert random_filter_share((64, 3, 4, 4), 5) == pytest.approx(s[:5].sum() / s.sum(), rel=1e-9)
    # one filter direction plus a little noise: the first component holds almost everything
    from vitlens.analyses.embeddings.filters import EmbeddingFilters

    fig = PRESETS["vit-fig7"].figures[0]
    ratio = np.array([0.9, 0.02, 0.02])
    r = EmbeddingFilters("m", np.zeros((3, 3, 4, 4)), ratio, np.zeros((3, 4, 4)), (64, 3, 4, 4), 3)
    rd = read_figure(fig, [_runs(fig.panels[0], [r])], {})
    assert rd.verdicts == [True] and "94.0%" in rd.lines[0]


def test_erf_reading_compares_when_each_field_turns_global():
    fig = PRESETS["raghu-locality"].figures[2]

    def field(kind, spread, model):
        n = len(spread)
        return SimpleNamespace(kind=kind, model=model, spread_px=np.array(spread, float),
                               uniform_spread_px=np.full(n, 100.0), depth_fraction=np.linspace(0, 1, n))

    vit = field("vit", [30, 85, 90, 95, 96], "v")   # global from depth 0.25
    cnn = field("cnn", [5, 10, 20, 40, 81], "c")    # global only at the last layer
    rd = read_figure(fig, [_runs(fig.panels[0], [vit, cnn])], {})
    assert rd.verdicts == [True] and "from depth 0.25" in rd.lines[0] and "from depth 1.00" in rd.lines[0]
    rd = read_figure(fig, [_runs(fig.panels[0], [cnn, field("vit", [5, 10, 20, 40, 50], "v")])], {})
    assert rd.verdicts == [False] and "never" in rd.lines[0]


def test_cka_readings_compare_far_layers_and_where_the_resnet_matches():
    p = PRESETS["raghu-representations"]
    fig1, fig2 = p.figures[0], p.figures[1]
    depth = np.linspace(0, 1, 4)

    def cka(values, a, b, da=depth, db=depth):
        return SimpleNamespace(cka=np.asarray(values, float), model_a=a, model_b=b, depth_fraction_a=da,
                               depth_fraction_b=db)

    i, j = np.meshgrid(depth, depth, indexing="ij")
    uniform = cka(1 - 0.1 * np.abs(i - j), "vit", "vit")   # far pairs (|i - j| >= 0.5): 0.9333, 0.9, 0.9333
    blocky = cka(1 - 0.8 * np.abs(i - j), "cnn", "cnn")    # 0.4667, 0.2, 0.4667
    rd = read_figure(fig1, [_runs(fig1.panels[0], [uniform]), _runs(fig1.panels[1], [blocky])], {})
    assert rd.verdicts == [True] and "mean CKA 0.92 in vit and 0.38 in cnn" in rd.lines[0]
    # ResNet layers at depth 0, 1/3 (lower half) are most similar to ViT layers 0 and 0: mean 0 < 1/6
    cross = cka([[0.9, 0.8, 0.1, 0.1], [0.2, 0.3, 0.5, 0.1], [0.1, 0.1, 0.2, 0.3], [0, 0, 0.1, 0.9]], "vit", "cnn")
    rd = read_figure(fig2, [_runs(fig2.panels[0], [cross], ["a vs b"])], {})
    assert rd.verdicts == [True] and "(mean depth 0.17)" in rd.lines[0] and "mean depth 0.00" in rd.lines[0]


def test_skip_and_localisation_readings():
    p = PRESETS["raghu-representations"]
    fig7, fig9 = p.figures[2], p.figures[3]
    vit = SimpleNamespace(kind="vit", model="v", ratio=np.array([[[4.0, 6.0]], [[np.inf, 2.0]]]))
    cnn = SimpleNamespace(kind="cnn", model="c", ratio=np.array([[[1.0]], [[2.0]]]))
    rd = read_figure(fig7, [_runs(fig7.panels[0], [vit, cnn])], {})
    assert rd.verdicts == [True] and "4.00 in v, 1.50 in c" in rd.lines[0]  # inf left out: (4 + 6 + 2) / 3
    loc = dict(layer="blocks.11", cka_own=0.5, cka_other=0.1)
    v = SimpleNamespace(kind="vit", model="v", own_patch_share=0.75, **loc)
    c = SimpleNamespace(kind="cnn", model="c", own_patch_share=0.8, **loc)
    rd = read_figure(fig9, [_runs(fig9.panels[0], [v, c])], {})
    assert rd.verdicts == [False] and "75% of v's tokens" in rd.lines[0] and "80% of c's" in rd.lines[0]


# --------------------------------------------------------------------------- offline


def test_offline_error_names_the_checkpoints_and_the_fetch_command(photos, tmp_path, offline_cache, capsys):
    start = time.perf_counter()
    for p in PRESETS.values():
        with pytest.raises(ModelLoadError) as err:
            vitlens.reproduce(p, photos, tmp_path / p.id)
        msg = str(err.value)
        assert all(c in msg for c in p.checkpoints), msg
        assert f"vitlens fetch {p.id}" in msg and "--random-init" in msg
        assert not (tmp_path / p.id).exists()
    assert cli(["reproduce", "pretraining", "--images", str(photos), "--out", str(tmp_path / "cli")]) == 2
    assert "vitlens fetch pretraining" in " ".join(capsys.readouterr().err.split())
    assert time.perf_counter() - start < 20


def test_offline_error_names_only_what_the_cache_lacks(photos, tmp_path, offline_cache):
    from vitlens.models.hub_cache import hub_repository

    p = PRESETS["pretraining"]
    have = p.checkpoints[0]
    snap = offline_cache / ("models--" + hub_repository(have).replace("/", "--")) / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    (snap / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError) as err:
        vitlens.reproduce(p, photos, tmp_path / "o")
    assert have not in str(err.value) and all(c in str(err.value) for c in p.checkpoints[1:])


def _cache_with(root, hub_id: str, model) -> None:
    """A hub cache folder holding ``model``'s weights under ``hub_id``, as a download leaves it."""
    from safetensors.torch import save_file

    repo = root / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))


def test_a_preset_runs_offline_from_the_hub_cache(photos, tmp_path, offline_cache, one_thread):
    """Pretrained weights (not random ones) come from a hub cache built here, with the hub off."""
    import timm

    torch.manual_seed(5)
    weights = timm.create_model("test_vit", pretrained=False)
    _cache_with(offline_cache, "timm/test_vit.r160_in1k", weights)
    p = PRESETS["vit-fig7"]
    swap = {c: "test_vit.r160_in1k" for c in p.checkpoints}
    res = vitlens.reproduce(p, photos, tmp_path / "o", num_images=2, swap=swap, progress=False)
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["random_init"] is False
    filters = record["figures"][0]["panels"][0]["results"][0]
    ref = vitlens.embedding_filters(weights)
    np.testing.assert_allclose(filters["explained_variance_ratio"], ref.explained_variance_ratio, rtol=1e-6)
    assert "random weights" not in res.page.read_text()


def test_fetch_fails_clearly_without_network(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        vitlens.fetch("vit-fig7")
    assert "not reachable" in str(err.value)
    assert all(n in str(err.value) for n in PRESETS["vit-fig7"].checkpoints)
    assert cli(["fetch", "raghu-locality"]) == 2
    assert "not reachable" in capsys.readouterr().err
    assert time.perf_counter() - start < 20


def test_fetch_keeps_what_is_cached(tmp_path, offline_cache, capsys):
    from vitlens.models.hub_cache import hub_repository

    p = PRESETS["vit-fig7"]
    for name in p.checkpoints:
        snap = offline_cache / ("models--" + hub_repository(name).replace("/", "--")) / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap.parent.parent / "refs").mkdir()
        (snap.parent.parent / "refs" / "main").write_text("0" * 40)
        (snap / "model.safetensors").write_bytes(b"x")
    assert vitlens.fetch(p) == []
    assert capsys.readouterr().out.count("already in the hub cache") == len(p.checkpoints)
