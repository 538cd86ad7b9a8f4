"""``kenner embed`` stopped by SIGTERM (what schedulers and ``timeout`` send) or ``kill -9`` keeps what it wrote, and
the next run computes only the rest: counted through the embedding store, with the real default encoder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import write_image
from kenner.encoders.store import EmbeddingStore

SRC = Path(__file__).resolve().parents[1] / "src"
IMAGES = 200


def _embed(folder: Path, cache: Path) -> subprocess.Popen:
    """``kenner embed`` in a child process, batches of 16 images."""
    code = "import sys; from kenner.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [
        "embed",
        "--data",
        str(folder),
        "--cache-dir",
        str(cache),
        "--embed-batch-size",
        "16",
        "--num-workers",
        "1",
        "--duplicates",
        "ignore",
    ]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _shards(cache: Path) -> set[Path]:
    return set(cache.glob("*/shards/*.npz"))


def _wait_for_shard_beyond(child: subprocess.Popen, cache: Path, known: set[Path]) -> None:
    deadline = time.monotonic() + 300
    while not _shards(cache) - known:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no shard was written"
        time.sleep(0.02)


def _store(cache: Path) -> EmbeddingStore:
    (meta,) = [json.loads(path.read_text()) for path in cache.glob("*/meta.json")]
    return EmbeddingStore(cache, meta["fingerprint"], meta["dim"])


def _rows(shards: set[Path]) -> int:
    total = 0
    for shard in shards:
        with np.load(shard) as data:
            total += len(data["keys"])
    return total


def test_sigterm_and_kill_9_keep_the_work_done(tmp_path: Path) -> None:
    for i in range(IMAGES):
        write_image(tmp_path / "data" / ("a" if i % 2 else "b") / f"x{i}_0.png", (24, 24), noise=60, seed=i)
    cache = tmp_path / "cache"

    child = _embed(tmp_path / "data", cache)
    _wait_for_shard_beyond(child, cache, set())
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "interrupted; finished work is kept" in err and "Traceback" not in err
    after_term = len(_store(cache))
    assert 16 <= after_term < IMAGES

    child = _embed(tmp_path / "data", cache)
    _wait_for_shard_beyond(child, cache, _shards(cache))
    child.kill()
    child.communicate(timeout=60)
    after_kill = len(_store(cache))
    assert after_term < after_kill < IMAGES

    before = _shards(cache)
    child = _embed(tmp_path / "data", cache)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert f"{IMAGES} samples x 1 view(s) embedded" in out
    assert _rows(_shards(cache) - before) == IMAGES - after_kill  # only the rest was computed
    assert len(_store(cache)) == IMAGES
