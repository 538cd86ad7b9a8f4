"""The embedding store: cached encoder outputs keyed by (encoder fingerprint, image sha256).

Layout under a cache root::

    <root>/hashes.sqlite                   path -> sha256 cache shared by every encoder (HashCache)
    <root>/<fingerprint>/meta.json         fingerprint, dim, dtype, encoder name
    <root>/<fingerprint>/shards/<id>.npz   one shard: ``keys`` [N] (sha256 hex) + ``vectors`` [N, dim]
    <root>/<fingerprint>/index.npz         cached key -> (shard, row) map, merged with new shards on open

Shards are ``.npz`` files: numpy reads one member (``keys``) without touching the other, needs no
schema for a fixed-width fp16 matrix and loads with ``allow_pickle=False``. Each shard is written once,
atomically (temporary sibling + fsync + rename), under a name made of time, pid and a uuid, so many
processes (or machines sharing a disk) can fill one store without colliding and a half-written shard
(``.<id>.npz.tmp-<pid>``) is never read. The index file is only a cache: opening a store lists the
shard folder, reads the keys of shards the index does not know yet, drops shards that have gone and
rewrites the index; any process may do so, and the last write wins with a correct view.

Damage is repaired, not fatal: an unreadable shard (truncated, not a zip, wrong shape) is moved to
``<root>/<fingerprint>/quarantine/`` with a one-line warning and its embeddings count as missing, so
extraction computes them again; an unreadable index is rebuilt from the shards; a corrupt ``hashes.sqlite``
is moved aside (``hashes.sqlite.corrupt-<time>``) and the hashes are computed again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sqlite3
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from kenner.errors import KennerError
from kenner.io import atomic_write_bytes, atomic_write_json, read_json
from kenner.paths import default_cache_dir

if TYPE_CHECKING:
    from kenner.encoders.base import Encoder

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
QUARANTINE = "quarantine"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SQLITE_TIMEOUT_S = 60.0
# What reading a damaged .npz raises: a truncated or foreign file, a member cut short, a missing member.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
_T = TypeVar("_T")


class MissingEmbeddingsError(KennerError, KeyError):
    """Some requested keys are not in the store (a ``KeyError`` and a ``KennerError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShardQuarantinedError(MissingEmbeddingsError):
    """A shard turned out unreadable while reading embeddings; it was moved aside, its keys are now missing."""


class EmbeddingStore:
    """Embeddings of one encoder, stored as independent shards under ``root/<fingerprint>/``."""

    def __init__(
        self,
        root: str | os.PathLike,
        fingerprint: str,
        dim: int,
        dtype: str = "float16",
        *,
        encoder_name: str = "",
    ) -> None:
        if not _SAFE_NAME.match(fingerprint):
            raise KennerError(f"encoder fingerprint {fingerprint!r} is not usable as a folder name")
        if dtype not in DTYPES:
            raise KennerError(f"store dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if int(dim) <= 0:
            raise KennerError(f"embedding dim must be positive, not {dim}")
        self.cache_root = Path(root)
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.dtype = dtype
        self.encoder_name = encoder_name
        self.path = self.cache_root / fingerprint
        self.shard_dir = self.path / "shards"
        self.index_path = self.path / "index.npz"
        self._check_meta()
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._shards: list[str] = []
        self._where: dict[str, tuple[int, int]] = {}
        self._dirty = self._load_index()
        self.save_index()

    @classmethod
    def for_encoder(
        cls, encoder: Encoder, root: str | os.PathLike | None = None, dtype: str = "float16"
    ) -> EmbeddingStore:
        """The store of ``encoder`` under ``root`` (default: ``default_cache_dir()``)."""
        return cls(
            root if root is not None else default_cache_dir(),
            encoder.fingerprint,
            encoder.dim,
            dtype,
            encoder_name=encoder.name,
        )

    # -- public API ---------------------------------------------------------------------------

    def __len__(self) -> int:
        self._sync()
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        if key in self._where:
            return True
        self._sync()
        return key in self._where

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (in order, without duplicates) that have no stored embedding yet."""
        self._sync()
        return list(dict.fromkeys(key for key in keys if key not in self._where))

    def get(self, keys: Sequence[str], dtype: str = "float32") -> np.ndarray:
        """Stored embeddings as an array [len(keys), dim] of ``dtype`` (float16 halves the memory of a large read),
        rows in ``keys`` order; shards are read one at a time into that one array."""
        keys = list(keys)
        if any(key not in self._where for key in keys):
            self._sync()
        absent = [key for key in dict.fromkeys(keys) if key not in self._where]
        if absent:
            raise MissingEmbeddingsError(
                f"{len(absent)} of {len(set(keys))} images have no embedding in {self.path} "
                f"(first: {absent[0]}); run extraction for them first"
            )
        out = np.empty((len(keys), self.dim), dtype=dtype)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._where[key]
            positions, rows = by_shard.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        for shard, (positions, rows) in by_shard.items():
            name = self._shards[shard]
            try:
                out[positions] = self._read_vectors(name)[rows]
            except _Damaged as damage:
                self._quarantine(name, str(damage))
                raise ShardQuarantinedError(
                    f"{self.shard_dir / name} was unreadable and moved aside; extract its images again"
                ) from None
        return out

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> Path:
        """Store ``vectors`` [N, dim] under ``keys`` as one new shard, written atomically."""
        keys = [str(key) for key in keys]
        odd = [key for key in keys if not key.isascii()]
        if odd:
            raise KennerError(f"store keys are sha256 hex digests (ASCII), not {odd[0]!r}")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
            raise KennerError(
                f"cannot store vectors of shape {vectors.shape} under {len(keys)} keys: "
                f"the store {self.path} holds [N, {self.dim}]"
            )
        with np.errstate(over="ignore"):
            stored = vectors.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise KennerError(
                f"embeddings contain NaN/inf when stored as {self.dtype} in {self.path}; "
                "check the encoder, or use a float32 store for values beyond fp16 range"
            )
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.asarray(keys, dtype="S"), vectors=stored)
        path = atomic_write_bytes(self.shard_dir / name, buffer.getvalue())
        self._add_shard(name, keys)
        return path

    def save_index(self) -> None:
        """Merge shards written by other processes and save the index if it changed."""
        if self._sync() or self._dirty:
            entries = list(self._where.items())
            buffer = io.BytesIO()
            np.savez(
                buffer,
                shards=np.asarray(self._shards, dtype="U"),
                keys=np.asarray([key for key, _ in entries], dtype="S"),
                shard=np.asarray([where[0] for _, where in entries], dtype=np.int32),
                row=np.asarray([where[1] for _, where in entries], dtype=np.int32),
            )
            atomic_write_bytes(self.index_path, buffer.getvalue())
            self._dirty = False

    # -- internals ----------------------------------------------------------------------------

    def _check_meta(self) -> None:
        meta_path = self.path / "meta.json"
        wanted = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        if not meta_path.exists():
            atomic_write_json(meta_path, {**wanted, "encoder": self.encoder_name, "format": 1})
            return
        try:
            meta = read_json(meta_path)
        except (OSError, ValueError) as error:
            message = f"{meta_path}: unreadable store metadata ({error}); delete {self.path}"
            raise KennerError(message) from error
        for field, value in wanted.items():
            if meta.get(field) != value:
                raise KennerError(
                    f"{meta_path}: the store holds {field}={meta.get(field)!r} but {value!r} was asked for; "
                    "use a different cache directory or the store's settings"
                )

    def _shard_names(self) -> list[str]:
        return sorted(
            entry.name
            for entry in os.scandir(self.shard_dir)
            if entry.name.endswith(".npz") and not entry.name.startswith(".")
        )

    def _add_shard(self, name: str, keys: Iterable[str]) -> None:
        shard = len(self._shards)
        self._shards.append(name)
        self._dirty = True
        for row, key in enumerate(keys):
            self._where.setdefault(key, (shard, row))

    def _sync(self) -> bool:
        """Read the keys of shards on disk not yet known (moving unreadable ones aside); True if anything
        changed."""
        known = set(self._shards)
        new = [name for name in self._shard_names() if name not in known]
        for name in new:
            try:
                keys = self._read_keys(name)
            except _Damaged as damage:
                self._quarantine(name, str(damage))
                continue
            self._add_shard(name, keys)
        return bool(new)

    def _read_keys(self, name: str) -> list[str]:
        try:
            with np.load(self.shard_dir / name, allow_pickle=False) as data:
                return [key.decode("ascii") for key in data["keys"]]
        except FileNotFoundError:
            return []  # moved aside by another process meanwhile
        except (*_UNREADABLE, UnicodeDecodeError) as error:
            raise _Damaged(_describe(error)) from error

    def _read_vectors(self, name: str) -> np.ndarray:
        try:
            with np.load(self.shard_dir / name, allow_pickle=False) as data:
                vectors = data["vectors"]
        except _UNREADABLE as error:
            raise _Damaged(_describe(error)) from error
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise _Damaged(f"vectors of shape {vectors.shape}, expected [N, {self.dim}]")
        return vectors

    def _quarantine(self, name: str, reason: str) -> None:
        """Move an unreadable shard to ``quarantine/`` and forget what it held (it is computed again)."""
        target = self.path / QUARANTINE / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.replace(self.shard_dir / name, target)
        log.warning(
            "%s: unreadable embedding shard (%s); moved to %s, its embeddings are computed again",
            self.shard_dir / name,
            reason,
            target,
        )
        self._shards, self._where = [], {}
        self._sync()
        self._dirty = True

    def _load_index(self) -> bool:
        """Start from the cached index, keeping only shards that still exist; True if any had gone."""
        try:
            with np.load(self.index_path, allow_pickle=False) as data:
                shards = [str(name) for name in data["shards"]]
                keys, shard_of, rows = data["keys"], data["shard"], data["row"]
        except _UNREADABLE:
            return self.index_path.exists()  # no index yet, or an unreadable one: rebuilt from the shards
        present = set(self._shard_names())
        remap: dict[int, int] = {}
        for old, name in enumerate(shards):
            if name in present:
                remap[old] = len(self._shards)
                self._shards.append(name)
        for key, shard, row in zip(keys, shard_of.tolist(), rows.tolist(), strict=True):
            if shard in remap:
                self._where.setdefault(key.decode("ascii"), (remap[shard], row))
        return len(remap) < len(shards)


class _Damaged(Exception):
    """A shard that cannot be read; the message says why."""


def _describe(error: BaseException) -> str:
    """Why a shard cannot be read, in a few words."""
    if isinstance(error, ValueError) and "pickle" in str(error):
        return "not an .npz file"  # numpy's guess for bytes that are no zip archive
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class HashCache:
    """Remembers each file's sha256 by (absolute path, size, mtime_ns) in a SQLite file.

    SQLite serialises concurrent writers, so several processes can share one cache; an entry is
    reused only while the file's size and modification time are unchanged. A corrupt file is moved aside
    (``<name>.corrupt-<time>``, with its journal) and started afresh: the hashes are only computed again.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._use(
            lambda db: db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
            )
        )

    def lookup(self, stats: dict[str, os.stat_result]) -> dict[str, str]:
        """Cached hashes of the files (absolute path -> stat) whose size and mtime still match."""
        paths = list(stats)

        def read(db: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for start in range(0, len(paths), 900):
                chunk = paths[start : start + 900]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT path, size, mtime_ns, sha256 FROM hashes WHERE path IN ({marks})"
                for path, size, mtime_ns, digest in db.execute(query, chunk):
                    stat = stats[path]
                    if stat.st_size == size and stat.st_mtime_ns == mtime_ns:
                        found[path] = digest
            return found

        return self._use(read)

    def remember(self, entries: Iterable[tuple[str, os.stat_result, str]]) -> None:
        """Store (absolute path, stat, sha256) entries in one transaction."""
        rows = [(path, stat.st_size, stat.st_mtime_ns, digest) for path, stat, digest in entries]
        self._use(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO hashes (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)", rows
            )
        )

    def _use(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one transaction; a corrupt file is moved aside and ``work`` runs on a fresh one."""
        try:
            return self._transaction(work)
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):  # locked, unwritable: not damage
                raise KennerError(f"{self.path}: cannot use the hash cache ({error})") from error
            self._quarantine(error)
        try:
            self._transaction(
                lambda db: db.execute(
                    "CREATE TABLE IF NOT EXISTS hashes "
                    "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
                )
            )
            return self._transaction(work)
        except sqlite3.Error as error:
            raise KennerError(f"{self.path}: cannot use the hash cache ({error})") from error

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            db = sqlite3.connect(self.path, timeout=_SQLITE_TIMEOUT_S)
        except sqlite3.Error as error:
            raise KennerError(f"{self.path}: cannot open the hash cache ({error})") from error
        try:
            with db:
                return work(db)
        finally:
            db.close()

    def _quarantine(self, error: sqlite3.Error) -> None:
        """Move the corrupt database (and its journal files) aside."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        log.warning(
            "%s: corrupt hash cache (%s); moved to %s, image hashes are computed again", self.path, error, target
        )
