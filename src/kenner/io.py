"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kenner.errors import KennerError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, fsync it, then rename it over ``path`` (the temporary file is removed
    if anything fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when writing or renaming failed
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: NaN and infinities (undefined metrics) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create ``path`` (a folder) if needed and prove that files can be written in it, or raise one KennerError
    naming ``what`` (the flag): before any work starts, so a bad output folder never costs a run."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KennerError(f"{what} {path}: is a file, not a folder; give a folder")
    probe = path / f".kenner-write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise KennerError(
            f"{what} {path}: cannot write there ({error.strerror or error}); give a folder you can write to"
        ) from None
    return path


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """Prove that ``path`` can be written (its folder exists or can be made, and it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise KennerError(f"{what} {path}: is a folder; give a file name")
    try:
        writable_dir(path.parent, what)
    except KennerError as error:
        reason = str(error).split(": ", 1)[1]
        raise KennerError(f"{what} {path}: {reason}") from None
    return path
