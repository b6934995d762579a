"""``vitlens report``: the offline default on the shipped models, the page in a headless browser,
custom models and images, and its errors."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitlens.analyses.attention.streaming import attention_distance
from vitlens.cli import main
from vitlens.data.images import ImageSet
from vitlens.models.loading import load_model

FIGURES = ["attention_distance.png", "position_embeddings.png", "rollout.png",
           "rollout_vitlens_vit-tiny-shapes-10pct.png", "rollout_mask_share.png", "locality.png",
           "receptive_field.png", "less_data.png", "cka.png", "skip.png", "localization.png",
           "cost.png", "locality_sweep.png"]  # 16 images: too few for 10-shot probes of 8 classes
EXPLORER_PICK = (1, 3, 2, 10)  # image, layer (from 1), head (from 1), query patch


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["report", "--out", str(out), "--num-images", "16", "--batch-size", "8"])
    assert rc == 0
    return out, buf.getvalue()


def test_default_report_says_why_it_did_not_probe_16_images(report):
    out, _ = report
    page = " ".join((out / "index.html").read_text().split())
    assert "The probes were not run: 10-shot probes need at least 11 images in every class" in page
    assert not (out / "figures" / "probes.png").exists() and not (out / "data" / "probe.csv").exists()


def test_default_report_writes_a_complete_page(report):
    out, stdout = report
    assert stdout.strip().splitlines()[-1] == f"open {(out / 'index.html').resolve()}"
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(s.split("/")[-1] for s in srcs) == sorted(FIGURES)
    for s in srcs:
        assert (out / s).stat().st_size > 1000
    for title in ("Mean attention distance by depth", "Position-embedding similarity", "Attention rollout",
                  "ViT versus CNN locality", "Representation similarity (CKA)", "What a ViT costs next to a CNN",
                  "Less training data: local heads", "Run record"):
        assert title in page
    for link in re.findall(r'href="(data/[^"]+)"', page):
        assert (out / link).is_file(), link
    rec = json.loads((out / "run.json").read_text())
    assert [m["name"] for m in rec["models"]] == ["vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct",
                                                  "vitlens/resnet-tiny-shapes"]
    assert all(m["images"]["n_images"] == 16 for m in rec["models"])
    assert len(list((out / "shapes" / "images").glob("*.png"))) == 16


def test_report_numbers_are_the_analyses(report):
    """The page's attention distances are those of the analysis run directly on the same files."""
    out, _ = report
    df = pd.read_csv(out / "data" / "attention_distance.csv")
    vit = load_model("vitlens/vit-tiny-shapes")
    d = attention_distance(vit, ImageSet.for_model(vit, [out / "shapes" / "images"]))
    got = df[df.model == "vitlens/vit-tiny-shapes"].distance_px.to_numpy()
    np.testing.assert_allclose(got, d.distance.ravel(), rtol=1e-5)
    page = (out / "index.html").read_text()
    assert f"{d.distance.mean(1)[0]:.2f} / {d.distance.mean(1)[-1]:.2f} px" in page
    scores = pd.read_csv(out / "data" / "rollout_scores.csv")
    assert scores.mask_share.between(0, 1).all() and scores.mask_area.between(0, 1).all()
    # a trained model's rollout puts more of its mass on the object than the object's area would
    g = scores[scores.model == "vitlens/vit-tiny-shapes"]
    assert g.mask_share.mean() > g.mask_area.mean()


