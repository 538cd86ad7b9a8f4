"""Batched, prefetching, resumable embedding extraction into an ``EmbeddingStore``.

Images are hashed (with a ``HashCache`` so unchanged files are not read again), deduplicated by
content, and only those missing from the store go through the encoder. A pool of threads decodes and
transforms whole batches ahead of the model (PIL, torch and ONNX Runtime release the GIL while they
work); on 2 CPU cores this was as fast as a torch ``DataLoader`` with 2 worker processes, without
pickling the transform or moving tensors between processes.

Finished work is written early and often: the first shard after one batch, each next one twice as large up to
``shard_size`` images, and whatever is pending once ``flush_seconds`` have passed since the last shard. A run
killed at any point (even with ``kill -9``) keeps every shard written, an interrupted one (Ctrl-C, or SIGTERM,
which the CLI turns into the same interruption) also what it had computed, and the next run computes only the
rest.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kenner.data.images import file_sha256, load_image
from kenner.encoders.base import Encoder
from kenner.encoders.store import EmbeddingStore, HashCache, ShardQuarantinedError
from kenner.errors import ImageError, KennerError
from kenner.progress import progress_bar

HASH_CACHE_NAME = "hashes.sqlite"
FLUSH_SECONDS = 10.0  # longest stretch of computed embeddings held only in memory
_REPAIRS = 3  # rounds of recomputing what unreadable shards held before giving up

# Computes the embeddings of (paths, their keys) missing from the store and writes them into it as shards.
Fill = Callable[[list[Path], list[str]], None]


def hash_images(
    paths: Sequence[str | os.PathLike],
    cache: HashCache | None = None,
    *,
    workers: int = 4,
    progress: bool = True,
) -> list[str]:
    """The sha256 of each file, in order; unchanged files are answered from ``cache``."""
    absolute = [os.path.abspath(path) for path in paths]
    stats: dict[str, os.stat_result] = {}
    for path in absolute:
        if path not in stats:
            try:
                stats[path] = os.stat(path)
            except OSError as error:
                raise ImageError(f"cannot read file ({error.strerror or error})", path=path) from error
    known = cache.lookup(stats) if cache is not None else {}
    todo = [path for path in stats if path not in known]
    if todo:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            digests = list(
                progress_bar(
                    pool.map(file_sha256, todo),
                    total=len(todo),
                    desc="hashing images",
                    unit="img",
                    show=progress,
                )
            )
        known.update(zip(todo, digests, strict=True))
        if cache is not None:
            cache.remember((path, stats[path], known[path]) for path in todo)
    return [known[path] for path in absolute]


def extract_embeddings(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike],
    store: EmbeddingStore,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    shard_size: int = 1024,
    flush_seconds: float = FLUSH_SECONDS,
    background: tuple[int, int, int] = (255, 255, 255),
    progress: bool = True,
    fill: Fill | None = None,
) -> np.ndarray:
    """Embeddings of ``paths`` as float32 [len(paths), dim], rows in ``paths`` order.

    Only images whose content is not yet in ``store`` are encoded; results are read back from the
    store, so a cached run returns exactly what the first run stored. A file that cannot be decoded
    raises ``ImageError`` naming it (shards finished before it are kept). ``fill`` computes the missing
    embeddings elsewhere (a Ray job: :mod:`kenner.encoders.ray_extract`); by default this process encodes them.
    """
    if encoder.fingerprint != store.fingerprint:
        raise KennerError(
            f"the store {store.path} belongs to encoder fingerprint {store.fingerprint}, "
            f"not {encoder.fingerprint} ({encoder.name}); open the encoder's own store"
        )
    if batch_size < 1 or shard_size < 1 or flush_seconds <= 0:
        raise KennerError(
            f"batch_size and shard_size must be at least 1 and flush_seconds positive (got "
            f"{batch_size}, {shard_size}, {flush_seconds})"
        )
    hashes = hash_images(
        paths, HashCache(store.cache_root / HASH_CACHE_NAME), workers=max(1, num_workers) * 2, progress=progress
    )
    first_path: dict[str, Path] = {}
    for key, path in zip(hashes, paths, strict=True):
        first_path.setdefault(key, Path(path))
    for _ in range(_REPAIRS):
        todo = store.missing(dict.fromkeys(hashes))
        if todo:
            paths_todo = [first_path[key] for key in todo]
            if fill is not None:
                fill(paths_todo, todo)
            else:
                encode_into_store(
                    encoder,
                    paths_todo,
                    todo,
                    store,
                    batch_size=batch_size,
                    num_workers=num_workers,
                    shard_size=shard_size,
                    flush_seconds=flush_seconds,
                    background=background,
                    progress=progress,
                )
            store.save_index()
        try:
            return store.get(hashes)
        except ShardQuarantinedError:
            continue  # an unreadable shard was moved aside: compute what it held
    raise KennerError(f"{store.path}: shards keep turning out unreadable; check the disk, or use another --cache-dir")


def prepare_batch(
    paths: Sequence[str | os.PathLike],
    transform: Callable[[Image.Image], torch.Tensor],
    max_side: int,
    background: tuple[int, int, int],
) -> torch.Tensor:
    """Decode ``paths`` (EXIF, alpha onto ``background``, JPEG draft mode never below ``max_side``) and apply the
    encoder's ``transform``: the pixels [N, 3, size, size] the encoder embeds, the same on every machine."""
    tensors = []
    for path in paths:
        image = load_image(path, background=background, max_side=max_side)
        try:
            tensors.append(transform(image))
        except Exception as error:
            raise ImageError(f"cannot preprocess image ({error})", path=str(path)) from error
    return torch.stack(tensors)


