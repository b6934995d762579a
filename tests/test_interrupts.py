"""Ctrl-C at any moment: one line on stderr, exit code 130, no traceback; the folder keeps nothing
of the run or its resumable state, and the same command run again succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODEL = "test_vit"  # timm's tiny test ViT, random weights


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


SLOW_DECODE = """
import time
import PIL.Image

_open = PIL.Image.open


def _slow_open(*args, **kwargs):
    time.sleep(0.25)
    return _open(*args, **kwargs)


PIL.Image.open = _slow_open
"""


def _start(argv, err_path: Path, slow_decode: bool = False) -> subprocess.Popen:
    """Run ``python -m vitlens argv``; with ``slow_decode`` every image takes a quarter of a second
    to open (a ``sitecustomize`` in the child only), so that a fast machine cannot finish the run
    before the test interrupts it."""
    path = str(ROOT)
    if slow_decode:
        site = err_path.parent / "slow_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SLOW_DECODE)
        path = str(site) + os.pathsep + path
    env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vitlens", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(err_path, "w"))


def _interrupt(p: subprocess.Popen, err_path: Path, when, timeout: float = 300) -> str:
    """Send SIGINT once ``when()`` holds (or at once when it is None); return stderr after exit."""
    t0 = time.monotonic()
    while when is not None and not when() and p.poll() is None:
        assert time.monotonic() - t0 < timeout, "the moment to interrupt never came"
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be interrupted: " + err_path.read_text()[-2000:]
    p.send_signal(signal.SIGINT)
    p.wait(timeout=timeout)
    return err_path.read_text()


def _clean_stop(p, err: str) -> None:
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("vitlens:")]
    assert lines, err[-2000:]


def _rerun(argv, tmp_path) -> None:
    err = tmp_path / "rerun.err"
    p = _start(argv, err)
    assert p.wait(timeout=600) == 0, err.read_text()[-3000:]


def test_interrupt_at_start_up(tmp_path, images):
    out = tmp_path / "out"
    argv = ["distance", "--model", MODEL, "--random-init", "--images", str(images), "--out", str(out)]
    err_path = tmp_path / "err"
    p = _start(argv, err_path)
    time.sleep(1.0)  # importing torch and timm
    err = _interrupt(p, err_path, None)
    _clean_stop(p, err)
    assert not out.exists() or not [q for q in out.iterdir() if q.name != ".vitlens-partial"]


def test_interrupt_rollout_mid_run(tmp_path, images):
    out = tmp_path / "out"
    argv = ["rollout", "--model", MODEL, "--random-init", "--images", str(images), "--out", str(out),
            "--batch-size", "1"]
    err_path = tmp_path / "err"
    p = _start(argv, err_path)
    err = _interrupt(p, err_path, lambda: len(list((out / "overlays").glob("*.png"))) >= 2)
    _clean_stop(p, err)
    assert "saving the partial sums" not in err and "keeps no partial state" in err
    assert not out.exists() or not list(out.iterdir())  # no overlays left behind
    _rerun(argv, tmp_path)
    assert len(list((out / "overlays").glob("*.png"))) == 24


def test_interrupt_report_mid_run(tmp_path):
    out = tmp_path / "out"
    argv = ["report", "--out", str(out), "--num-images", "8", "--batch-size", "4", "--sections",
            "distance,posembed,rollout"]
    err_path = tmp_path / "err"
    p = _start(argv, err_path)
    err = _interrupt(p, err_path, lambda: (out / "figures").exists())
    _clean_stop(p, err)
    assert not out.exists() or not list(out.iterdir())
    _rerun(argv, tmp_path)
    assert (out / "index.html").exists()


@pytest.mark.parametrize("command", ["distance", "erf"])
def test_interrupt_resumable_job_mid_run(tmp_path, images, command):
    out = tmp_path / "out"
    argv = [command, "--model", MODEL, "--random-init", "--images", str(images), "--out", str(out),
            "--batch-size", "1"]
    err_path = tmp_path / "err"
    p = _start(argv, err_path, slow_decode=True)
    err = _interrupt(p, err_path, lambda: "/24" in err_path.read_text() and " 2/24" in err_path.read_text())
    _clean_stop(p, err)
    assert "--resume" in err
    assert [q.name for q in out.iterdir()] == [".vitlens-partial"]
    _rerun(argv + ["--resume"], tmp_path)
    assert not (out / ".vitlens-partial").exists()
