"""Every CSV vitlens writes keeps full precision: counts exact, floats round-trip to the last bit."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

import numpy as np
import pandas as pd
import pytest
import torch

from vitlens.cli import main
from vitlens.runtime.io import save_csv

BIG = 5717416_000_003          # a count with more than 6 (and more than 15) significant digits
FLOAT = 0.12345678901234568     # a float64 that needs all 17 significant digits
PACKAGE = Path(__file__).resolve().parents[1] / "vitlens"


def test_save_csv_round_trips_large_integers_and_float64_exactly(tmp_path):
    frame = pd.DataFrame({"count": np.array([BIG, 7], dtype=np.int64),
                          "x": np.array([FLOAT, 1e-300], dtype=np.float64),
                          "mixed": pd.Series([5717416, FLOAT], dtype=object)})
    save_csv(tmp_path / "t.csv", frame)
    text = (tmp_path / "t.csv").read_text()
    assert "5717416" in text and "e+06" not in text
    back = pd.read_csv(tmp_path / "t.csv", float_precision="round_trip")
    assert back["count"].tolist() == [BIG, 7]
    assert back["x"].tolist() == [FLOAT, 1e-300]            # bit-exact, not 6 significant digits
    assert float(back["mixed"][0]) == 5717416 and float(back["mixed"][1]) == FLOAT


def test_every_csv_the_package_writes_goes_through_save_csv():
    """One writer, so one precision: no module but runtime/io.py calls ``to_csv`` or a csv writer
    for results (data/shapes.py writes its label file of names and whole numbers)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text()
        if rel != "runtime/io.py" and re.search(r"\.to_csv\(|float_format", text):
            offenders.append(rel)
    assert offenders == []


def test_cost_csv_counts_are_exact(tmp_path):
    from vitlens.models.loading import load_model

    out = tmp_path / "cost"
    assert main(["cost", "--vit", "vitlens/vit-tiny-shapes", "--input-size", "64", "--batch-size", "1",
                 "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    model = load_model("vitlens/vit-tiny-shapes")
    total = sum(p.numel() for p in model.parameters())
    text = (out / "cost.csv").read_text()
    assert not re.search(r"\de[+-]\d", text)            # no number cut to a mantissa and an exponent
    df = pd.read_csv(out / "cost.csv")
    row = df[(df.quantity == "parameters") & (df.part == "total")]
    assert float(row.value.iloc[0]) == total
    line = next(l for l in text.splitlines() if ",parameters,total," in l)
    assert f",{total}," in line                          # written as the whole number itself
    flops = df[(df.quantity == "flops")].value
    assert all(float(v) == int(float(v)) for v in flops)


@pytest.mark.parametrize("command", ["distance", "erf"])
def test_analysis_csvs_keep_float64(tmp_path, command):
    """The per-head and per-layer values of a CSV equal the result's float64 numbers exactly."""
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / command
    assert main([command, "--model", "vitlens/vit-tiny-shapes", "--images", str(imgs), "--out", str(out)]) == 0
    name = {"distance": "attention_distance.csv", "erf": "receptive_field.csv"}[command]
    text = (out / name).read_text()
    numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[+-]\d+)?", text)
    digits = [len(re.sub(r"^[-0.]+", "", n.split("e")[0]).replace(".", "")) for n in numbers]
    assert numbers and max(digits) > 6                   # float64 values carry more than 6 significant digits