class ShardWriter:
    """Writes embeddings into a store as they are computed: the first shard after ``first`` rows, each next one
    twice as large up to ``shard_size``, and whatever is pending once ``flush_seconds`` have passed since the
    last shard; :meth:`close` writes the rest (also when the work was interrupted)."""

    def __init__(
        self, store: EmbeddingStore, *, first: int, shard_size: int, flush_seconds: float = FLUSH_SECONDS
    ) -> None:
        self.store = store
        self.shard_size = shard_size
        self.flush_seconds = flush_seconds
        self.target = max(1, min(first, shard_size))
        self.last_flush = time.monotonic()
        self.pending_keys: list[str] = []
        self.pending_vectors: list[np.ndarray] = []

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Queue ``vectors`` under ``keys``, writing every shard that is due."""
        self.pending_keys.extend(keys)
        self.pending_vectors.append(np.asarray(vectors))
        while len(self.pending_keys) >= self.target:
            self._flush(self.target)
        if self.pending_keys and time.monotonic() - self.last_flush >= self.flush_seconds:
            self._flush(len(self.pending_keys))

    def close(self) -> None:
        """Write what is pending as one last shard."""
        if self.pending_keys:
            self._flush(len(self.pending_keys))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self, count: int) -> None:
        """Write the first ``count`` pending embeddings as one shard."""
        shard_keys, shard_vectors = self.pending_keys[:count], np.concatenate(self.pending_vectors)
        del self.pending_keys[:count]
        self.pending_vectors[:] = [shard_vectors[count:]] if count < len(shard_vectors) else []
        self.store.write(shard_keys, shard_vectors[:count])
        self.target, self.last_flush = min(2 * self.target, self.shard_size), time.monotonic()


def encode_into_store(
    encoder: Encoder,
    paths: list[Path],
    keys: list[str],
    store: EmbeddingStore,
    *,
    batch_size: int,
    num_workers: int,
    shard_size: int,
    flush_seconds: float,
    background: tuple[int, int, int],
    progress: bool,
) -> None:
    """Encode ``paths`` in this process batch by batch (decoding ``num_workers`` batches ahead in threads), writing
    shards of ``keys`` through a :class:`ShardWriter`."""
    transform = encoder.transform()
    max_side = encoder.decode_side  # JPEGs decode downscaled (draft mode), never below this side
    starts = range(0, len(paths), batch_size)
    batches = [paths[start : start + batch_size] for start in starts]
    bar = progress_bar(total=len(paths), desc=f"embedding with {encoder.name}", unit="img", show=progress)
    writer = ShardWriter(store, first=batch_size, shard_size=shard_size, flush_seconds=flush_seconds)
    try:
        with torch.inference_mode():
            prepare = partial(prepare_batch, transform=transform, max_side=max_side, background=background)
            batched = _prefetch(prepare, batches, num_workers)
            for start, pixels in zip(starts, batched, strict=True):
                vectors = encoder.embed(pixels).cpu().numpy()
                writer.add(keys[start : start + len(vectors)], vectors)
                bar.update(len(vectors))
    finally:
        bar.close()
        writer.close()  # keep finished work when interrupted or when a later image fails


def _prefetch(
    prepare: Callable[[list[Path]], torch.Tensor], batches: list[list[Path]], num_workers: int
) -> Iterator[torch.Tensor]:
    """Yield ``prepare(batch)`` for each batch in order, computed ``num_workers`` batches ahead."""
    if num_workers <= 0:
        yield from map(prepare, batches)
        return
    pool = ThreadPoolExecutor(num_workers, thread_name_prefix="kenner-decode")
    ahead: deque[Future[torch.Tensor]] = deque()
    try:
        for batch in batches:
            ahead.append(pool.submit(prepare, batch))
            if len(ahead) > num_workers:
                yield ahead.popleft().result()
        for future in ahead:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
