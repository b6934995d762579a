"""Fuzzing the image loader: whatever a folder holds, a file is either an RGB image of the right size
or a recorded skip, never an exception that stops a run.

Inputs: random bytes (bare or behind a real format's magic number), images of every Pillow mode
vitlens converts (1, L, LA, P, RGB, RGBA, CMYK, I;16, I, F) with random pixels and sizes, written
as PNG, JPEG, BMP, GIF, TIFF and WEBP where Pillow can, with and without an EXIF orientation, then
kept whole, truncated, or with bytes overwritten.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitlens.data import ImageSet, open_rgb

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x00\x01\x00\x00WEBPVP8 "]
ORIENTATION = 0x0112


def _writable() -> list[tuple[str, str]]:
    """The (mode, format) pairs this Pillow can write."""
    pairs = []
    for mode in MODES:
        for fmt in FORMATS:
            try:
                Image.new(mode, (3, 2)).save(io.BytesIO(), fmt)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            pairs.append((mode, fmt))
    return pairs


PAIRS = _writable()
FUZZ = settings(max_examples=600, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _encode(mode: str, fmt: str, size: tuple[int, int], pixels: bytes, orientation: int | None,
            transparency: bool) -> tuple[bytes, int | None]:
    """An image of ``mode`` filled from ``pixels`` (repeated to length), saved as ``fmt``; returns the
    bytes and the orientation actually stored (None where the format took no EXIF)."""
    need = len(Image.new(mode, size).tobytes())
    raw = (pixels * (need // max(1, len(pixels)) + 1))[:need] if pixels else bytes(need)
    img = Image.frombytes(mode, size, raw)
    kw = {}
    if transparency and mode == "P" and fmt in ("PNG", "GIF"):
        kw["transparency"] = 0
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        buf = io.BytesIO()
        try:
            img.save(buf, fmt, exif=exif, **kw)
            stored = Image.open(io.BytesIO(buf.getvalue())).getexif().get(ORIENTATION)
            return buf.getvalue(), stored
        except (OSError, ValueError, KeyError, TypeError):
            pass
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue(), None


@st.composite
def valid_images(draw):
    """``(file bytes, extension, expected RGB size)`` of an intact image."""
    mode, fmt = draw(st.sampled_from(PAIRS))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    orientation = draw(st.one_of(st.none(), st.integers(1, 8)))
    data, stored = _encode(mode, fmt, (w, h), draw(st.binary(min_size=0, max_size=64)), orientation,
                           draw(st.booleans()))
    size = (h, w) if stored in (5, 6, 7, 8) else (w, h)
    return data, FORMATS[fmt], size


@st.composite
def damaged_images(draw):
    """``(file bytes, extension)`` of an image cut short and/or with bytes overwritten."""
    data, ext, _ = draw(valid_images())
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data), ext


@st.composite
def random_files(draw):
    """``(file bytes, extension)`` of junk, sometimes behind a real magic number."""
    data = draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=512))
    return data, draw(st.sampled_from(sorted(set(FORMATS.values()))))


def _check_open(path: Path, size: tuple[int, int] | None = None) -> None:
    """open_rgb either gives 8-bit RGB (of ``size`` when known) or raises OSError / ValueError."""
    try:
        img = open_rgb(path)
    except (OSError, ValueError) as e:
        assert size is None, f"an intact image was refused: {type(e).__name__}: {e}"
        assert str(e)
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
    if size is not None:
        assert img.size == size
    assert np.asarray(img).dtype == np.uint8


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(valid_images())
def test_intact_images_open_as_rgb_of_their_size(case):
    data, ext, size = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{ext}"
        p.write_bytes(data)
        _check_open(p, size)


@pytest.mark.filterwarnings("ignore")
@FUZZ
@given(st.one_of(damaged_images(), random_files()))
def test_damaged_and_random_files_are_rgb_or_a_plain_error(case):
    data, ext = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"x{ext}"
        p.write_bytes(data)
        _check_open(p)


_MODEL = build("vit")  # input 32 x 32


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(valid_images().map(lambda c: (c[0], c[1], True)),
                          damaged_images().map(lambda c: (*c, False)),
                          random_files().map(lambda c: (*c, False))), min_size=1, max_size=6),
       st.integers(1, 4))
def test_image_set_uses_or_records_every_file(files, batch_size):
    with tempfile.TemporaryDirectory() as d:
        for i, (data, ext, _) in enumerate(files):
            (Path(d) / f"{i:02d}{ext}").write_bytes(data)
        imgs = ImageSet.for_model(_MODEL, d)
        used: list[int] = []
        for x, idx in imgs.batches(batch_size=batch_size):
            assert x.dtype == torch.float32 and x.shape == (len(idx), 3, 32, 32)
            assert torch.isfinite(x).all()
            used.extend(idx)
        skipped = {Path(s.path).name for s in imgs.skipped}
        assert all(s.reason for s in imgs.skipped)
        assert len(used) == len(set(used)) and len(used) + len(skipped) == len(files)
        assert not skipped & {imgs.paths[i].name for i in used}
        intact = {f"{i:02d}{ext}" for i, (_, ext, ok) in enumerate(files) if ok}
        assert not intact & skipped, f"intact images were skipped: {imgs.skipped}"
        assert imgs.record(len(used))["n_files"] == len(files)


def test_corrupt_exif_keeps_the_pixels(tmp_path):
    """A broken EXIF block (here a bad TIFF header inside WEBP) used to raise SyntaxError."""
    ex = Image.Exif()
    ex[ORIENTATION] = 6
    buf = io.BytesIO()
    Image.new("RGB", (9, 6), (10, 200, 30)).save(buf, "WEBP", exif=ex)
    data = buf.getvalue()
    assert b"MM\x00*" in data
    (tmp_path / "x.webp").write_bytes(data.replace(b"MM\x00*", b"MM\x00\x00", 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = open_rgb(tmp_path / "x.webp")
    assert img.mode == "RGB" and img.size == (9, 6)


def test_broken_png_chunk_is_an_oserror(tmp_path):
    """Pillow's PNG decoder raises SyntaxError for a broken chunk; callers see an OSError."""
    buf = io.BytesIO()
    Image.new("RGB", (9, 6)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    i = data.find(b"IDAT")
    data[i - 4:i] = b"\x00\x00\x00\x00"  # a zero-length IDAT: the decoder reads garbage as the next chunk
    (tmp_path / "x.png").write_bytes(bytes(data))
    with pytest.raises(OSError, match="SyntaxError"):
        open_rgb(tmp_path / "x.png")
    imgs = ImageSet(paths=[tmp_path / "x.png"], transform=lambda im: torch.zeros(3, 2, 2))
    with pytest.warns(UserWarning, match="skipped"):
        assert list(imgs.batches(1)) == []
    assert "SyntaxError" in imgs.skipped[0].reason


def test_float_images_with_nan_and_inf(tmp_path):
    arr = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)
    Image.fromarray(arr).save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value in cast"
        img = open_rgb(tmp_path / "f.tif")
    assert img.mode == "RGB" and img.size == (4, 1)
    assert [img.getpixel((i, 0))[0] for i in range(4)] == [0, 255, 0, 0]


@pytest.mark.parametrize("orientation,turn", [(3, 2), (6, -1), (8, 1)])
def test_uncompressed_tiff_orientation(tmp_path, orientation, turn):
    """Opened by path, Pillow memory-maps raw TIFFs and mis-reads those turned by 90 degrees."""
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    ex = Image.Exif()
    ex[ORIENTATION] = orientation
    Image.fromarray(arr).save(tmp_path / "x.tif", exif=ex)
    got = np.asarray(open_rgb(tmp_path / "x.tif"))[..., 0]
    np.testing.assert_array_equal(got, np.rot90(arr, turn))
