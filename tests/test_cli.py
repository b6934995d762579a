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
    from vitlens.runtime.errors import ModelLoadError
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


def test_help_needs_no_torch():
    """``vitlens --help`` lists every command without importing torch (well under a second)."""
    code = ("import sys, contextlib, io\nfrom vitlens.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)\nprint(buf.getvalue())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    first, *rest = r.stdout.splitlines()
    assert first == "False False"
    from vitlens.cli import COMMAND_HELP
    assert all(name in "\n".join(rest) for name in COMMAND_HELP)


def test_command_list_matches_each_command():
    import argparse

    from vitlens.cli import COMMAND_HELP, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert {k: helps[k] for k in COMMAND_HELP} == COMMAND_HELP


@pytest.mark.parametrize("argv, needle", [
    (["info", "--model", "vitlens/vit-tiny-shapes", "--device", "cuda"], "--device cpu"),
    (["info", "--model", "vitlens/vit-tiny-shapes", "--device", "gpu"], "is not a torch device"),
    (["posembed", "--model", "vitlens/vit-tiny-shapes", "--batch-size", "0", "--out", "OUT"], "--batch-size must be at least 1"),
    (["distance", "--model", "vitlens/vit-tiny-shapes", "--images", "x", "--workers", "-1", "--out", "OUT"], "--workers"),
    (["info", "--model", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"], "--model vit_tiny_patch16_224"),
    (["posembed", "--model", "hf-hub:", "--out", "OUT"], "names no repository"),
    (["posembed", "--model", "hf-hub:timm/vit_tiny_patch16_224", "--random-init", "--out", "OUT"], "--random-init"),
])
def test_user_mistakes_are_user_errors(argv, needle, tmp_path, capsys):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = main([str(tmp_path / "o") if a == "OUT" else a for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert "looks like a bug" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_advice_names_only_flags_the_command_accepts():
    from vitlens.cli import _fit_advice

    msg = "Pass a local checkpoint: --checkpoint PATH on the command line (use --random-init for random weights)."
    compare = {"--vit", "--cnn", "--vit-checkpoint", "--cnn-checkpoint", "--random-init"}
    assert _fit_advice(msg, compare) == ("Pass a local checkpoint: --vit-checkpoint or --cnn-checkpoint PATH on "
                                         "the command line (use --random-init for random weights).")
    report = {"--vit", "--cnn", "--vit-checkpoint", "--cnn-checkpoint"}
    assert "--random-init" not in _fit_advice(msg, report)
    assert _fit_advice(msg, {"--checkpoint", "--random-init"}) == msg


def test_info_reads_a_shipped_model(capsys):
    assert main(["info", "--model", "vitlens/vit-tiny-shapes"]) == 0
    out = capsys.readouterr().out
    assert "8 px patches, 6 attention blocks, 4 heads per block" in out
    assert "weights: bundled with vitlens" in out


def test_pdf_beside_every_figure(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["posembed", "--model", "vitlens/vit-tiny-shapes", "--out", str(out), "--pdf"]) == 0
    assert (out / "pos_embed_similarity.pdf").read_bytes()[:5] == b"%PDF-"
    plain = tmp_path / "q"
    assert main(["posembed", "--model", "vitlens/vit-tiny-shapes", "--out", str(plain)]) == 0
    assert not list(plain.glob("*.pdf"))
