"""Decoding a large PNG strip by strip, so memory stays bounded whatever its size.

Pillow decodes a PNG into one full-size buffer: 15,000 x 15,000 pixels take 900 MB as RGB, from a file of a few
hundred KB. Here the compressed stream is inflated a strip of rows at a time (``STRIP_BYTES``); each strip becomes a
small PNG of its own that Pillow decodes (its filters need the row above, so the strip starts with the previous
strip's last row, stored unfiltered), is reduced by an integer factor and pasted into the small result. Chunk CRCs
are checked and a stream that ends early is a truncated image, like Pillow's own decoder says.

Non-interlaced 8-bit PNGs (grey, grey + alpha, RGB, RGBA, 8-bit palette) are handled; ``strip_decodable`` says
whether an opened image is one of them. Other formats and PNGs decode whole (see :mod:`kenner.data.images`).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

STRIP_BYTES = 1 << 24  # raw bytes inflated at a time
SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow's raw mode of an 8-bit PNG -> (PNG colour type, bytes per pixel)
COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "P": (3, 1), "LA": (4, 2), "RGBA": (6, 4)}
_CARRIED = (b"PLTE", b"tRNS")  # chunks each strip needs to decode like the whole image


class PngError(Exception):
    """The file is not a well-formed PNG; the message says how (``truncated`` for a file that ends early)."""


def strip_decodable(img: Image.Image) -> bool:
    """True for an opened, not yet loaded, non-interlaced 8-bit PNG of one frame."""
    if img.format != "PNG" or len(img.tile) != 1 or getattr(img, "is_animated", False):
        return False
    codec, _, _, rawmode = img.tile[0]
    return codec == "zip" and rawmode == img.mode and rawmode in COLOUR_TYPES and not img.info.get("interlace")


def decode_reduced(path: Path, img: Image.Image, factor: int) -> Image.Image:
    """The PNG at ``path`` (opened as ``img``) decoded strip by strip and reduced by ``factor`` (box average).

    The result is L, LA, RGB or RGBA (palette and transparency already applied), ``ceil(size / factor)``, with
    ``info["exif"]`` from the file's eXIf chunk. Raises ``PngError`` for a damaged file.
    """
    width, height = img.size
    colour_type, depth = COLOUR_TYPES[img.mode]
    row_bytes = width * depth + 1  # each row starts with its filter type
    rows = max(factor, STRIP_BYTES // row_bytes // factor * factor)
    strips = _Strips(width, height, colour_type, row_bytes, factor)
    inflater = zlib.decompressobj()
    pending = bytearray()
    for kind, data in _chunks(path):
        if kind in _CARRIED:
            strips.header += _chunk(kind, data)
        elif kind == b"eXIf":
            strips.exif = data
        elif kind == b"IDAT":
            tail = data
            while tail and strips.done < height:
                wanted = min(rows, height - strips.done) * row_bytes
                try:
                    pending += inflater.decompress(tail, wanted - len(pending))
                except zlib.error as error:
                    raise PngError(f"corrupt compressed data ({error})") from None
                tail = inflater.unconsumed_tail
                if len(pending) == wanted:
                    strips.add(pending)
                    pending = bytearray()
    if strips.done < height or strips.result is None:
        raise PngError(f"truncated image: {strips.done} of {height} rows")
    if strips.exif is not None:
        strips.result.info["exif"] = strips.exif
    return strips.result


class _Strips:
    """Decodes strips of raw rows in order and collects their reduced pixels."""

    def __init__(self, width: int, height: int, colour_type: int, row_bytes: int, factor: int) -> None:
        self.width, self.height, self.row_bytes, self.factor = width, height, row_bytes, factor
        self.colour_type = colour_type
        self.header = bytearray()  # the chunks carried into every strip
        self.exif: bytes | None = None
        self.done = 0
        self.previous = b""  # the last row decoded, unfiltered (filter type 0 + pixel bytes)
        self.result: Image.Image | None = None

    def add(self, raw: bytes | bytearray) -> None:
        """Decode the next strip of raw (filtered) rows."""
        count = len(raw) // self.row_bytes
        ihdr = struct.pack(">IIBBBBB", self.width, count + bool(self.previous), 8, self.colour_type, 0, 0, 0)
        idat = zlib.compress(b"".join((self.previous, raw)), 0)
        png = b"".join((SIGNATURE, _chunk(b"IHDR", ihdr), self.header, _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))
        with Image.open(io.BytesIO(png)) as strip:
            strip.load()
            last = strip.crop((0, strip.height - 1, self.width, strip.height)).tobytes()
            box = (0, strip.height - count, self.width, strip.height)
            # (Pillow 12.3's reduce(1, box) alters pixels of modes with alpha; a crop is what factor 1 means)
            part = _reducible(strip).reduce(self.factor, box) if self.factor > 1 else _reducible(strip).crop(box)
        if self.result is None:
            self.result = Image.new(part.mode, (-(-self.width // self.factor), -(-self.height // self.factor)))
        self.result.paste(part, (0, self.done // self.factor))
        self.previous = b"\x00" + last
        self.done += count


def _reducible(img: Image.Image) -> Image.Image:
    """``img`` in a mode ``Image.reduce`` takes, with palette and transparency applied."""
    if img.mode == "P" or "transparency" in img.info:
        return img.convert("RGBA")
    return img


def _chunks(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """``(type, data)`` of each chunk up to IEND, CRCs checked."""
    with open(path, "rb") as handle:
        if handle.read(8) != SIGNATURE:
            raise PngError("not a PNG file")
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise PngError("truncated image: the file ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", head)
            data, crc = handle.read(length), handle.read(4)
            if len(data) < length or len(crc) < 4:
                raise PngError(f"truncated image: the file ends inside a {kind.decode('latin-1')} chunk")
            if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                raise PngError(f"broken {kind.decode('latin-1')} chunk (CRC mismatch)")
            if kind == b"IEND":
                return
            yield kind, data


def _chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join((struct.pack(">I4s", len(data), kind), data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))))
