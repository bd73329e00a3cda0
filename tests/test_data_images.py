"""Robust image reading: every Pillow mode becomes RGB; a truncated, empty, missing or garbage
file is an ImageReadError naming it, which a dataset scan flags and counts (strict raises)."""

import io

import numpy as np
import pytest
from PIL import Image

from embedkit import data
from embedkit.cli import main
from embedkit.data import ImageReadError, open_image
from embedkit.errors import EmbedkitError


def jpeg_bytes(size=64):
    arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def test_truncated_jpeg(tmp_path):
    blob = jpeg_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        ImageReadError, match=r"cut.jpg: unreadable image \(OSError: image file is truncated"
    ):
        open_image(p)
    with pytest.raises(ImageReadError, match="member.jpg: unreadable image"):
        open_image(
            blob[: len(blob) // 2], name="train.tar:member.jpg"
        )  # the tar path: bytes in memory


def test_zero_byte_missing_and_garbage_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.jpg: empty image file \(0 bytes\)"):
        open_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match=r"nothere.png: no such image file"):
        open_image(tmp_path / "nothere.png")
    (tmp_path / "text.png").write_bytes(b"this is not an image")
    with pytest.raises(
        ImageReadError, match=r"text.png: unreadable image \(UnidentifiedImageError"
    ):
        open_image(tmp_path / "text.png")
    assert issubclass(ImageReadError, EmbedkitError)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, "JPEG", quality=100)  # CMYK red
    assert Image.open(p).mode == "CMYK"
    im = open_image(p)
    assert im.mode == "RGB" and im.size == (8, 8)
    r, g, b = im.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_palette_la_rgba_and_16_bit_become_rgb(tmp_path):
    pal = Image.new("P", (6, 6))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((2, 3), 1)
    pal.save(tmp_path / "pal.png")
    im = open_image(tmp_path / "pal.png")
    assert (
        im.mode == "RGB"
        and im.getpixel((2, 3)) == (10, 200, 30)
        and im.getpixel((0, 0)) == (0, 0, 0)
    )

    Image.new("LA", (4, 4), (77, 0)).save(tmp_path / "la.png")
    Image.new("RGBA", (4, 4), (1, 2, 3, 10)).save(tmp_path / "rgba.png")
    assert open_image(tmp_path / "la.png").getpixel((0, 0)) == (
        77,
        77,
        77,
    )  # alpha dropped, as convert("RGB")
    assert open_image(tmp_path / "rgba.png").getpixel((0, 0)) == (1, 2, 3)

    deep = Image.fromarray(np.array([[65535, 32768], [256, 0]], np.uint16))
    deep.save(tmp_path / "deep.png")
    px = np.asarray(open_image(tmp_path / "deep.png"))[..., 0]
    assert px.tolist() == [[255, 128], [1, 0]]


def test_a_dataset_flags_and_counts_unreadable_images(tmp_path, capsys):
    good = jpeg_bytes(16)
    (tmp_path / "ok.jpg").write_bytes(good)
    (tmp_path / "cut.jpg").write_bytes(good[:200])
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.new("CMYK", (8, 8)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (8, 8)).save(tmp_path / "pal.png")
    names = ["ok.jpg", "cut.jpg", "empty.jpg", "missing.jpg", "cmyk.jpg", "pal.png"]
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\n" + "".join(f"{n},0,train\n" for n in names)
    )
    ds = data.create("csv", root=tmp_path, attr_col="")
    valid, reasons = ds.scan()
    assert valid.tolist() == [True, False, False, False, True, True]
    assert len(reasons) == 3 and "cut.jpg" in reasons[0] and "missing.jpg" in reasons[2]
    image, why = ds.try_load(1)
    assert image is None and "truncated" in why.lower()
    with pytest.raises(ImageReadError):
        ds.try_load(1, strict=True)
    assert (
        main(["datasets", "csv", "--root", str(tmp_path), "--dataset-opt", "attr_col=", "--check"])
        == 0
    )
    assert "unreadable images: 3 of 6" in capsys.readouterr().out
