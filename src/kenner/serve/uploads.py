"""Uploaded images checked before any model work: size, pixel count and decodability, each failure a 4xx
:class:`UploadError` naming the field and file (never a traceback, never a crash of the server).

Statuses: 413 for a file over ``--max-upload-mb`` or an image over ``--max-pixels``; 415 for bytes that are no
image; 422 for a corrupt or truncated image, a wrong field or a malformed request.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from kenner.errors import ImageError


class UploadError(Exception):
    """A request the server refuses: HTTP ``status`` and what is wrong with which ``field`` / ``file``."""

    def __init__(self, status: int, message: str, *, field: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.file = file

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "message": self.message, "field": self.field, "file": self.file}}


@dataclass
class Limits:
    """What one uploaded image may be."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


@dataclass
class Upload:
    """One uploaded image: the form field (or JSON key) it came in, its file name and bytes."""

    field: str
    filename: str
    data: bytes


def decode_base64(field: str, value: Any, filename: str) -> Upload:
    """An :class:`Upload` from a JSON base64 string (a ``data:`` URL prefix is allowed)."""
    if not isinstance(value, str):
        raise UploadError(422, f"expected a base64 string, got {type(value).__name__}", field=field, file=filename)
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise UploadError(422, f"not valid base64 ({error})", field=field, file=filename) from None
    return Upload(field, filename, data)


def save_upload(upload: Upload, limits: Limits, folder: Path, name: str) -> Path:
    """Check ``upload``'s size and image header (format, pixel count) and write it to ``folder/name``."""
    if len(upload.data) > limits.max_bytes:
        raise UploadError(
            413,
            f"file too large ({len(upload.data) / 1e6:.1f} MB, limit {limits.max_bytes / 1e6:.1f} MB: --max-upload-mb)",
            field=upload.field,
            file=upload.filename,
        )
    if not upload.data:
        raise UploadError(422, "empty file (0 bytes)", field=upload.field, file=upload.filename)
    path = folder / name
    path.write_bytes(upload.data)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except UnidentifiedImageError:
        raise UploadError(
            415, "not an image (unrecognised file format)", field=upload.field, file=upload.filename
        ) from None
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"too many pixels ({error})", field=upload.field, file=upload.filename) from None
    except Exception as error:
        raise UploadError(422, f"corrupt image ({error})", field=upload.field, file=upload.filename) from None
    if width * height > limits.max_pixels:
        raise UploadError(
            413,
            f"too many pixels ({width}x{height}, limit {limits.max_pixels}: --max-pixels)",
            field=upload.field,
            file=upload.filename,
        )
    return path


def image_error(error: ImageError, upload: Upload) -> UploadError:
    """A decoding failure of ``upload`` as a 422 naming its field and file (not the server's temporary path)."""
    message, prefix = str(error), f"{error.path}: "
    reason = message.removeprefix(prefix) if error.path else message
    return UploadError(422, reason, field=upload.field, file=upload.filename)
