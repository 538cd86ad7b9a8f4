"""Extraction and sweeps on a local Ray instance give what the local path gives, into the same store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_image
from kenner.config.sections import ComputeConfig, EncoderConfig
from kenner.encoders.embedder import Embedder
from kenner.encoders.extract import hash_images
from kenner.encoders.store import EmbeddingStore
from kenner.errors import KennerError
from kenner.runs.sweep import sweep_tasks
from test_sweep import FIXED, RecordingTracker, _grid, _task

pytest.importorskip("ray")


def real_images(directory: Path, n: int) -> list[Path]:
    """``n`` distinct small noisy PNGs of varied sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    return [write_image(directory / f"img_{i:02d}.png", size=(24 + i, 18), noise=60, seed=i) for i in range(n)]


def embedder(cache: Path, ray: str | None = None) -> Embedder:
    """The default encoder on CPU through the store under ``cache`` (on Ray with ``ray``)."""
    return Embedder(EncoderConfig(encoder="default", cache_dir=str(cache)), ComputeConfig(device="cpu", ray=ray))


def shard_pids(store: EmbeddingStore) -> dict[str, int]:
    """Shard name -> the id of the process that wrote it (shards are named ``<time>-<pid>-<uuid>.npz``)."""
    return {path.name: int(path.name.split("-")[1]) for path in store.shard_dir.glob("*.npz")}


def test_ray_extraction_gives_the_local_embeddings_computing_only_what_the_store_lacks(
    tmp_path: Path, ray_local: None
) -> None:
    """An interrupted local run left 5 of 8 images in the store: Ray's actors add the other 3 as shards of the same
    store, and the result equals a fresh local extraction (same encoder, same preprocessing)."""
    paths = real_images(tmp_path / "images", 8)
    cache = tmp_path / "cache"
    local = embedder(cache)
    first = local.embed(paths[:5])  # an "interrupted" run: the store holds 5 of the 8
    store = EmbeddingStore(cache, local.fingerprint, local.encoder.dim)
    before = shard_pids(store)
    assert set(before.values()) == {os.getpid()}
    got = embedder(cache, ray="local").embed(paths)
    after = shard_pids(store)
    new = sorted(set(after) - set(before))
    assert new and all(after[name] != os.getpid() for name in new)
    new_keys = []
    for name in new:
        with np.load(store.shard_dir / name) as shard:
            new_keys += [key.decode() for key in shard["keys"]]
    keys = hash_images(paths, progress=False)
    assert sorted(new_keys) == sorted(keys[5:])  # the three missing images, each once
    np.testing.assert_array_equal(got[:5], first)
    # both stored as fp16: equal up to fp16 rounding of the same float32 values
    np.testing.assert_allclose(got, embedder(tmp_path / "fresh").embed(paths), rtol=0, atol=1e-3)


def test_a_broken_image_on_ray_is_one_error_naming_it(tmp_path: Path, ray_local: None) -> None:
    paths = real_images(tmp_path / "images", 3)
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")
    with pytest.raises(KennerError, match=r"broken\.png"):
        embedder(tmp_path / "cache", ray="local").embed([*paths, broken])


TIMES = ("fit_seconds", "calibration_seconds", "evaluation_seconds")


def test_a_ray_sweep_writes_the_local_sweeps_results(tmp_path: Path, ray_local: None) -> None:
    """Each batched group is one Ray task on embeddings put in the object store once; results.csv (but for
    the measured seconds) and what is tracked, in the driver, are the local sweep's."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)  # as in a Ray worker: the same arithmetic
    grid = _grid(methods=("linear", "mlp"), hidden_sizes=["8"], profiles=("base", "calib"), lr=["0.01", "0.03"])
    rows = {}
    for where, ray in (("local", None), ("ray", "local")):
        tracker = RecordingTracker()
        sweep_tasks(
            {"e": _task(3), "f": _task(4)}, grid, FIXED, tmp_path / where, dataset="d", tracker=tracker, ray=ray
        )
        rows[where] = pd.read_csv(tmp_path / where / "results.csv")
        assert [run["name"] for run in tracker.runs] == rows[where]["name"].tolist()
    assert len(rows["local"]) == 16 and rows["local"]["batched_heads"].max() > 1
    pd.testing.assert_frame_equal(rows["ray"].drop(columns=list(TIMES)), rows["local"].drop(columns=list(TIMES)))


def test_a_failing_group_on_ray_is_the_local_one_line_error(tmp_path: Path, ray_local: None) -> None:
    task = _task(6)
    task.split = np.where(task.split == "val", "train", task.split)
    with pytest.raises(KennerError, match="validation rows"):
        sweep_tasks({"e": task}, _grid(profiles=("calib",)), FIXED, tmp_path, dataset="d", ray="local")


def test_kenner_embed_ray_from_the_command_line_equals_kenner_embed(tmp_path: Path, ray_local: None) -> None:
    """The README's `kenner embed --data photos/ --ray`: the exported embeddings equal a local `kenner embed`."""
    from kenner.cli import main
    from test_new_user import easy_folder

    data = easy_folder(tmp_path / "photos", classes=2, groups=3, photos=1)
    exported = {}
    for name, extra in (("local", []), ("ray", ["--ray"])):
        output = tmp_path / f"{name}.npz"
        argv = ["embed", "--data", str(data), "--cache-dir", str(tmp_path / name), "--output", str(output), "-q"]
        assert main([*argv, *extra]) == 0
        exported[name] = np.load(output)
    assert list(exported["ray"]["ids"]) == list(exported["local"]["ids"])
    views = [key for key in exported["local"].files if key not in ("ids", "labels", "groups")]
    for view in views:
        np.testing.assert_allclose(exported["ray"][view], exported["local"][view], rtol=0, atol=1e-3)
