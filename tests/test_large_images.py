"""Large images decode reduced to what the encoder needs; 8-bit PNGs strip by strip in bounded memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kenner.data import images, png_strips
from kenner.data.images import inspect_image, load_image
from kenner.errors import ImageError

SRC = Path(__file__).resolve().parents[1] / "src"
DEPTH = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, colour_type: int, rows, extra: bytes = b"") -> Path:
    """A PNG whose rows (filter byte + filtered data, from the iterable ``rows``) are compressed as they come."""
    compressor = zlib.compressobj()
    with open(path, "wb") as handle:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
        handle.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra)
        for row in rows:
            data = compressor.compress(row)
            if data:
                handle.write(_chunk(b"IDAT", data))
        handle.write(_chunk(b"IDAT", compressor.flush()) + _chunk(b"IEND", b""))
    return path


def _random_rows(width: int, height: int, colour_type: int, seed: int):
    """Rows with every filter type (0-4) and random filtered bytes: any such bytes are a valid image."""
    rng = np.random.default_rng(seed)
    for y in range(height):
        yield bytes([y % 5]) + rng.integers(0, 256, width * DEPTH[colour_type], dtype=np.uint8).tobytes()


PALETTE = _chunk(b"PLTE", bytes(range(256)) * 3) + _chunk(b"tRNS", bytes(range(0, 256, 2)))


@pytest.mark.parametrize(
    ("colour_type", "extra"),
    [(0, b""), (2, b""), (3, PALETTE), (4, b""), (6, b""), (2, _chunk(b"tRNS", b"\x00\x10\x00\x20\x00\x30"))],
)
def test_strips_decode_exactly_like_the_whole_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, colour_type: int, extra: bytes
) -> None:
    path = write_png(tmp_path / "x.png", 97, 83, colour_type, _random_rows(97, 83, colour_type, colour_type), extra)
    monkeypatch.setattr(png_strips, "STRIP_BYTES", 700)  # strips of a few rows: many strip boundaries
    with Image.open(path) as img:
        assert png_strips.strip_decodable(img)
        for factor in (1, 3, 4):
            got = png_strips.decode_reduced(path, img, factor)
            with Image.open(path) as whole:
                whole.load()
                expected = png_strips._reducible(whole).reduce(factor)
            assert got.mode == expected.mode and got.size == expected.size
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_large_images_decode_reduced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "LARGE_PIXELS", 5000)
    monkeypatch.setattr(png_strips, "STRIP_BYTES", 1000)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    for name in ("a.png", "a.webp", "a.tif"):
        Image.fromarray(pixels).save(tmp_path / name)
        small = load_image(tmp_path / name, max_side=40)
        assert small.size == (-(-130 // 2), 45) and small.mode == "RGB"  # factor 90 // 40 = 2
        assert inspect_image(tmp_path / name) == (130, 90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: width and height swap
    Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif.tobytes())
    assert load_image(tmp_path / "r.png", max_side=40).size == (45, 65)
    assert inspect_image(tmp_path / "r.png") == (90, 130)


def test_damaged_large_png_is_an_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "LARGE_PIXELS", 5000)
    monkeypatch.setattr(png_strips, "STRIP_BYTES", 1000)
    path = write_png(tmp_path / "x.png", 300, 200, 2, _random_rows(300, 200, 2, 0))  # reduced 3x to check
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for read in (inspect_image, lambda p: load_image(p, max_side=30)):
        with pytest.raises(ImageError, match="truncated image"):
            read(path)
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    with pytest.raises(ImageError, match="CRC mismatch") as caught:
        inspect_image(path)
    assert str(path) in str(caught.value)


CHILD = """
import json, resource, sys
from kenner.data.images import inspect_image, load_image
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = inspect_image(sys.argv[1])
small = load_image(sys.argv[1], max_side=224)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown_kb": peak - base, "size": size, "small": small.size,
                  "left": small.getpixel((5, 200)), "right": small.getpixel((220, 200))}))
"""


def test_a_15000_pixel_png_decodes_in_bounded_memory(tmp_path: Path) -> None:
    side = 15_000
    red, blue = (255, 0, 0), (0, 0, 255)
    first = bytes([1]) + bytes(red) + bytes(3 * (side // 2 - 1))  # Sub filter: red, then the same
    first += bytes((b - r) % 256 for b, r in zip(blue, red, strict=True)) + bytes(3 * (side - side // 2 - 1))
    same = bytes([2]) + bytes(3 * side)  # Up filter: the row above again
    path = write_png(tmp_path / "huge.png", side, side, 2, (first if y == 0 else same for y in range(side)))
    assert path.stat().st_size < 2_000_000
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["size"] == [side, side] and found["small"] == [228, 228]  # reduced by 15000 // 224 = 66
    assert found["left"] == list(red) and found["right"] == list(blue)  # rows after every strip are right
    full_decode_kb = side * side * 4 // 1024  # Pillow holds RGB as 4 bytes a pixel: 879 MB
    assert found["grown_kb"] < full_decode_kb // 5, found