def test_report_cka_and_cost_are_the_analyses(report):
    """The CKA and cost sections hold the numbers of the analyses run directly on the same files."""
    from vitlens.analyses.representations.cka import layer_cka
    from vitlens.report.similarity_cost import cka_reading

    out, _ = report
    vit, cnn = load_model("vitlens/vit-tiny-shapes"), load_model("vitlens/resnet-tiny-shapes")
    files = [out / "shapes" / "images"]
    cross = layer_cka(vit, ImageSet.for_model(vit, files), cnn, images_b=ImageSet.for_model(cnn, files), batch_size=8)
    df = pd.read_csv(out / "data" / "cka.csv")
    got = df[df.model_b == "vitlens/resnet-tiny-shapes"].cka.to_numpy().reshape(cross.cka.shape)
    np.testing.assert_allclose(got, cross.cka, atol=1e-6)  # the CSV holds 6 decimals
    page = " ".join((out / "index.html").read_text().split())
    self_cka = layer_cka(vit, ImageSet.for_model(vit, files), batch_size=8)
    for line in cka_reading(self_cka, cross):
        assert line.replace("'", "&#x27;") in page or line in page, line
    cost = pd.read_csv(out / "data" / "cost.csv")
    total = cost[(cost.quantity == "parameters") & (cost.part == "total") & (cost.input_px == 64)]  # own size
    assert dict(zip(total.model, total.value)) == {"vitlens/vit-tiny-shapes": sum(p.numel() for p in vit.parameters()),
                                                   "vitlens/resnet-tiny-shapes": sum(p.numel() for p in cnn.parameters())}
    assert sorted(set(cost.input_px)) == [64, 128, 256]


def _captured(out):
    """The shipped ViT's exact attention on the explorer's images, patch rows and columns."""
    import torch

    from vitlens.capture.attention import capture_attention
    from vitlens.report.explorer import decode_rows

    js = (out / "data" / "explorer.js").read_text()
    data = json.loads(js[js.index("=") + 1:].strip().rstrip(";"))
    vit = load_model("vitlens/vit-tiny-shapes")
    files = sorted((out / "shapes" / "images").glob("*.png"))[:len(data["images"])]
    assert [e["name"] for e in data["images"]] == [f.name for f in files]
    x = torch.cat([b for b, _ in ImageSet.for_model(vit, files).batches(8)])
    with capture_attention(vit) as cap, torch.no_grad():
        vit(x)
    att = np.stack([m[:, :, 1:, 1:].numpy() for m in cap.maps], 1)  # [image, layer, head, query, key]
    return data, att, decode_rows


def test_explorer_data_are_the_captured_maps(report):
    out, _ = report
    data, att, decode_rows = _captured(out)
    assert (data["num_layers"], data["num_heads"], data["num_patches"]) == att.shape[1:4] == (6, 4, 64)
    for i in range(len(data["images"])):
        stored = decode_rows(data, i)
        bound = att[i].max(-1, keepdims=True) / 510 + 1e-6   # the stated quantisation
        assert (np.abs(stored - att[i]) <= bound).all()
    df = pd.read_csv(out / "data" / "attention_distance.csv")
    got = df[df.model == "vitlens/vit-tiny-shapes"].distance_px.to_numpy()
    np.testing.assert_allclose(np.ravel(data["head_distance_px"]), got, atol=1e-4)
    page = (out / "index.html").read_text()
    assert 'src="data/explorer.js"' in page and "Attention explorer" in page
    assert "counted from 1 on this page" in page


