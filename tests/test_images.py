"""Decoding of odd images (orientation, alpha, palette, CMYK, 16-bit, greyscale) and bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import BAD_FILES
from kenner.data import images
from kenner.data.images import file_sha256, inspect_image, load_image
from kenner.errors import ImageError


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_exif_orientation_swaps_dimensions_and_rotates_pixels(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert inspect_image(path) == (20, 40)
    assert _close(loaded.getpixel((10, 5)), (255, 0, 0))  # the red half is now on top
    assert _close(loaded.getpixel((10, 35)), (0, 0, 255))


def test_rgba_is_composited_on_background(tmp_path: Path) -> None:
    img = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 128))
    path = tmp_path / "alpha.png"
    img.save(path)

    loaded = load_image(path, background=(10, 20, 30))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (10, 20, 30)
    assert _close(loaded.getpixel((1, 0)), (133, 10, 15), tolerance=2)


def test_palette_transparency_uses_background(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((3, 3), 1)
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)

    loaded = load_image(path, background=(0, 255, 0))
    assert loaded.getpixel((0, 0)) == (0, 255, 0)
    assert loaded.getpixel((3, 3)) == (255, 0, 0)


def test_cmyk_jpeg(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))
    assert Image.open(path).mode == "CMYK"
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert _close(loaded.getpixel((5, 5)), (255, 0, 0))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "deep.png", mode="I;16", color=40000)
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 256, not clipped to 255


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255)), ("LA", (77, 255), (77, 77, 77))],
)
def test_greyscale_modes_become_rgb(tmp_path: Path, make_image, mode, color, expected) -> None:
    path = make_image(tmp_path / f"grey_{mode}.png", mode=mode, color=color)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((1, 1)) == expected


def test_draft_mode_decodes_big_jpeg_smaller(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "big.jpg", size=(800, 600))
    assert load_image(path).size == (800, 600)
    small = load_image(path, max_side=100)
    assert small.size[0] < 800
    assert min(small.size) >= 100
    assert small.mode == "RGB"


def test_max_side_leaves_png_at_full_size(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "big.png", size=(300, 200))
    assert load_image(path, max_side=50).size == (300, 200)


def test_decompression_bomb_guard(tmp_path: Path, make_image, monkeypatch) -> None:
    path = make_image(tmp_path / "bomb.png", size=(64, 64))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    for read in (load_image, inspect_image):
        with pytest.raises(ImageError, match="too large") as caught:
            read(path)
        assert str(path) in str(caught.value)


def test_pil_decompression_bomb_error_becomes_image_error(tmp_path: Path, make_image, monkeypatch) -> None:
    path = make_image(tmp_path / "bomb.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb") as caught:
        load_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("name", "make_bad", "reason"), BAD_FILES)
def test_bad_files_raise_image_error_naming_path(tmp_path: Path, make_image, name, make_bad, reason) -> None:
    path = tmp_path / name
    make_bad(path)
    for read in (load_image, inspect_image):
        with pytest.raises(ImageError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message
        assert reason in message


def test_file_sha256_is_content_hash(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "a.png")
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    other = make_image(tmp_path / "b.png", color=(1, 2, 3))
    assert file_sha256(other) != file_sha256(path)
