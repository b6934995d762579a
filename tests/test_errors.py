"""A CNN given to an attention analysis is a clear error that names what is missing, raised before
any image is looked at."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import vitlens.data.images as images_module
from vitlens.cli import main
from vitlens.runtime.errors import UnsupportedModelError

CNN = ["--model", "resnet10t", "--random-init"]
# what each analysis needs and a ResNet lacks
MISSING = {"distance": r"no ViT patch embedding|no attention modules",
           "rollout": r"no attention modules",
           "posembed": r"not a ViT with a patch grid.*position embeddings"}


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(d / "a.png")
    return d


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Calls that would list or decode images (none may happen)."""
    seen: list[str] = []

    def refuse(what):
        def f(*a, **k):
            seen.append(what)
            raise AssertionError(f"{what} was called")
        return f

    monkeypatch.setattr(images_module, "find_images", refuse("find_images"))
    monkeypatch.setattr(images_module, "open_rgb", refuse("open_rgb"))
    monkeypatch.setattr(images_module.ImageSet, "for_model", classmethod(lambda cls, *a, **k: refuse("ImageSet")()))
    return seen


def _argv(command, image_dir, out):
    imgs = [] if command == "posembed" else ["--images", str(image_dir)]
    return [command, *CNN, *imgs, "--out", str(out)]


@pytest.mark.parametrize("command", list(MISSING))
def test_cnn_is_refused_before_any_image_is_read(command, image_dir, tmp_path, reads, capsys):
    assert main(_argv(command, image_dir, tmp_path / "out")) == 2
    cap = capsys.readouterr()
    err = " ".join(cap.err.split())
    assert cap.err.startswith("vitlens: error: ") and "Traceback" not in cap.err
    assert "ResNet" in err
    assert re.search(MISSING[command], err), err
    assert reads == []
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("command", list(MISSING))
def test_cnn_error_type(command, image_dir, tmp_path, reads):
    with pytest.raises(UnsupportedModelError):
        main(_argv(command, image_dir, tmp_path / "out") + ["--debug"])
    assert reads == []
