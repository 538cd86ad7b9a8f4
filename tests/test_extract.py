"""Tests for batched, cached, resumable embedding extraction with a tiny random encoder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_image
from kenner.data.images import load_image
from kenner.encoders import Encoder, Preprocessing
from kenner.encoders import extract as extract_module
from kenner.encoders.extract import extract_embeddings, hash_images
from kenner.encoders.store import EmbeddingStore, HashCache
from kenner.errors import ImageError, KennerError


class TinyEncoder(Encoder):
    """A conv + global average pool with seeded random weights that counts the images it embeds."""

    def __init__(self, delay_s: float = 0.0) -> None:
        preprocessing = Preprocessing(
            size=16, resize=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear", crop="squash"
        )
        super().__init__(name="tiny", dim=8, preprocessing=preprocessing, pooling="cls", weights_hash="seed-0")
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, self.dim, kernel_size=3)
        self.delay_s = delay_s
        self.seen = 0
        self.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.conv(pixels).mean(dim=(2, 3))

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen += len(batch)
        time.sleep(self.delay_s)  # only to give the kill -9 test time to strike mid-run
        return super().embed(batch)


def make_images(directory: Path, n: int, start: int = 0) -> list[Path]:
    """Write ``n`` distinct small noisy PNGs of varied sizes and return their paths."""
    return [
        write_image(directory / f"img_{i:03d}.png", size=(20, 12 + i % 5), noise=60, seed=i)
        for i in range(start, start + n)
    ]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_rows_follow_paths_and_duplicates_are_computed_once(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 5)
    twin = tmp_path / "img" / "twin.png"
    shutil.copyfile(paths[1], twin)
    order = [paths[3], twin, paths[0], paths[1], paths[4], paths[2], paths[3]]
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    got = extract_embeddings(encoder, order, store, batch_size=2, num_workers=2, shard_size=3, progress=False)
    assert encoder.seen == 5 and got.dtype == np.float32 and got.shape == (7, 8)
    transform = encoder.preprocessing.transform()
    expected = encoder.embed(torch.stack([transform(load_image(path)) for path in order])).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)
    np.testing.assert_array_equal(got[1], got[3])
    np.testing.assert_array_equal(got[0], got[6])
    assert len(list(store.shard_dir.glob("*.npz"))) == 2  # shard_size=3: shards of 3 and 2 images


def test_second_run_computes_nothing_and_a_new_image_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_images(tmp_path / "img", 6)
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    first = extract_embeddings(encoder, paths, store, batch_size=4, progress=False)
    hashed: list[str] = []
    real_sha256 = extract_module.file_sha256
    monkeypatch.setattr(extract_module, "file_sha256", lambda path: hashed.append(path) or real_sha256(path))

    again = TinyEncoder()
    reopened = EmbeddingStore(tmp_path / "cache", again.fingerprint, again.dim)
    np.testing.assert_array_equal(extract_embeddings(again, paths, reopened, progress=False), first)
    assert again.seen == 0 and hashed == []  # hashes come from the hash cache

    new = make_images(tmp_path / "img", 1, start=6)
    once_more = TinyEncoder()
    got = extract_embeddings(once_more, [*paths, *new], reopened, progress=False)
    assert once_more.seen == 1 and hashed == [str(new[0])]
    np.testing.assert_array_equal(got[:6], first)


def test_worker_pool_and_inline_decoding_agree(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 7)
    results = []
    for workers in (0, 3):
        encoder = TinyEncoder()
        store = EmbeddingStore(tmp_path / f"cache{workers}", encoder.fingerprint, encoder.dim)
        results.append(extract_embeddings(encoder, paths, store, batch_size=3, num_workers=workers, progress=False))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_names_the_file_and_keeps_finished_shards(tmp_path: Path, workers: int) -> None:
    paths = make_images(tmp_path / "img", 6)
    paths[4].write_bytes(paths[4].read_bytes()[:60])  # truncated PNG
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    with pytest.raises(ImageError, match=r"img_004\.png"):
        extract_embeddings(encoder, paths, store, batch_size=2, num_workers=workers, shard_size=2, progress=False)
    assert len(store) == 4 and store.missing(hash_images(paths[:4], progress=False)) == []


def _shard_sizes(store: EmbeddingStore) -> list[int]:
    sizes = []
    for shard in sorted(store.shard_dir.glob("*.npz")):
        with np.load(shard) as data:
            sizes.append(len(data["keys"]))
    return sizes


def test_shards_start_at_one_batch_and_grow(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 40)
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    extract_embeddings(
        encoder, paths, store, batch_size=2, num_workers=0, shard_size=8, flush_seconds=1e9, progress=False
    )
    assert _shard_sizes(store) == [2, 4, 8, 8, 8, 8, 2]


def test_time_budget_flushes_what_is_pending(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 12)
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    extract_embeddings(
        encoder, paths, store, batch_size=3, num_workers=0, shard_size=1024, flush_seconds=1e-9, progress=False
    )
    assert _shard_sizes(store) == [3, 3, 3, 3]  # the budget is always spent: every batch is written at once


def test_unreadable_shard_is_recomputed_and_only_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = make_images(tmp_path / "img", 6)
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    reference = extract_embeddings(encoder, paths, store, batch_size=2, shard_size=2, num_workers=0, progress=False)
    shard = sorted(store.shard_dir.glob("*.npz"))[1]
    shard.write_bytes(shard.read_bytes()[:-30])  # truncated after the index was written
    again = TinyEncoder()
    reopened = EmbeddingStore(tmp_path / "cache", again.fingerprint, again.dim)
    with caplog.at_level("WARNING"):
        got = extract_embeddings(again, paths, reopened, batch_size=2, num_workers=0, progress=False)
    assert again.seen == 2
    np.testing.assert_array_equal(got, reference)
    assert "unreadable embedding shard" in caplog.text and (store.path / "quarantine" / shard.name).is_file()


def test_corrupt_hash_cache_is_replaced(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 3)
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    reference = extract_embeddings(encoder, paths, store, progress=False)
    (tmp_path / "cache" / "hashes.sqlite").write_bytes(b"\x00" * 4096)
    again = TinyEncoder()
    np.testing.assert_array_equal(extract_embeddings(again, paths, store, progress=False), reference)
    assert again.seen == 0 and list((tmp_path / "cache").glob("hashes.sqlite.corrupt-*"))


def test_missing_file_and_wrong_store_raise(tmp_path: Path) -> None:
    encoder = TinyEncoder()
    store = EmbeddingStore(tmp_path / "cache", encoder.fingerprint, encoder.dim)
    with pytest.raises(ImageError, match=r"gone\.png"):
        extract_embeddings(encoder, [tmp_path / "gone.png"], store, progress=False)
    other = EmbeddingStore(tmp_path / "cache", "someone-else", encoder.dim)
    with pytest.raises(KennerError, match="someone-else"):
        extract_embeddings(encoder, make_images(tmp_path / "img", 1), other, progress=False)


def test_hash_images_uses_and_refreshes_the_cache(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "img", 3)
    cache = HashCache(tmp_path / "hashes.sqlite")
    digests = hash_images(paths, cache, progress=False)
    assert len(set(digests)) == 3 and all(len(d) == 64 for d in digests)
    assert cache.lookup({str(p): p.stat() for p in paths}) == dict(zip(map(str, paths), digests, strict=True))
    shutil.copyfile(paths[0], paths[2])
    assert hash_images(paths, cache, progress=False) == [digests[0], digests[1], digests[0]]


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_extract import TinyEncoder
from kenner.encoders.extract import extract_embeddings
from kenner.encoders.store import EmbeddingStore
import torch
torch.set_num_threads(1)
paths = sorted(__import__("pathlib").Path({images!r}).glob("*.png"))
encoder = TinyEncoder(delay_s=0.1)
store = EmbeddingStore({cache!r}, encoder.fingerprint, encoder.dim)
extract_embeddings(encoder, paths, store, batch_size=2, num_workers=1, shard_size=4, progress=False)
"""