def test_report_page_loads_every_figure_in_chromium(report):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    out, _ = report
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", "--virtual-time-budget=10000",
           "--dump-dom", (out / "index.html").resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom)
    assert m, "the page's load check did not run"
    assert m.group(1) == m.group(2) == str(len(FIGURES))
    # and the check can fail: a page with a missing figure reports it
    broken = out / "broken.html"
    broken.write_text((out / "index.html").read_text().replace("figures/locality.png", "figures/missing.png"))
    dom = subprocess.run(cmd[:-1] + [broken.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-figures-loaded="{len(FIGURES) - 1}/{len(FIGURES)}"' in dom
    assert "figure missing: figures/missing.png" in dom
    # the explorer loads and shows the captured attention of the picked head and query
    image, layer, head, query = EXPLORER_PICK
    url = (out / "index.html").resolve().as_uri() + f"#explorer={image},{layer},{head},{query}"
    dom = subprocess.run(cmd[:-1] + [url], capture_output=True, text=True, timeout=120).stdout
    assert 'data-explorer="ready"' in dom
    shown = json.loads(html.unescape(re.search(r'<pre id="ex-values"[^>]*>(.*?)</pre>', dom, re.S).group(1)))
    data, att, _ = _captured(out)
    row = att[image, layer - 1, head - 1, query]
    assert (shown["image"], shown["layer"], shown["head"], shown["query"]) == (image, layer - 1, head - 1, query)
    np.testing.assert_allclose(shown["values"], row, atol=row.max() / 510 + 1e-6)
    d = data["head_distance_px"][layer - 1][head - 1]
    assert f"layer {layer}, head {head}: mean attention distance {d:.1f} px" in dom


def test_report_on_given_models_and_images_without_masks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "photos"
    imgs.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(imgs / f"p{i}.jpg")
    (imgs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "r"
    rc = main(["report", "--vit", "vitlens/vit-tiny-shapes", "--cnn", "vitlens/resnet-tiny-shapes",
               "--images", str(imgs), "--out", str(out)])
    assert rc == 0
    page = (out / "index.html").read_text()
    assert "No object masks for vitlens/vit-tiny-shapes" in page
    assert "Less training data" not in page and not (out / "shapes").exists()
    assert not (out / "figures" / "rollout_mask_share.png").exists()
    rec = json.loads((out / "run.json").read_text())
    assert rec["models"][0]["images"]["n_images"] == 5
    assert [s["path"].endswith("broken.jpg") for s in rec["models"][0]["images"]["skipped"]] == [True]


@pytest.mark.parametrize("argv, needle", [
    (["--cnn", "vitlens/vit-tiny-shapes"], "--vit"),
    (["--vit", "vitlens/resnet-tiny-shapes"], "--cnn"),
    (["--vit-checkpoint", "x.pth"], "--vit"),
    (["--num-images", "0"], "at least 1"),
])
def test_report_errors(argv, needle, tmp_path, capsys):
    rc = main(["report", *argv, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r" / "index.html").exists()


def test_report_refuses_to_overwrite(report, capsys):
    out, _ = report
    rc = main(["report", "--out", str(out), "--num-images", "4"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_readme_figures_exist():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    links = re.findall(r"\]\((figures/[^)]+)\)", (root / "README.md").read_text())
    assert len(links) >= 7
    for link in links:
        assert (root / link).is_file(), link


def test_readme_numbers_are_the_figures_numbers():
    """The numbers the README quotes for the shipped models are those analyses/make_figures.py wrote."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = " ".join((root / "README.md").read_text().split())
    s = json.loads((root / "figures" / "summary.json").read_text())
    vit, cnn = s["locality"]["vitlens/vit-tiny-shapes"], s["locality"]["vitlens/resnet-tiny-shapes"]
    r = s["rollout"]["vitlens/vit-tiny-shapes"]
    for text in (f"{vit['attention_first_px']:.1f} px in layer 1 and {vit['attention_last_px']:.1f} px in layer 6",
                 f"against {vit['uniform_attention_px']:.1f} px",
                 f"({vit['erf_first_px']:.1f} px in block 1, {vit['erf_last_px']:.1f} px in block 6)",
                 f"grows from {cnn['erf_first_px']:.1f} px to {cnn['erf_last_px']:.1f} px",
                 f"{100 * r['mask_share']:.0f}% of the rollout mass", f"covers {100 * r['mask_area']:.0f}% of the input",
                 f"({100 * s['rollout']['vitlens/vit-tiny-shapes-10pct']['pointing_hit']:.0f}% for the"):
        assert text in readme, text
    assert r["pointing_hit"] == 1.0 and "every one of the 200 images" in readme
    pe = s["position_embeddings"]["vitlens/vit-tiny-shapes"]
    for text in (f"hardly correlates with distance (r = {pe['distance_correlation_all']:+.2f})",
                 f"(border contrast {pe['border_contrast']:+.2f})",
                 f"falls with distance (r = {pe['distance_correlation_interior']:+.2f})",
                 f"(row/column score {pe['row_column_score']:+.2f})"):
        assert text in readme, text
    assert abs(pe["distance_correlation_all"]) < 0.1 and pe["distance_correlation_interior"] < -0.3
    assert pe["border_contrast"] > 0.5 and pe["row_column_score"] > 0
    k = s["cka"]
    for text in (f"(mean CKA {k['self']['adjacent_mean']:.2f}; its first and last blocks {k['self']['first_last']:.2f})",
                 f"CKA {k['cross']['max']:.2f} between {k['cross']['layer_a']} and the ResNet's stem "
                 f"{k['cross']['layer_b']}"):
        assert text in readme, text
    v, c = "vitlens/vit-tiny-shapes", "vitlens/resnet-tiny-shapes"
    sk, lo, pr = s["skip"], s["localization"], s["probes"]
    for text in (f"of {sk[v]['mean']:.2f} (attention {sk[v]['by_sublayer']['attention']:.2f}, MLP "
                 f"{sk[v]['by_sublayer']['mlp']:.2f}) against {sk[c]['mean']:.2f} for the ResNet's",
                 f"({sk[v]['prefix_first']:.2f} against {sk[v]['patch_first']:.2f} in the first half, "
                 f"{sk[v]['prefix_second']:.2f} against {sk[v]['patch_second']:.2f} in the second)",
                 f"{100 * lo[v]['own_patch_share']:.0f}% of the ViT's last-block tokens",
                 f"(CKA {lo[v]['cka_own']:.2f} at the own patch against {lo[v]['cka_other']:.2f} elsewhere)",
                 f"(CKA {lo[c]['cka_own']:.2f} at the own patch, {lo[c]['cka_other']:.2f} elsewhere)",
                 f"rise from {100 * pr[v]['cls']['first']:.0f}% in its first block to {100 * pr[v]['cls']['last']:.0f}% "
                 f"in its last", f"patch tokens reaches {100 * pr[v]['gap']['last']:.0f}% and single tokens "
                 f"{100 * pr[v]['token']['last']:.0f}%", f"features reach {100 * pr[c]['gap']['last']:.0f}%"):
        assert text in readme, text
    # the directions the readings state
    assert sk[v]["mean"] > sk[c]["mean"]
    assert sk[v]["prefix_first"] < sk[v]["patch_first"] and sk[v]["prefix_second"] < sk[v]["patch_second"]
    assert lo[v]["cka_own"] - lo[v]["cka_other"] > lo[c]["cka_own"] - lo[c]["cka_other"]
    assert pr[v]["cls"]["last"] > pr[v]["gap"]["last"] > pr[v]["token"]["last"]
    cost = " ".join(s["cost_reading"])
    for text in ("from 256 px (1025 tokens) on, and are 0.67 of them at 128 px", "peaks at 0.61 times",
                 "FLOPs grow as pixels^1.40 for the ViT and pixels^1.00 for the ResNet"):
        assert text in readme, text
    for fact in ("from 256 px (1025 tokens, ", "at 128 px (257 tokens) they are 0.67 of them", "0.61 times",
                 "pixels^1.40", "pixels^1.00"):
        assert fact in cost, fact
    full, less = s["local_heads"]["vitlens/vit-tiny-shapes"], s["local_heads"]["vitlens/vit-tiny-shapes-10pct"]
    assert f"most local heads look {full['min_head_px']:.1f} and {less['min_head_px']:.1f} px" in readme
    # "neither has a head below half the distance of even attention in any layer"
    assert min(full["min_head_px"], less["min_head_px"]) > 0.5 * full["uniform_px"]
    assert full["local_heads_lower_layers"] == less["local_heads_lower_layers"] == 0
