"""Help and argument errors answer before torch is imported; a misspelt option names the closest one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "transformers", "open_clip")


def _imported(argv):
    """``(return code, stderr, heavy packages imported)`` of ``python -X importtime -m vitlens argv``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitlens", *argv], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    names = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    return r.returncode, r.stderr, sorted(n for n in names if n.split(".")[0] in HEAVY)


@pytest.mark.parametrize("argv, code, needle", [
    (["distance", "--help"], 0, None),
    (["distance", "--model", "m", "--images", "x", "--out", "o", "--batch-size", "0"], 2,
     "--batch-size must be at least 1"),
    (["distance", "--modle", "vit_small_patch16_224", "--images", "x", "--out", "o"], 2, "did you mean --model?"),
    (["distance", "--images", "x", "--out", "o", "--prefix-token", "discard", "--unit", "px", "--bogus"], 2,
     "unrecognized arguments: --bogus"),
    (["rollout", "--help"], 0, None),
    (["rollout", "--model", "m", "--images", "x", "--out", "o", "--sheet-max", "0"], 2, "--sheet-max must be at least 1"),
    (["--help"], 0, None),
])
def test_help_and_argument_errors_do_not_import_torch(argv, code, needle):
    rc, err, heavy = _imported(argv)
    assert rc == code, err[-2000:]
    assert heavy == [], heavy
    if needle:
        assert needle in err and "Traceback" not in err


def test_suggestion_names_the_closest_option(capsys):
    from vitlens.cli import main

    with pytest.raises(SystemExit) as e:
        main(["distance", "--images", "x", "--out", "o", "--precison", "bf16"])
    assert e.value.code == 2 and "did you mean --precision?" in capsys.readouterr().err
