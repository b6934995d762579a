"""Output folders and files: a bad --out fails before any work, results are never overwritten by
accident, and atomic writes leave neither half-written files nor temporary ones, with the
permissions a plain open() would give."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import vitlens.jobs.common
from vitlens.cli import main
from vitlens.runtime.errors import OutputError
from vitlens.runtime.io import atomic_path, prepare_out_dir, save_csv, save_figure, save_npz, write_json, write_text

MODEL = ["--model", "vit_tiny_patch16_224", "--random-init"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "a.png")
    return d


def _argv(command: str, images: Path, out: Path) -> list[str]:
    imgs = [] if command == "posembed" else ["--images", str(images)]
    return [command, *MODEL, *imgs, "--out", str(out)]


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Names of the models a command tried to load (none may be, for a bad --out)."""
    seen: list[str] = []

    def refuse(name, **kw):
        seen.append(name)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(vitlens.jobs.common, "load_model", refuse)
    return seen


def _one_paragraph(err: str) -> None:
    assert err.startswith("vitlens: error: ")
    assert "Traceback" not in err
    assert "\n\n" not in err.strip()


def _bad_outs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "somefile.txt").write_text("not a folder")
    return {"under a file": tmp_path / "somefile.txt" / "out",
            "deeper under a file": tmp_path / "somefile.txt" / "a" / "b",
            "is a file": tmp_path / "somefile.txt"}


@pytest.mark.parametrize("command", ["distance", "erf", "rollout", "posembed"])
def test_unwritable_out_fails_before_any_model_is_loaded(command, images, tmp_path, loads, capsys):
    for why, out in _bad_outs(tmp_path).items():
        assert main(_argv(command, images, out)) == 2, why
        cap = capsys.readouterr()
        _one_paragraph(cap.err)
        assert "somefile.txt" in cap.err and "not a folder" in cap.err, why
        assert cap.out == ""
    assert loads == []
    assert (tmp_path / "somefile.txt").read_text() == "not a folder"


def test_unwritable_out_from_the_shell(images, tmp_path):
    (tmp_path / "somefile.txt").write_text("x")
    r = subprocess.run([sys.executable, "-m", "vitlens", *_argv("distance", images, tmp_path / "somefile.txt" / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    _one_paragraph(r.stderr)
    assert "somefile.txt" in r.stderr and r.stdout == ""


def test_prepare_out_dir_messages(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"it is under .*f, which is a file, not a folder"):
        prepare_out_dir(tmp_path / "f" / "out", ["run.json"])
    with pytest.raises(OutputError, match="it is a file, not a folder"):
        prepare_out_dir(tmp_path / "f", ["run.json"])
    out = prepare_out_dir(tmp_path / "new" / "deeper", ["run.json"])
    assert out.is_dir() and list(out.iterdir()) == []  # the write probe is gone


def test_read_only_folder_is_an_output_error(tmp_path, images, loads, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        try:
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("this user (root) writes to read-only folders, so permissions cannot be tested")
        for out in (ro, ro / "out"):
            with pytest.raises(OutputError, match="cannot write to the output folder"):
                prepare_out_dir(out, ["run.json"])
            assert main(_argv("distance", images, out)) == 2
            _one_paragraph(capsys.readouterr().err)
        assert loads == []
    finally:
        ro.chmod(0o700)


def test_results_are_kept_without_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"old": true}\n')
    real = vitlens.jobs.common.load_model
    loaded: list[str] = []
    monkeypatch.setattr(vitlens.jobs.common, "load_model", lambda name, **kw: loaded.append(name) or real(name, **kw))
    argv = ["posembed", *MODEL, "--out", str(out)]

    assert main(argv) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "already holds results" in err and "run.json" in err and "--overwrite" in err
    assert (out / "run.json").read_text() == '{"old": true}\n' and loaded == []

    assert main(argv + ["--overwrite"]) == 0
    assert json.loads((out / "run.json").read_text())["command"] == "posembed"
    assert np.load(out / "pos_embed_similarity_vit_tiny_patch16_224.npy").shape == (14, 14, 14, 14)
    assert loaded == ["vit_tiny_patch16_224"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


class _Boom(Exception):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_atomic_path_cleans_up_when_the_writer_fails(tmp_path, error):
    target = tmp_path / "result.csv"
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".csv.part") and tmp.name.startswith(".")
            tmp.write_text("half of a fi")
            raise error()
    assert _leftovers(tmp_path) == []

    target.write_text("old, complete\n")
    with pytest.raises(error):
        with atomic_path(target) as tmp:
            tmp.write_text("new but ha")
            raise error()
    assert _leftovers(tmp_path) == ["result.csv"] and target.read_text() == "old, complete\n"


def test_savers_clean_up_when_the_writer_fails(tmp_path):
    class Unconvertible:
        def __array__(self, *a, **k):
            raise _Boom("cannot convert")

    with pytest.raises(_Boom):  # the first array is in the archive when the second fails
        save_npz(tmp_path / "maps.npz", {"a": np.zeros(1000), "b": Unconvertible()})

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1])

    def half_then_fail(fname, **kw):
        Path(fname).write_bytes(b"\x89PNG half")
        raise _Boom("disk full")

    fig.savefig = half_then_fail
    with pytest.raises(_Boom):
        save_figure(fig, tmp_path / "plot.png")
    plt.close(fig)

    class BadFrame:
        def to_csv(self, path, **kw):
            Path(path).write_text("a,b\n1,")
            raise _Boom("interrupted")

    with pytest.raises(_Boom):
        save_csv(tmp_path / "table.csv", BadFrame())
    assert _leftovers(tmp_path) == []


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    old = os.umask(0o022)
    try:
        yield lambda m: os.umask(m)
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_text(tmp_path / "a.txt", "x\n")
    write_json(tmp_path / "run.json", {"a": 1})
    save_npz(tmp_path / "m.npz", {"a": np.zeros(3)})
    save_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1.0]}))
    with open(tmp_path / "plain.txt", "w") as f:  # what open() gives, for comparison
        f.write("x")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    save_figure(fig, tmp_path / "f.png")
    plt.close(fig)
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, expected)


def test_replacing_a_file_keeps_its_permissions(tmp_path, umask):
    p = tmp_path / "run.json"
    p.write_text("{}")
    p.chmod(0o640)
    write_json(p, {"b": 2})
    assert _mode(p) == 0o640 and json.loads(p.read_text()) == {"b": 2}
