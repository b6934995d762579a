"""The command line: info, zoo, and one-paragraph errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vitlens.cli import main


def test_info_prints_layout_and_blocks(capsys):
    assert main(["info", "--model", "deit_tiny_distilled_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "grid 14 x 14 patches of stride 16 px" in out
    assert "prefix tokens: cls, dist" in out
    assert "attention blocks: 12" in out


def test_info_dynamic_size(capsys):
    assert main(["info", "--model", "vit_small_patch14_dinov2", "--input-size", "224"]) == 0
    assert "grid 16 x 16 patches of stride 14 px" in capsys.readouterr().out


def test_unknown_model_is_one_paragraph(capsys):
    assert main(["info", "--model", "vit_tiny_patch16_22"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlens: error: unknown model") and "Traceback" not in err


def test_debug_shows_the_traceback():
    from vitlens.errors import ModelLoadError
    with pytest.raises(ModelLoadError):
        main(["info", "--model", "vit_tiny_patch16_22", "--debug"])


def test_checkpoints_pair_with_models(capsys):
    assert main(["info", "--model", "vit_tiny_patch16_224", "--checkpoint", "a", "--checkpoint", "b"]) == 2
    assert "pairs with the --model" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "vitlens", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "info" in r.stdout


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path, capsys):
    from vitlens.cli import main

    out = tmp_path / "new" / "out"
    rc = main(["distance", "--model", "resnet10t", "--random-init", "--images", str(tmp_path / "missing"),
               "--out", str(out)])
    assert rc == 2 and not out.exists()
    keep = tmp_path / "kept"
    keep.mkdir()
    rc = main(["distance", "--model", "resnet10t", "--random-init", "--images", str(tmp_path / "missing"),
               "--out", str(keep)])
    assert rc == 2 and keep.is_dir()  # a folder the user made is never removed
