"""Interrupted runs resume to the uninterrupted result; two processes write the one-process files;
the same inputs give identical files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from cli_runs import run, torchrun
from PIL import Image

import vitlens.jobs.distance as job
from vitlens.runtime.resume import StopRequest, partial_path

MODEL = "test_vit"  # timm's tiny test ViT: 160 px, 10 x 10 patches, 6 blocks of width 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    (d / "bad.png").write_text("not a png")
    return d


def _args(images, out, *extra):
    return ["distance", "--model", MODEL, "--random-init", "--images", str(images), "--out", str(out),
            "--batch-size", "2", *extra]



def _csv(out):
    return pd.read_csv(out / "attention_distance.csv")


def test_same_inputs_give_identical_files(tmp_path, images):
    assert run(_args(images, tmp_path / "a")) == 0
    assert run(_args(images, tmp_path / "b")) == 0
    assert (tmp_path / "a" / "attention_distance.csv").read_bytes() == \
        (tmp_path / "b" / "attention_distance.csv").read_bytes()


class _StopAfter(StopRequest):
    """Behaves as if SIGINT arrived after ``n`` batches."""

    n = 2

    def __enter__(self):
        super().__enter__()
        self._checks = 0
        return self

    @property
    def requested(self):
        self._checks += 1
        return self._checks > self.n

    @requested.setter
    def requested(self, value):
        pass

    @property
    def signal_name(self):
        return "SIGINT"

    @signal_name.setter
    def signal_name(self, value):
        pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path, images, monkeypatch, capsys):
    assert run(_args(images, tmp_path / "full")) == 0
    out = tmp_path / "cut"
    monkeypatch.setattr(job, "StopRequest", _StopAfter)
    rc = run(_args(images, out))
    assert rc == 130 and "--resume" in capsys.readouterr().err
    assert partial_path(out, "distance").exists()
    assert not (out / "attention_distance.csv").exists()  # nothing that looks complete
    monkeypatch.setattr(job, "StopRequest", StopRequest)
    assert run(_args(images, out, "--resume")) == 0
    a, b = _csv(tmp_path / "full"), _csv(out)
    assert (b["n_images"] == 9).all()
    np.testing.assert_allclose(b["distance_px"], a["distance_px"], rtol=1e-6)
    np.testing.assert_allclose(b["std_px"], a["std_px"], rtol=1e-4)
    assert not partial_path(out, "distance").exists()
    import json
    rec = json.loads((out / "run.json").read_text())
    assert [s["path"].endswith("bad.png") for s in rec["models"][0]["images"]["skipped"]] == [True]


def test_resume_refuses_another_command(tmp_path, images, monkeypatch, capsys):
    out = tmp_path / "cut"
    monkeypatch.setattr(job, "StopRequest", _StopAfter)
    run(_args(images, out))
    monkeypatch.setattr(job, "StopRequest", StopRequest)
    capsys.readouterr()
    assert run(_args(images, out, "--resume", "--prefix-tokens", "discard")) == 2
    assert "another command" in capsys.readouterr().err


def test_real_sigterm_saves_partial_state(tmp_path, images):
    big = tmp_path / "many"
    big.mkdir()
    for i in range(40):
        shutil.copy(images / f"{i % 9:02d}.png", big / f"{i:03d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vitlens", *_args(big, out)[:-2], "--batch-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    buf = ""
    while "img" not in buf and time.time() < deadline:  # the progress bar has started
        buf += p.stderr.read(1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "--resume" in err and partial_path(out, "distance").exists()
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert (_csv(out)["n_images"] == 40).all()


def test_two_processes_write_the_one_process_files(tmp_path, images):
    torchrun(_args(images, tmp_path / "two"))
    assert run(_args(images, tmp_path / "one")) == 0
    one, two = _csv(tmp_path / "one"), _csv(tmp_path / "two")
    assert (two["n_images"] == 9).all()
    np.testing.assert_allclose(two["distance_px"], one["distance_px"], rtol=1e-6)
    np.testing.assert_allclose(two["std_px"], one["std_px"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(two["low95_px"], one["low95_px"], rtol=1e-6)
    import json
    rec = json.loads((tmp_path / "two" / "run.json").read_text())
    assert rec["processes"] == 2 and len(rec["models"][0]["images"]["skipped"]) == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_signals_say_what_happens_and_a_second_ctrl_c_waits_for_the_save(capsys):
    with StopRequest() as stop:
        stop._handler(signal.SIGINT, None)
        assert stop.requested and stop.signal_name == "SIGINT"
        assert "finishing this batch, then saving" in capsys.readouterr().err
        with stop.saving():
            stop._handler(signal.SIGINT, None)  # while saving: no KeyboardInterrupt
        assert "finishing the save first" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            stop._handler(signal.SIGINT, None)  # outside the save, a second Ctrl-C stops at once
