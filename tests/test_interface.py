"""One interface: every name the README uses imports; outputs are named alike for one model or
several; the help names every kind of model and shows every default; the pixel limit of images
can be raised from the command line."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_names() -> set[str]:
    """Names the README calls on vitlens: ``vitlens.name``, and backticked ``name(`` or
    ``plot_*`` / ``*_figure`` words."""
    names = set(re.findall(r"\bvitlens\.([A-Za-z_]\w*)", README))
    names |= set(re.findall(r"`([a-z_][a-z0-9_]*)\(", README))
    names |= {w for w in re.findall(r"`([a-z_][a-z0-9_]*)`", README) if w.startswith("plot_") or w.endswith("_figure")}
    # ``callback=f`` then ``f(layer, attn)``: the user's own function; ``softmax(q k^T ...)``: a formula
    return names - {"f", "softmax"}


def test_every_name_the_readme_uses_imports():
    import vitlens

    names = _readme_names()
    figures = {n for n in names if n.startswith("plot_") or n.endswith("_figure")}
    assert len(figures) >= 20, figures                            # the list of figure functions is there
    for name in sorted(names):
        if hasattr(vitlens, name):
            continue
        importlib.import_module(f"vitlens.{name}")                # a subpackage (vitlens.data, ...)
    import vitlens.plotting as plotting
    for name in sorted(figures):
        assert getattr(plotting, name) is getattr(vitlens, name), name
        assert name in vitlens.__all__ and name in plotting.__all__, name
    for names_ in plotting.FIGURES.values():                      # and every figure function is listed
        assert set(names_) <= figures, set(names_) - figures


def test_import_vitlens_loads_neither_torch_nor_matplotlib():
    code = ("import sys, vitlens, vitlens.plotting\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'timm') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "vitlens.plot_cka; vitlens.plotting.cost_figure\n"
            "assert 'matplotlib' not in sys.modules  # the plotting modules import it when drawing\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr


def _parsers():
    from vitlens.cli import COMMAND_HELP, build_parser

    for command in ["info", *COMMAND_HELP]:
        parser = build_parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        yield command, sub.choices[command]


def test_every_model_option_names_every_kind_of_model():
    seen = 0
    for command, p in _parsers():
        for action in p._actions:
            if set(action.option_strings) & {"--model", "--vit", "--cnn"}:
                seen += 1
                for prefix in ("hf:", "torchvision:", "open_clip:", "vitlens zoo"):
                    assert prefix in action.help, (command, action.option_strings, prefix)
    assert seen >= 10


def test_help_shows_every_default():
    for command, p in _parsers():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            d = action.default
            if (not action.option_strings or d in (None, False, [], argparse.SUPPRESS)
                    or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction))):
                continue
            shown = p._get_formatter()._get_help_string(action) % {"default": d}
            assert "default" in shown, (command, action.option_strings)
        if command in ("distance", "cka", "rollout", "erf", "compare"):
            assert "--batch-size N images per forward pass (default: 32)" in text, command
        if command == "cost":
            assert "--batch-size N images per forward pass (default: 8)" in text


def test_max_image_pixels_reaches_the_image_reader(tmp_path, capsys):
    from PIL import Image as PILImage

    from cli_runs import run

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "a.png")       # 4,096 pixels
    before = PILImage.MAX_IMAGE_PIXELS
    argv = ["distance", "--model", "vitlens/vit-tiny-shapes", "--images", str(d)]
    assert run(argv + ["--out", str(tmp_path / "small"), "--max-image-pixels", "4000"]) == 2
    err = capsys.readouterr().err
    assert "could be read" in err and "over the limit of 4000" in err
    assert run(argv + ["--out", str(tmp_path / "fits"), "--max-image-pixels", "4096"]) == 0
    assert run(argv + ["--out", str(tmp_path / "none"), "--max-image-pixels", "0"]) == 0
    assert PILImage.MAX_IMAGE_PIXELS == before                                # Pillow's own limit untouched


def test_pixel_limit_is_the_blocks_only(tmp_path):
    from vitlens.data.images import DEFAULT_MAX_PIXELS, ImageSet, pixel_limit
    from vitlens.models.loading import load_model

    m = load_model("vitlens/vit-tiny-shapes")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with pixel_limit(144_000_000):
        assert ImageSet.for_model(m, [tmp_path]).max_pixels == 144_000_000
        assert ImageSet.for_model(m, [tmp_path], max_pixels=10).max_pixels == 10   # an explicit one wins
    with pixel_limit(None):
        assert ImageSet.for_model(m, [tmp_path]).max_pixels is None
    assert ImageSet.for_model(m, [tmp_path]).max_pixels == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("n_models", [1, 2])
def test_outputs_are_named_alike_for_one_model_or_several(tmp_path, n_models, capsys):
    import pandas as pd

    from cli_runs import run

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "a.png")
    names = ["vitlens/vit-tiny-shapes", "vitlens/vit-tiny-shapes-10pct"][:n_models]
    models = [a for n in names for a in ("--model", n)]
    assert run(["distance", *models, "--images", str(d), "--out", str(tmp_path / "d")]) == 0
    csv = pd.read_csv(tmp_path / "d" / "attention_distance.csv")
    assert list(csv.columns[:4]) == ["model", "layer", "head", "distance_px"]
    assert sorted(csv.model.unique()) == names
    assert run(["posembed", *models, "--out", str(tmp_path / "p")]) == 0
    npys = sorted(p.name for p in (tmp_path / "p").glob("*.npy"))
    assert npys == sorted(f"pos_embed_similarity_{n.replace('/', '_')}.npy" for n in names)
