"""Robust image decoding: every photo comes out as RGB, every failure as an ``ImageError``.

Handles EXIF orientation, palette/alpha (composited on a background colour), CMYK, 16-bit and
greyscale images and guards against decompression bombs. Large images decode downscaled to what the
encoder needs: JPEGs in draft mode; images over ``LARGE_PIXELS`` are reduced by an integer factor, 8-bit
PNGs strip by strip so memory stays bounded (:mod:`kenner.data.png_strips`), other formats right after
decoding. Truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays ``False``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kenner.data.png_strips import PngError, decode_reduced, strip_decodable
from kenner.errors import ImageError

# Largest image accepted, in pixels (about 16k x 16k, 750 MB once decoded as RGB). PIL's own guard is
# set to the same value; it raises DecompressionBombError from twice that, before reading pixel data.
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Images with more pixels (about 5,800 x 5,800) decode reduced; 8-bit PNGs strip by strip.
LARGE_PIXELS = 1 << 25
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"}
_CHECK_SIDE = 64  # inspect_image reduces large PNGs to about this short side: it only needs every row decoded

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_side: int | None = None,
) -> Image.Image:
    """Decode ``path`` to an RGB image with EXIF orientation applied.

    Transparent pixels are composited on ``background``. With ``max_side`` a JPEG is decoded in draft
    mode: downscaled by a power of two while its short side stays at least ``max_side``; an image of more
    than ``LARGE_PIXELS`` is reduced by the largest integer factor that keeps its short side at least
    ``max_side`` (8-bit PNGs strip by strip, in bounded memory); others decode at full size. Any failure
    raises ``ImageError`` naming the path and the reason.
    """
    path = Path(path)
    with _open(path) as img:
        try:
            if max_side is not None and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            factor = max(1, min(img.size) // max_side) if max_side and img.width * img.height > LARGE_PIXELS else 1
            decoded = _decode(path, img, factor)
            oriented = ImageOps.exif_transpose(decoded)
            return to_rgb(oriented, background=background)
        except Exception as error:
            raise _decode_error(path, error) from error


def inspect_image(path: str | os.PathLike) -> tuple[int, int]:
    """Fully decode ``path`` and return ``(width, height)`` after EXIF orientation (large images decode reduced,
    in bounded memory for JPEGs and 8-bit PNGs: every row is still decoded and checked).

    Zero-byte, missing, non-image, corrupt, truncated and oversized files raise ``ImageError``.
    """
    path = Path(path)
    with _open(path) as img:
        try:
            width, height = img.size
            large = width * height > LARGE_PIXELS
            if large and img.format == "JPEG":
                img.draft(None, (_CHECK_SIDE, _CHECK_SIDE))  # every block is still decoded, at 1/8 scale
            decoded = _decode(path, img, max(1, min(img.size) // _CHECK_SIDE) if large else 1)
            if decoded.getexif().get(_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
        except Exception as error:
            raise _decode_error(path, error) from error
    return width, height


def to_rgb(img: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB: alpha and palette transparency go on ``background``,
    16-bit values are scaled to 8 bits, CMYK/greyscale/bilevel are converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = _sixteen_bit_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes: the image's content hash (the embedding cache key)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise ImageError(f"cannot read file ({error.strerror or error})", path=str(path)) from error
    return digest.hexdigest()


def _decode(path: Path, img: Image.Image, factor: int) -> Image.Image:
    """``img`` decoded and reduced by ``factor``: an 8-bit PNG strip by strip, anything else whole first."""
    if factor > 1 and strip_decodable(img):
        return decode_reduced(path, img, factor)
    img.load()
    if factor > 1 and img.mode in _REDUCIBLE:
        return img.reduce(factor)
    return img


def _open(path: Path) -> Image.Image:
    """Open ``path`` lazily (header only), turning every failure into an ``ImageError``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError("file not found", path=str(path)) from None
    except OSError as error:
        raise ImageError(f"cannot read file ({error.strerror or error})", path=str(path)) from error
    if not path.is_file():
        raise ImageError("not a file", path=str(path))
    if size == 0:
        raise ImageError("empty file (0 bytes)", path=str(path))
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised file format)", path=str(path)) from None
    except Exception as error:
        raise _decode_error(path, error) from error
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageError(
            f"image too large ({img.width}x{img.height} pixels, limit {MAX_PIXELS}); "
            "downscale it or raise kenner.data.images.MAX_PIXELS",
            path=str(path),
        )
    return img


def _decode_error(path: Path, error: Exception) -> ImageError:
    """Describe a failure raised while decoding ``path``."""
    if isinstance(error, ImageError):
        return error
    if isinstance(error, PngError) and str(error).startswith("truncated"):
        return ImageError(str(error), path=str(path))
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(f"image too large, possible decompression bomb ({error})", path=str(path))
    message = str(error) or type(error).__name__
    if "truncated" in message.lower():
        return ImageError(f"truncated image ({message})", path=str(path))
    return ImageError(f"corrupt or unreadable image ({message})", path=str(path))


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit integer) greyscale image to 8-bit ``L``.

    Mode ``I`` images whose values all fit in 0-255 are taken as 8-bit data; others as 16-bit.
    """
    values = np.asarray(img).astype(np.int64)
    if img.mode != "I" or values.max(initial=0) > 255:
        values = np.clip(values, 0, 65535) >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
