"""What vitlens prints says what happened: captions claim only what is known, CKA says how many
images and minibatches it averaged and warns when they are small, distances carry their units in
words, and nothing but vitlens's own lines reaches the terminal (no profiler or logging lines, no
warning inside a progress bar, no cursor codes in a log)."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import batch, build
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("KINETO_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


# ---- captions -----------------------------------------------------------------------------------

def _scores(label: bool) -> pd.DataFrame:
    frame = pd.DataFrame({"model": ["m", "m"], "image": ["a.png", "b.png"], "readout": ["cls", "cls"],
                          "predicted": [1, 2]})
    if label:
        frame["label"] = [1, 3]
    return frame


def test_rollout_caption_claims_the_true_class_only_where_it_is_known():
    from vitlens.report.sections import rollout_section

    own = rollout_section(_scores(label=False), [("m", "figures/rollout.png")]).figures[0].alt
    assert "true" not in own.replace("true class of these images is not known", "")
    assert "predicted class" in own
    shapes = rollout_section(_scores(label=True), [("m", "figures/rollout.png")]).figures[0].alt
    assert "true and predicted class" in shapes


# ---- CKA ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cka11(one_thread):
    from vitlens import layer_cka

    vit, x = build("vit"), batch("vit", n=11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        four = layer_cka(vit, x, batch_size=4)
        whole = layer_cka(vit, x, batch_size=32)
    return four, whole, [str(w.message) for w in caught]


def test_cka_says_which_minibatches_it_averaged(cka11):
    four, whole, _ = cka11
    assert whole.minibatches() == "11 images in 1 minibatch of 11"
    assert four.minibatches() == "8 images in 2 minibatches of 4; 3 images in 1 shorter minibatch (under 4) left out"
    assert (four.n_images, four.n_batches, four.n_images_dropped) == (8, 2, 3)
    r = dataclasses.replace(whole, n_images=13, n_batches=2, batch_size=8)
    assert r.minibatches() == "13 images in 2 minibatches of up to 8 (mean 6.5)"
    assert four.to_dict()["minibatches"] == four.minibatches()


def test_cka_warns_about_small_minibatches(cka11):
    four, whole, messages = cka11
    assert four.small_minibatch() and whole.small_minibatch()
    assert len(messages) == 2 and all("noisy" in m and "at least 32" in m for m in messages)
    big = dataclasses.replace(whole, n_images=64, n_batches=2, batch_size=32)
    assert not big.small_minibatch() and big.reliability_note() == "" and big.to_dict()["warning"] is None
    from vitlens.runtime.display import summary_rows
    assert ("warning", four.reliability_note()) in summary_rows(four)[1]
    assert "warning" not in dict(summary_rows(big)[1])


def test_cka_command_summary_and_warning(tmp_path, capsys, one_thread):
    from vitlens.cli import main

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    with pytest.warns(UserWarning, match="noisy.*--batch-size 32 or more"):
        assert main(["cka", "--model", "vitlens/vit-tiny-shapes", "--images", str(d), "--out",
                     str(tmp_path / "o"), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "8 images in 2 minibatches of 4; 3 images in 1 shorter minibatch (under 4) left out" in out
    assert "minibatches of 32" not in out


# ---- units in words ---------------------------------------------------------------------------------

def test_distances_are_worded_in_their_units():
    from vitlens.jobs.distance import in_units

    assert in_units(0.5, "fraction") == "0.500 of the image side"
    assert in_units(3.94, "patches") == "3.94 patches"
    assert in_units(1.0, "patches") == "1.00 patch"
    assert in_units(31.46, "px") == "31.5 px"


def test_distance_summary_in_fractions(tmp_path, capsys, one_thread):
    from cli_runs import run

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "a.png")
    assert run(["distance", "--model", "vitlens/vit-tiny-shapes", "--images", str(d), "--out", str(tmp_path / "o"),
                "--units", "fraction"]) == 0
    out = capsys.readouterr().out
    assert "of the image side in layer 1" in out and " fraction" not in out


# ---- nothing but vitlens on the terminal ----------------------------------------------------------

def test_cost_profile_prints_nothing_and_names_the_loaded_model():
    r = _python("import vitlens\n"
                "m = vitlens.load_model('vitlens/vit-tiny-shapes')\n"
                "p = vitlens.cost_profile([m, m], [64], repeats=1, warmup=0, measure_throughput=False)\n"
                "print(sorted(str(n) for n in set(p.model)))\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr                    # no profiler_start/stop, no GPU query error
    assert "['vitlens/vit-tiny-shapes #1', 'vitlens/vit-tiny-shapes #2']" in r.stdout


def test_quiet_profiler_keeps_other_output():
    r = _python("import os, sys\n"
                "from vitlens.runtime.quiet import quiet_profiler\n"
                "with quiet_profiler():\n"
                "    os.write(2, b'USDT:2026-12-02 04:17:23 1:1 SyncActivityProfilerHandler.cpp:39] profiler_start\\n')\n"
                "    os.write(2, b'a line of its own\\n')\n"
                "    print('from python', file=sys.stderr)\n"
                "print('after', file=sys.stderr)\n")
    assert r.returncode == 0 and r.stderr == "a line of its own\nfrom python\nafter\n", r.stderr


def test_open_clip_random_weights_print_nothing_and_leave_logging_alone():
    pytest.importorskip("open_clip")
    r = _python("import logging, vitlens\n"
                "m = vitlens.load_model('open_clip:ViT-S-32', pretrained=False)\n"
                "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
                "logging.warning('a later warning')\n")
    assert r.returncode == 0, r.stderr
    assert "WARNING:root:No pretrained" not in r.stderr and "No pretrained weights" not in r.stderr
    assert "WARNING:root:a later warning" in r.stderr   # the root logger is configured as Python would


def test_skipped_files_are_reported_after_the_progress_bar(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    (d / "1b.jpg").write_text("not a jpeg")
    r = _python("import sys; from vitlens.cli import main\n"
                f"sys.exit(main(['distance', '--model', 'vitlens/vit-tiny-shapes', '--images', {str(d)!r}, "
                f"'--out', {str(tmp_path / 'o')!r}, '--batch-size', '1']))\n")
    assert r.returncode == 0, r.stderr
    assert "img/s" in r.stderr                                   # the bar was drawn
    lines = [ln for ln in r.stderr.split("\n") if "skipped" in ln]
    assert len(lines) == 1 and lines[0].split("\r")[-1].startswith("vitlens: warning: skipped")
    assert "\x1b[" not in r.stderr


def test_nested_bars_in_a_log_are_hidden(monkeypatch):
    from vitlens.runtime.progress import progress_bar, write_message

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=2, desc="outer") as outer:
        with progress_bar(total=2, desc="inner") as inner:
            inner.update(2)
            write_message("a message\n")
        outer.update(2)
    text = log.getvalue()
    assert "outer" in text and "inner" not in text and "\x1b[" not in text
    assert "\na message\n" in text or text.split("a message")[0].endswith("\r")
