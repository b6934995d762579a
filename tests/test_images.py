"""Image discovery and decoding: formats, modes, orientation, bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import vitlens
from vitlens.data import ImageSet, find_images, open_rgb


def _save(path, arr, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def test_folders_recursive_sorted_and_symlinks(tmp_path):
    rng = np.random.default_rng(0)
    for name in ["b.png", "a.jpg", "sub/c.webp", "sub/deeper/d.bmp"]:
        _save(tmp_path / "imgs" / name, rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    _save(tmp_path / "elsewhere" / "e.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    os.symlink(tmp_path / "elsewhere", tmp_path / "imgs" / "zlink")  # followed
    os.symlink(tmp_path / "imgs", tmp_path / "imgs" / "sub" / "loop")  # a loop must not hang or repeat
    files = find_images(tmp_path / "imgs")
    names = [str(p.relative_to(tmp_path / "imgs")) for p in files]
    assert names == sorted(names)
    assert names == ["a.jpg", "b.png", "sub/c.webp", "sub/deeper/d.bmp", "zlink/e.png"]
    assert len(find_images(tmp_path / "imgs", num_images=2)) == 2
    s1 = find_images(tmp_path / "imgs", num_images=3, sample=True, seed=1)
    assert s1 == find_images(tmp_path / "imgs", num_images=3, sample=True, seed=1)
    assert s1 == sorted(s1, key=str)


def test_missing_and_empty_paths_are_clear_errors(tmp_path):
    with pytest.raises(vitlens.ImageError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(vitlens.ImageError, match="no image files"):
        find_images(tmp_path / "empty")


def test_modes_are_converted_to_rgb(tmp_path):
    gray = _save(tmp_path / "g.png", np.full((8, 8), 100, np.uint8))
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(rgba)
    pal = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (200, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(pal)
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)
    deep = tmp_path / "16.png"
    Image.fromarray(np.full((8, 8), 65535 // 2, np.uint16)).save(deep)
    for p in (gray, rgba, pal, cmyk, deep):
        img = open_rgb(p)
        assert img.mode == "RGB" and img.size == (8, 8)
    assert open_rgb(deep).getpixel((0, 0))[0] == pytest.approx(127, abs=1)  # scaled, not clipped to 255
    assert open_rgb(pal).getpixel((0, 0)) == (200, 0, 0)
    r, g, b = open_rgb(cmyk).getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (10, 20)


def test_bad_files_are_skipped_and_recorded(tmp_path, tiny_vit):
    good = _save(tmp_path / "ok.png", np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:60])
    imgs = ImageSet.for_model(tiny_vit, tmp_path)
    with pytest.warns(UserWarning, match="skipped"):
        got = [(x.shape, i) for x, i in imgs.batches(batch_size=2)]
    assert sum(len(i) for _, i in got) == 1
    assert got[0][0] == torch.Size([1, 3, 32, 32])
    assert sorted(os.path.basename(s.path) for s in imgs.skipped) == ["empty.png", "text.jpg", "trunc.png"]
    rec = imgs.record(1)
    assert rec["n_images"] == 1 and len(rec["skipped"]) == 3 and all(s["reason"] for s in rec["skipped"])


def test_decompression_bomb_limit(tmp_path):
    big = _save(tmp_path / "big.png", np.zeros((200, 300, 3), np.uint8))
    with pytest.raises(ValueError, match="over the limit"):
        open_rgb(big, max_pixels=10_000)
    assert open_rgb(big).size == (300, 200)


def test_only_bad_files_is_a_clear_error(tmp_path, tiny_vit):
    (tmp_path / "a.png").write_text("x")
    imgs = ImageSet.for_model(tiny_vit, tmp_path)
    with pytest.warns(UserWarning):
        n = sum(len(i) for _, i in imgs.batches(4))
    with pytest.raises(vitlens.ImageError, match="none of the 1 image files could be read"):
        imgs.check_used(n)


def test_preprocessing_is_the_models_own(tiny_vit, tmp_path):
    import timm
    from timm.data import create_transform, resolve_data_config
    p = _save(tmp_path / "x.png", np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    full = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    for model, args in [(full, {}), (tiny_vit, {"input_size": (3, 32, 32)})]:
        ref = create_transform(**resolve_data_config(args, model=model), is_training=False)
        x, _ = next(ImageSet.for_model(model, p).batches(1))
        torch.testing.assert_close(x[0], ref(Image.open(p).convert("RGB")))


def test_pillow_settings_are_left_as_the_caller_set_them(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    from vitlens.data.images import open_rgb

    good, cut = tmp_path / "good.png", tmp_path / "cut.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(good)
    cut.write_bytes(good.read_bytes()[:-40])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the caller's own choice
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert open_rgb(good, max_pixels=5_000).size == (40, 30)
    with pytest.raises((OSError, ValueError)):
        open_rgb(cut, max_pixels=5_000)  # truncated files are refused even so
    with pytest.raises(ValueError, match="over the limit"):
        open_rgb(good, max_pixels=1_000)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True and Image.MAX_IMAGE_PIXELS == 10_000
