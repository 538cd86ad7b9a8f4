"""Tests for the embedding store: shards, index, metadata checks, and the file-hash cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kenner.encoders.store import (
    EmbeddingStore,
    HashCache,
    MissingEmbeddingsError,
    ShardQuarantinedError,
)
from kenner.errors import KennerError
from kenner.paths import default_cache_dir

FP = "enc-abc123"
DIM = 6


def keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i:063d}"[-64:] for i in range(n)]


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_write_then_get_returns_float32_rows_in_key_order(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    ks, vs = keys(5), vectors(5)
    store.write(ks, vs)
    order = [ks[3], ks[0], ks[3], ks[4]]
    got = store.get(order)
    assert got.dtype == np.float32 and got.shape == (4, DIM)
    np.testing.assert_array_equal(got, vs[[3, 0, 3, 4]].astype(np.float16).astype(np.float32))
    assert len(store) == 5 and ks[2] in store and "nope" not in store


def test_float32_store_is_exact(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM, dtype="float32")
    vs = vectors(3)
    store.write(keys(3), vs)
    np.testing.assert_array_equal(store.get(keys(3)), vs)


def test_missing_and_get_of_unknown_keys(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    store.write(keys(2), vectors(2))
    extra = keys(3, prefix="x")
    asked = [keys(2)[1], extra[0], extra[0], extra[1]]
    assert store.missing(asked) == extra[:2]
    with pytest.raises(MissingEmbeddingsError, match="2 of 3 images have no embedding") as info:
        store.get(asked)
    assert isinstance(info.value, KeyError) and isinstance(info.value, KennerError)


def test_reopen_sees_shards_and_index_is_written(tmp_path: Path) -> None:
    first = EmbeddingStore(tmp_path, FP, DIM)
    first.write(keys(3), vectors(3))
    first.write(keys(2, prefix="y"), vectors(2, seed=1))
    first.save_index()
    assert (tmp_path / FP / "index.npz").exists()
    assert len(list((tmp_path / FP / "shards").glob("*.npz"))) == 2
    reopened = EmbeddingStore(tmp_path, FP, DIM)
    assert len(reopened) == 5
    np.testing.assert_array_equal(reopened.get(keys(3)), first.get(keys(3)))


def test_two_writers_fill_one_store_and_see_each_other(tmp_path: Path) -> None:
    a = EmbeddingStore(tmp_path, FP, DIM)
    b = EmbeddingStore(tmp_path, FP, DIM)
    a.write(keys(2, prefix="a"), vectors(2, seed=1))
    b.write(keys(2, prefix="b"), vectors(2, seed=2))
    a.write(keys(1, prefix="c"), vectors(1, seed=3))
    assert a.missing(keys(2, prefix="b")) == []  # a picks up b's shard without reopening
    np.testing.assert_allclose(a.get(keys(2, prefix="b")), vectors(2, seed=2), atol=1e-2)
    a.save_index()
    b.save_index()  # merges a's shards into the index it writes
    assert len(EmbeddingStore(tmp_path, FP, DIM)) == 5
    with np.load(tmp_path / FP / "index.npz") as index:
        assert len(index["shards"]) == 3 and len(index["keys"]) == 5


def test_index_drops_deleted_shards(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    gone = store.write(keys(2, prefix="g"), vectors(2))
    store.write(keys(3), vectors(3))
    store.save_index()
    gone.unlink()
    reopened = EmbeddingStore(tmp_path, FP, DIM)
    assert len(reopened) == 3 and reopened.missing(keys(2, prefix="g")) == keys(2, prefix="g")
    with np.load(tmp_path / FP / "index.npz") as index:
        assert len(index["shards"]) == 1


def test_half_written_shard_is_ignored(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    store.write(keys(2), vectors(2))
    (store.shard_dir / f".00000000000000000001-99-abc.npz.tmp-{os.getpid()}").write_bytes(b"PK\x03\x04half")
    (store.shard_dir / ".tmp-12345").write_bytes(b"\x00" * 10)
    reopened = EmbeddingStore(tmp_path, FP, DIM)
    assert len(reopened) == 2
    np.testing.assert_allclose(reopened.get(keys(2)), vectors(2), atol=1e-2)


@pytest.mark.parametrize("damage", ["not a zip", "truncated"])
def test_unreadable_shard_is_moved_aside(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    store.write(keys(2), vectors(2))
    bad = store.write(keys(3, prefix="g"), vectors(3))
    bad.write_bytes(b"not a zip file" if damage == "not a zip" else bad.read_bytes()[:100])
    (tmp_path / FP / "index.npz").unlink(missing_ok=True)  # a fresh process reads every shard's keys
    with caplog.at_level("WARNING"):
        reopened = EmbeddingStore(tmp_path, FP, DIM)
    assert len(reopened) == 2 and reopened.missing(keys(3, prefix="g")) == keys(3, prefix="g")
    assert not bad.exists() and (tmp_path / FP / "quarantine" / bad.name).is_file()
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith(f"{bad}: unreadable embedding shard (") and "computed again" in message
    assert "\n" not in message


def test_shard_damaged_after_indexing_is_quarantined_when_read(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    store.write(keys(2), vectors(2))
    bad = store.write(keys(3, prefix="g"), vectors(3))
    store.save_index()
    bad.write_bytes(bad.read_bytes()[:-40])
    reopened = EmbeddingStore(tmp_path, FP, DIM)  # the index still lists the shard
    assert len(reopened) == 5
    with pytest.raises(ShardQuarantinedError) as caught:
        reopened.get([*keys(2), *keys(3, prefix="g")])
    assert isinstance(caught.value, KennerError)
    assert len(reopened) == 2 and (tmp_path / FP / "quarantine" / bad.name).is_file()
    np.testing.assert_allclose(reopened.get(keys(2)), vectors(2), atol=1e-2)
    assert len(EmbeddingStore(tmp_path, FP, DIM)) == 2  # the rewritten index forgot the shard


def test_unreadable_index_is_rebuilt(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, FP, DIM)
    store.write(keys(4), vectors(4))
    store.save_index()
    index = tmp_path / FP / "index.npz"
    index.write_bytes(index.read_bytes()[:50])
    reopened = EmbeddingStore(tmp_path, FP, DIM)
    np.testing.assert_allclose(reopened.get(keys(4)), vectors(4), atol=1e-2)
    with np.load(index) as data:
        assert len(data["keys"]) == 4


@pytest.mark.parametrize(
    ("dim", "dtype", "edit", "field"),
    [
        (DIM + 1, "float16", None, "dim"),
        (DIM, "float32", None, "dtype"),
        (DIM, "float16", "other", "fingerprint"),
    ],
)
def test_mismatched_store_settings_raise(tmp_path: Path, dim: int, dtype: str, edit: str | None, field: str) -> None:
    EmbeddingStore(tmp_path, FP, DIM, encoder_name="tiny")
    meta_path = tmp_path / FP / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta == {"fingerprint": FP, "dim": DIM, "dtype": "float16", "encoder": "tiny", "format": 1}
    if edit:
        meta_path.write_text(json.dumps({**meta, "fingerprint": edit}))
    with pytest.raises(KennerError, match=field):
        EmbeddingStore(tmp_path, FP, dim, dtype)


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(KennerError, match="folder name"):
        EmbeddingStore(tmp_path, "../escape", DIM)
    with pytest.raises(KennerError, match="dtype"):
        EmbeddingStore(tmp_path, FP, DIM, dtype="int8")
    store = EmbeddingStore(tmp_path, FP, DIM)
    with pytest.raises(KennerError, match="shape"):
        store.write(keys(2), vectors(3))
    with pytest.raises(KennerError, match="ASCII"):
        store.write(["clé"], vectors(1))
    with pytest.raises(KennerError, match="float32 store"):
        store.write(keys(1), np.full((1, DIM), 1e6, dtype=np.float32))
    assert len(store) == 0 and list(store.shard_dir.iterdir()) == []


def test_for_encoder_and_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KENNER_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "embeddings"

    class Encoder:
        name, fingerprint, dim = "tiny", FP, DIM

    store = EmbeddingStore.for_encoder(Encoder())
    assert store.path == tmp_path / "cache" / "embeddings" / FP and store.encoder_name == "tiny"
    monkeypatch.delenv("KENNER_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "kenner" / "embeddings"


def test_hash_cache_reuses_only_unchanged_files(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(b"one")
    path = str(image)
    cache = HashCache(tmp_path / "hashes.sqlite")
    cache.remember([(path, image.stat(), "d1")])
    other = HashCache(tmp_path / "hashes.sqlite")  # a second process opening the same file
    assert other.lookup({path: image.stat()}) == {path: "d1"}
    image.write_bytes(b"changed")
    os.utime(image, ns=(1, 1))
    assert other.lookup({path: image.stat()}) == {}
    other.remember([(path, image.stat(), "d2")])
    assert cache.lookup({path: image.stat(), str(tmp_path / "none"): image.stat()}) == {path: "d2"}


@pytest.mark.parametrize("damage", ["not a database", "truncated"])
def test_corrupt_hash_cache_is_moved_aside(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "hashes.sqlite"
    files = [tmp_path / f"f{i}" for i in range(300)]
    for i, file in enumerate(files):
        file.write_text(str(i))
    stats = {str(file): file.stat() for file in files}
    HashCache(path).remember((name, stat, "ab" * 32) for name, stat in stats.items())
    path.write_bytes(b"garbage " * 100 if damage == "not a database" else path.read_bytes()[:5000])
    with caplog.at_level("WARNING"):
        cache = HashCache(path)
        assert cache.lookup(stats) == {}
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith(f"{path}: corrupt hash cache (") and "computed again" in message
    assert len(list(tmp_path.glob("hashes.sqlite.corrupt-*"))) == 1
    cache.remember([(str(files[0]), stats[str(files[0])], "cd" * 32)])
    assert HashCache(path).lookup(stats) == {str(files[0]): "cd" * 32}
