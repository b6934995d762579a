"""`vitlens distance` end to end: files, numbers equal to a direct computation, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import vitlens
from vitlens.analyses.attention.distance import mean_attention_distance
from vitlens.cli import main
from vitlens.data import ImageSet

TINY = "vit_tiny_patch16_224"


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    (d / "broken.jpg").write_text("not a jpeg")
    return d


@pytest.fixture
def tiny_ckpt(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    m = vitlens.load_model(TINY, pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    with torch.no_grad():  # sharper attention than random init, so heads differ
        for blk in m.blocks:
            blk.attn.qkv.weight.mul_(8)
    path = tmp_path / "tiny.safetensors"
    save_file(m.state_dict(), str(path))
    return path


def _direct(model, images):
    imgs = ImageSet.for_model(model, images)
    layout = vitlens.token_layout(model)
    per = []
    with torch.no_grad(), vitlens.capture_attention(model) as cap:
        for x, _ in imgs.batches(2):
            model(x)
    for a in cap.maps:
        per.append(mean_attention_distance(a, layout).numpy())
    return np.stack(per)  # [layer, image, head]


def test_cli_writes_csv_equal_to_direct_computation(tmp_path, image_dir, tiny_ckpt, monkeypatch):
    import vitlens.models.loading as models
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    orig = models.load_model
    monkeypatch.setattr("vitlens.jobs.common.load_model", lambda n, **k: orig(n, **{**k, **kw}))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="broken.jpg"):
        rc = main(["distance", "--model", TINY, "--checkpoint", str(tiny_ckpt), "--images", str(image_dir),
                   "--out", str(out), "--batch-size", "3"])
    assert rc == 0
    for f in ["attention_distance.csv", "attention_distance.png", "attention_distance.svg", "run.json"]:
        assert (out / f).stat().st_size > 0
    assert (out / "attention_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(out / "attention_distance.csv")
    # the same columns as with several models: the model first
    assert list(csv.columns[:6]) == ["model", "layer", "head", "distance_px", "std_px", "low95_px"]
    assert len(csv) == 3 * 2 and (csv["n_images"] == 5).all()
    assert (csv["model"] == f"{TINY} ({tiny_ckpt.name})").all()
    model = orig(TINY, checkpoint=tiny_ckpt, **kw)
    with pytest.warns(UserWarning):
        direct = _direct(model, image_dir)
    np.testing.assert_allclose(csv["distance_px"].to_numpy(), direct.mean(1).ravel(), rtol=1e-5)
    np.testing.assert_allclose(csv["std_px"].to_numpy(), direct.std(1, ddof=1).ravel(), rtol=1e-4)
    assert csv["distance_px"].nunique() == len(csv)  # heads differ: the comparison is not vacuous
    run = json.loads((out / "run.json").read_text())
    m = run["models"][0]
    assert m["images"]["n_images"] == 5 and m["images"]["skipped"][0]["path"].endswith("broken.jpg")
    assert m["weights"].startswith("checkpoint:") and m["token_layout"]["grid_size"] == [4, 4]
    assert run["conventions"]["prefix_tokens"] == "renormalize" and "timm" in run["versions"]


def test_several_models_share_one_csv_and_figure(tmp_path, image_dir):
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        rc = main(["distance", "--model", TINY, "--model", "deit_tiny_distilled_patch16_224", "--random-init",
                   "--images", str(image_dir), "--num-images", "3", "--out", str(out)])  # broken.jpg sorts first
    assert rc == 0
    csv = pd.read_csv(out / "attention_distance.csv")
    assert csv["model"].nunique() == 2 and (csv["n_images"] == 2).all()
    assert list(csv.columns[:6]) == ["model", "layer", "head", "distance_px", "std_px", "low95_px"]


def test_existing_results_need_overwrite(tmp_path, image_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "attention_distance.csv").write_text("old")
    rc = main(["distance", "--model", TINY, "--random-init", "--images", str(image_dir), "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "attention_distance.csv").read_text() == "old"


def test_only_bad_images_exit_2(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.png").write_text("no")
    with pytest.warns(UserWarning):
        rc = main(["distance", "--model", TINY, "--random-init", "--images", str(d), "--out", str(tmp_path / "o")])
    assert rc == 2 and "could be read" in capsys.readouterr().err
    assert not (tmp_path / "o" / "attention_distance.csv").exists()


def test_cnn_is_refused_clearly(tmp_path, image_dir, capsys):
    rc = main(["distance", "--model", "resnet18", "--random-init", "--images", str(image_dir),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "ResNet has no ViT patch embedding" in err and "Traceback" not in err
