"""The report's readings follow the numbers, masks follow the model's preprocessing, and reruns and
look-alike models stay apart."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import timm.data
from conftest import batch, build
from PIL import Image

from vitlens.analyses.attention.streaming import attention_distance
from vitlens.cli import main
from vitlens.data.masks import model_mask as _model_mask
from vitlens.report import sections as sec


@pytest.fixture(scope="module")
def base():
    return attention_distance(build("vit"), batch("vit"), name="full")


def _with(d, values, name):
    return dataclasses.replace(d, distance=np.asarray(values, dtype=float), model=name)


@pytest.mark.parametrize("full_frac, less_frac, expect", [
    ([0.9, 0.9], [0.95, 0.95], "Neither model has a local head"),
    ([0.2, 0.9], [0.95, 0.95], "fewer local heads with less data"),
    ([0.95, 0.95], [0.2, 0.9], "less data did not cost local heads"),
])
def test_less_data_verdict_follows_the_counts(base, full_frac, less_frac, expect):
    L, H = base.distance.shape  # 2 layers x 2 heads: the lower half is layer 1
    u = base.uniform
    full = _with(base, np.array([full_frac, [0.9, 0.9]]) * u, "full")
    less = _with(base, np.array([less_frac, [0.9, 0.9]]) * u, "less")
    s = sec.data_section(full, less, 0.5)
    text = " ".join(s.reading)
    assert expect in text
    nf, _, mf = sec.local_heads(full, 0.5)
    nl, _, ml = sec.local_heads(less, 0.5)
    assert nf == sum(v < 0.5 for v in full_frac) and nl == sum(v < 0.5 for v in less_frac)
    assert ("farther" if ml > mf else "nearer") in text
    assert f"{abs(ml - mf):.1f} px" in text


def test_position_wording_follows_the_correlation():
    assert sec._trend(-0.5).startswith("falls")
    assert sec._trend(0.4).startswith("rises")
    assert sec._trend(-0.05).startswith("hardly changes")
    assert sec._trend(float("nan")).startswith("cannot")


def test_locality_wording_follows_the_numbers():
    class R:
        def __init__(self, s):
            self._s = s

        def summary(self):
            return self._s

    s = sec.locality_section(R({
        "v": {"kind": "vit", "input_px": 64.0, "attention_first_px": 3.0, "attention_last_px": 9.0,
              "erf_first_px": 5.0, "erf_last_px": 4.0},
        "c": {"kind": "cnn", "input_px": 64.0, "erf_first_px": 2.0, "erf_last_px": 8.0}}))
    text = s.reading[1]
    assert "3.0 px of attention distance, and its first block" in text  # ERF larger: "and", not "but"
    assert "shrinks to 4.0 px" in text and "c's receptive field grows from 2.0 px" in text


def test_rollout_wording_names_the_readout():
    frame = pd.DataFrame({"model": ["g"] * 2, "image": ["a", "b"], "readout": ["patch_mean"] * 2,
                          "predicted": [0, 1]})
    s = sec.rollout_section(frame, "g")
    assert "patch tokens" in s.reading[0] and "class token)" in s.reading[0]
    assert "No object masks for g" in s.reading[1]


@pytest.mark.parametrize("crop_pct, crop_mode", [(0.875, "center"), (0.9, "squash"), (1.0, "center")])
def test_masks_take_the_image_geometry(crop_pct, crop_mode):
    """A white rectangle through the model's image transform lands where its mask lands."""
    cfg = dict(input_size=(3, 64, 64), crop_pct=crop_pct, crop_mode=crop_mode, interpolation="bilinear",
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t = timm.data.create_transform(**cfg, is_training=False)
    mask = np.zeros((90, 120), dtype=bool)
    mask[20:70, 10:60] = True
    img = Image.fromarray((mask[..., None] * np.full(3, 255)).astype(np.uint8))
    x = t(img).numpy().mean(0) * 0.5 + 0.5   # back to [0, 1]
    m = _model_mask(mask, t)
    assert m.shape == x.shape == (64, 64)
    assert np.mean((x > 0.5) == (m > 0.5)) > 0.99
    assert abs(x.mean() - m.mean()) < 0.01


def test_unknown_geometry_is_not_guessed():
    import torchvision.transforms as T

    t = T.Compose([T.RandomRotation(30), T.ToTensor()])
    assert _model_mask(np.ones((8, 8), dtype=bool), t) is None


def test_overwrite_replaces_the_previous_report(tmp_path, capsys):
    out = tmp_path / "r"
    fast = ["--erf-images", "2", "--batch-size", "8"]
    assert main(["report", "--out", str(out), "--num-images", "6", *fast]) == 0
    assert main(["report", "--out", str(out), "--num-images", "3", "--seed", "1", "--overwrite", *fast]) == 0
    assert len(list((out / "shapes" / "images").glob("*.png"))) == 3
    rec = json.loads((out / "run.json").read_text())
    assert all(m["images"]["n_images"] == 3 for m in rec["models"][:2])
    assert "seed 1" in rec["images"]
    # the images of a previous report are not read while it is being replaced
    rc = main(["report", "--out", str(out), "--overwrite", "--vit", "vitlens/vit-tiny-shapes",
               "--images", str(out / "shapes" / "images")])
    assert rc == 2 and "previous report" in capsys.readouterr().err
    assert (out / "index.html").is_file()


def test_look_alike_checkpoints_stay_apart(tmp_path):
    from safetensors.torch import save_file

    from vitlens.models.loading import load_model

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    sd = load_model("vitlens/vit-tiny-shapes").state_dict()
    for run, scale in (("a", 1.0), ("b", 0.5)):
        (tmp_path / run).mkdir()
        save_file({k: (v * scale if k.endswith("qkv.weight") else v).contiguous() for k, v in sd.items()},
                  tmp_path / run / "model.safetensors")
    out = tmp_path / "cmp"
    rc = main(["compare", "--vit", "vitlens/vit-tiny-shapes", "--vit", "vitlens/vit-tiny-shapes",
               "--vit-checkpoint", str(tmp_path / "a" / "model.safetensors"),
               "--vit-checkpoint", str(tmp_path / "b" / "model.safetensors"),
               "--images", str(imgs), "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out / "locality.csv")
    names = list(dict.fromkeys(df.model))
    assert len(names) == 2 and "a/model.safetensors" in names[0] and "b/model.safetensors" in names[1]
    heads = df[df.metric == "attention_distance"].groupby("model").size()
    assert (heads == 6 * 4).all()


def test_cka_readings_say_what_the_matrices_show():
    from types import SimpleNamespace

    from vitlens.report.similarity_cost import cka_reading

    gradual = np.array([[1.0, 0.9, 0.6], [0.9, 1.0, 0.9], [0.6, 0.9, 1.0]])
    ordered = np.array([[0.8, 0.3, 0.1], [0.2, 0.7, 0.4], [0.1, 0.2, 0.9]])
    crossed = np.array([[0.1, 0.2, 0.8], [0.2, 0.7, 0.4], [0.9, 0.2, 0.1]])
    me = SimpleNamespace(cka=gradual, model_a="vit", layers_a=("b0", "b1", "b2"))
    lines = cka_reading(me, SimpleNamespace(cka=ordered, model_a="vit", model_b="cnn", layers_a=("b0", "b1", "b2"),
                                            layers_b=("s1", "s2", "s3")))
    assert "neighbouring blocks have a mean CKA of 0.90, its first and last blocks 0.60" in lines[0]
    assert "gradually" in lines[0]
    assert "its first block (b0) is most similar to cnn's s1 (CKA 0.80)" in lines[1]
    assert "highest CKA between the two is 0.90 (b2 and s3)" in lines[1]
    assert "goes s1, s2, s3: it never moves to an earlier layer" in lines[2]
    lines = cka_reading(me, SimpleNamespace(cka=crossed, model_a="vit", model_b="cnn", layers_a=("b0", "b1", "b2"),
                                            layers_b=("s1", "s2", "s3")))
    assert "goes s3, s2, s1: not in the CNN's order" in lines[2]
    flat = SimpleNamespace(cka=np.array([[1.0, 0.5], [0.5, 1.0]]), model_a="vit", layers_a=("b0", "b1"))
    assert "gradually" not in cka_reading(flat)[0]


def test_sweep_reading_says_what_the_runs_show():
    runs = pd.DataFrame({"grid": [8, 8, 16], "distinct_images": [500, 50000, 500], "steps": [10, 10, 5],
                         "accuracy": [0.5, 0.8, 0.3], "uniform_px": [33.1, 33.1, 33.3],
                         "local_threshold_px": [16.5, 16.5, 16.6], "local_heads_lower": [0, 0, 0],
                         "local_heads_upper": [0, 0, 0], "mean_distance_lower_px": [31.9, 31.4, 33.4],
                         "min_distance_px": [29.0, 28.1, 32.5]})
    text = sec.sweep_reading(runs)
    assert "3 runs of the same ViT trained from scratch on 500 to 50,000 distinct images" in text
    assert "no run grows a local head in any layer" in text
    assert "on the 8 x 8 grid the lower layers' mean distance stays between 31.4 and 31.9 px (uniform 33.1 px) " \
           "at 50 to 80% held-out accuracy" in text
    runs.loc[1, "local_heads_lower"] = 3
    assert "3 local heads appear across the runs" in sec.sweep_reading(runs)
