"""Multi-process runs that fail or are interrupted: one process raising or signalled stops them all
within seconds, with its own error, and a signalled run resumes to the one-process result."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from cli_runs import run, torchrun
from PIL import Image

from vitlens.runtime.resume import partial_path

pytestmark = pytest.mark.usefixtures("one_thread")

# Loaded at interpreter start-up (sitecustomize) in every process of the run; only rank 1 acts.
INJECT = '''
import os
if os.environ.get("RANK") == "1":
    import vitlens.data.images as images

    _batches = images.ImageSet.batches

    def batches(self, *args, **kwargs):
        for i, batch in enumerate(_batches(self, *args, **kwargs)):
            if i == 1:
                {action}
            yield batch

    images.ImageSet.batches = batches
'''
FAIL = 'raise RuntimeError("injected failure at the second batch")'
SIGNAL = "import signal; os.kill(os.getpid(), signal.SIGTERM)"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    return d


def _inject(tmp_path, action: str) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(INJECT.replace("{action}", action))
    return {"PYTHONPATH": str(site)}


def _args(command, images, out):
    extra = ["--layer", "blocks.0"] if command == "erf" else []
    return [command, "--model", "vitlens/vit-tiny-shapes", "--random-init", "--images", str(images),
            "--out", str(out), "--batch-size", "2", *extra]


@pytest.mark.parametrize("command", ["distance", "rollout"])  # erf shares the distance loop
def test_a_failing_process_ends_the_run_with_its_error(tmp_path, images, command):
    start = time.monotonic()
    r = torchrun(_args(command, images, tmp_path / "out"), check=False, env=_inject(tmp_path, FAIL), timeout=120)
    assert time.monotonic() - start < 60
    assert r.returncode != 0
    assert "injected failure at the second batch" in r.stderr
    assert "process 1 of 2 failed (RuntimeError: injected failure at the second batch)" in r.stderr
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_signalled_process_stops_every_process_and_the_run_resumes(tmp_path, images):
    out = tmp_path / "out"
    r = torchrun(_args("distance", images, out), check=False, env=_inject(tmp_path, SIGNAL), timeout=120)
    assert r.returncode != 0 and "interrupted by SIGTERM" in r.stderr
    assert partial_path(out, "distance", 0).exists() and partial_path(out, "distance", 1).exists()
    torchrun(_args("distance", images, out) + ["--resume"])
    assert run(_args("distance", images, tmp_path / "one")) == 0
    one, two = pd.read_csv(tmp_path / "one" / "attention_distance.csv"), pd.read_csv(out / "attention_distance.csv")
    assert (two["n_images"] == 12).all()
    np.testing.assert_allclose(two["distance_px"], one["distance_px"], rtol=1e-6)
    assert not partial_path(out, "distance", 0).exists()