def test_extraction_resumes_after_kill_9(tmp_path: Path) -> None:
    paths = sorted(make_images(tmp_path / "img", 40))
    cache = tmp_path / "cache"
    script = CHILD.format(tests=str(Path(__file__).parent), images=str(tmp_path / "img"), cache=str(cache))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    encoder = TinyEncoder()
    shard_dir = cache / encoder.fingerprint / "shards"
    deadline = time.monotonic() + 120
    try:
        while not (shard_dir.is_dir() and any(shard_dir.glob("*.npz"))):
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child wrote no shard"
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stderr.close()

    store = EmbeddingStore(cache, encoder.fingerprint, encoder.dim)
    done = len(store)
    assert 2 <= done < 40  # every shard written survives (they grow 2, 4, 4, ... with batch 2, shard_size 4)
    resumed = TinyEncoder()
    got = extract_embeddings(resumed, paths, store, batch_size=3, num_workers=2, shard_size=4, progress=False)
    assert resumed.seen == 40 - done

    fresh = TinyEncoder()
    fresh_store = EmbeddingStore(tmp_path / "fresh", fresh.fingerprint, fresh.dim)
    reference = extract_embeddings(fresh, paths, fresh_store, batch_size=2, progress=False)
    assert got.dtype == reference.dtype == np.float32
    np.testing.assert_array_equal(got, reference)
