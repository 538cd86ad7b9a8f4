"""Checkpoints: RNG round trip, atomic files, resume choice, and kill -9 mid-run then auto-resume giving
the same final weights and metrics as an uninterrupted run (deterministic CPU mode, subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import write_image
from kenner.errors import KennerError
from kenner.train.checkpoint import (
    LATEST,
    load_checkpoint,
    resume_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

# Fine-tunes a tiny timm model on the class folders under DATA (deterministic CPU mode), then saves the model
# and the probabilities of every image to OUT: python -c RUNNER DATA WEIGHTS OUT.
RUNNER = """
import json, logging, sys
from pathlib import Path
import numpy as np
from kenner.config.tree import RunConfig
from kenner.train.finetune import fit_finetune

logging.basicConfig(level=logging.INFO, format="%(message)s")
data, weights, out = map(Path, sys.argv[1:4])
files = sorted(data.glob("*/*.png"))
classes = sorted({f.parent.name for f in files})
paths = [{"image": f} for f in files]
y = np.array([classes.index(f.parent.name) for f in files])
split = np.array([("train", "train", "val", "test")[i % 4] for i in range(len(files))])
cfg = RunConfig().replace(encoder="timm:test_resnet", weights=str(weights), img_size=32, epochs=3, batch_size=4,
                          freeze_epochs=1, ema_decay=0.9, mixup=0.2, deterministic=True, num_workers=0, seed=7,
                          device="cpu", lr=1e-3)
model = fit_finetune(paths, y, split, classes, cfg, out_dir=out)
model.save(out / "model")
(out / "proba.json").write_text(json.dumps(model.predict_proba(paths).tolist()))
"""
EPOCHS = 3


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint({"rng": rng_state()}, tmp_path / "a.pt", tmp_path / "b.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "b.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temporary files left


def test_resume_choice(tmp_path: Path) -> None:
    assert resume_path(tmp_path, resume=None, fresh=False) is None
    save_checkpoint({"epoch": 1}, tmp_path / LATEST)
    assert resume_path(tmp_path, resume=None, fresh=False) == tmp_path / LATEST
    assert resume_path(tmp_path, resume=None, fresh=True) is None
    assert resume_path(tmp_path, resume=str(tmp_path / LATEST), fresh=False) == tmp_path / LATEST
    with pytest.raises(KennerError, match="no such checkpoint"):
        resume_path(tmp_path, resume=str(tmp_path / "missing.pt"), fresh=False)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(KennerError, match="--fresh"):
        load_checkpoint(tmp_path / "broken.pt")


@pytest.fixture
def command(tmp_path: Path) -> list[str]:
    """The fine-tuning subprocess: 3 epochs, EMA, mixup, a frozen first epoch, on 3 classes x 10 images."""
    for label, color in {"alpha": (220, 40, 40), "beta": (40, 200, 60), "gamma": (50, 70, 230)}.items():
        for i in range(10):
            write_image(tmp_path / "data" / label / f"{label}{i}_1.png", (40, 40), color=color, noise=50, seed=i)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False, num_classes=0).state_dict(), weights)
    return [sys.executable, "-c", RUNNER, str(tmp_path / "data"), str(weights)]


def run(command: list[str], out_dir: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([*command, str(out_dir)], env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_kill_9_then_auto_resume_equals_an_uninterrupted_run(command: list[str], tmp_path: Path) -> None:
    run(command, tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [*command, str(interrupted)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = interrupted / "checkpoints" / LATEST
    deadline = time.monotonic() + 120
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(latest)["train_state"]["epoch"]
    assert 1 <= killed_at < EPOCHS
    assert not (interrupted / "model").exists()

    resumed = run(command, interrupted)
    assert f"after epoch {killed_at}" in resumed.stderr
    assert f"Epoch {killed_at}/{EPOCHS}" not in resumed.stderr  # finished epochs are not trained again

    straight_weights = load_file(tmp_path / "straight" / "model" / "finetuned.safetensors")
    resumed_weights = load_file(interrupted / "model" / "finetuned.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for key, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    assert json.loads((tmp_path / "straight" / "proba.json").read_text()) == json.loads(
        (interrupted / "proba.json").read_text()
    )
    straight_history = json.loads((tmp_path / "straight" / "model" / "finetuned.json").read_text())["history"]
    resumed_history = json.loads((interrupted / "model" / "finetuned.json").read_text())["history"]
    volatile = ("seconds", "train_images_per_s")
    for before, after in zip(straight_history, resumed_history, strict=True):
        assert {k: v for k, v in before.items() if k not in volatile} == {
            k: v for k, v in after.items() if k not in volatile
        }
