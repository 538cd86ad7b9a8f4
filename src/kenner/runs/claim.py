"""One folder, one run: a run folder is claimed (locked) by the process writing it, and holds one
configuration. The same configuration run again reuses what the folder holds (its split, fine-tuning
checkpoints); another configuration is refused with one line, unless ``--overwrite`` replaces the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kenner.errors import KennerError
from kenner.io import read_json, writable_dir

LOCK_FILE = ".kenner.lock"
# Settings that change how a run is computed, not what it is: they may differ when a run is repeated.
NOT_THE_RUN = ("compute", "tracking")
NOT_THE_RUN_FIELDS = ("cache_dir", "embed_batch_size", "backend")
# Fine-tuning continues a finished run with a larger --epochs or --patience (from its checkpoints).
CONTINUABLE = ("epochs", "patience")


@contextlib.contextmanager
def claim_folder(
    out_dir: Path, description: Mapping[str, Any], *, record: str, overwrite: bool = False, continuable: bool = False
) -> Iterator[Path]:
    """Lock ``out_dir`` for this process and check that it holds this run (``description``, saved as ``record``):
    new, the same run, or (``overwrite``) replaced. ``continuable``: the folder has checkpoints a run with more
    epochs continues."""
    writable_dir(out_dir, "--out-dir")
    with _lock(out_dir):
        saved_path = out_dir / record
        if overwrite and saved_path.is_file():
            _empty(out_dir)
        elif saved_path.is_file() and not _holds_work(out_dir, record):
            saved_path.unlink()  # a run that stopped before any work (bad input): nothing to keep
        elif saved_path.is_file():
            changed = differences(read_json(saved_path), description, continuable=continuable)
            if changed:
                raise KennerError(
                    f"{out_dir} holds a run with other settings ({', '.join(changed[:6])}"
                    f"{', ...' if len(changed) > 6 else ''}); pass --overwrite to replace it, or use another --out-dir"
                )
        elif any(entry.name != LOCK_FILE for entry in out_dir.iterdir()):
            raise KennerError(f"{out_dir} is not empty and holds no kenner run; use an empty or new --out-dir")
        yield out_dir


def differences(saved: Mapping[str, Any], now: Mapping[str, Any], *, continuable: bool = False) -> list[str]:
    """Names of the settings that differ between two run configs (what does not change a run left out)."""
    skip = set(CONTINUABLE) if continuable else set()
    changed = ["method"] if saved.get("method") != now.get("method") else []
    for key in sorted(set(saved) | set(now)):
        if key in NOT_THE_RUN or key in ("out_dir", "method"):
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed += [
                name
                for name in sorted(set(old) | set(new))
                if name not in NOT_THE_RUN_FIELDS and name not in skip and old.get(name) != new.get(name)
            ]
        elif old != new and not isinstance(old, Mapping) and not isinstance(new, Mapping):
            changed.append(key)  # (a section only one of two methods reads is no difference of its own)
    return changed


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``out_dir/.kenner.lock`` (released when the process ends, even by kill -9)."""
    handle = open(out_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the lock's life
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise KennerError(
                f"{out_dir} is being written by another kenner run ({holder}); wait for it to finish "
                "or use another --out-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def _holds_work(out_dir: Path, record: str) -> bool:
    """Whether ``out_dir`` holds anything besides its lock and its run record."""
    return any(entry.name not in (LOCK_FILE, record) for entry in out_dir.iterdir())


def _empty(out_dir: Path) -> None:
    """Remove everything in a run folder but the lock (``--overwrite``)."""
    for entry in out_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
