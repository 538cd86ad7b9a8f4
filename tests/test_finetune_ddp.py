"""Data-parallel fine-tuning (``--nproc 2``, DDP over gloo on CPU) reaches what one process reaches."""

from __future__ import annotations

from pathlib import Path

import pytest

from kenner.errors import KennerError
from kenner.train.checkpoint import load_checkpoint
from kenner.train.finetune import fit_finetune
from test_finetune import CLASSES, config, one_thread, tiny  # noqa: F401  (fixtures)

# The best val macro-F1 (6 images, what early stopping keeps) of 2 processes is within this of 1 process's:
# the runs see the same images in another order, and BatchNorm sees half batches per process.
TOLERANCE = 0.2
EPOCHS, LR = 6, 3e-3


def test_two_processes_reach_the_metrics_of_one(tiny, tmp_path: Path) -> None:  # noqa: F811
    paths, y, split, weights = tiny
    final = {}
    for nproc in (1, 2):
        records: list[dict] = []
        cfg = config(weights, epochs=EPOCHS, nproc=nproc, ema_decay=0.0, lr=LR, batch_size=6)
        out = tmp_path / f"n{nproc}"
        model = fit_finetune(paths, y, split, CLASSES, cfg, out_dir=out, on_epoch=records.append)
        assert [record["epoch"] for record in records] == list(range(1, EPOCHS + 1))  # rank 0 reports every epoch once
        assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["best_model.pt", "latest_model.pt"]
        assert load_checkpoint(out / "checkpoints" / "latest_model.pt")["train_state"]["epoch"] == EPOCHS
        losses = [record["train_loss"] for record in records]
        assert losses[-1] < losses[0]  # it learns
        final[nproc] = model.info["best_value"]
    assert abs(final[2] - final[1]) <= TOLERANCE


def test_a_whole_batch_sampler_needs_one_process(tiny, tmp_path: Path) -> None:  # noqa: F811
    paths, y, split, weights = tiny
    with pytest.raises(KennerError, match="--nproc 1"):
        fit_finetune(paths, y, split, CLASSES, config(weights, nproc=2, sampler="weighted"), out_dir=tmp_path)


def test_kenner_finetune_with_two_processes_from_the_command_line(tmp_path: Path) -> None:
    """The README's `kenner train --method finetune --nproc 2`: a run folder like any other, written once."""
    import json

    from kenner.cli import main
    from test_new_user import easy_folder

    data = easy_folder(tmp_path / "photos", classes=2, groups=4, photos=1)
    run = tmp_path / "ft"
    argv = ["train", "--method", "finetune", "--data", str(data), "--nproc", "2", "--out-dir", str(run)]
    argv += ["--epochs", "2", "--img-size", "32", "--batch-size", "4", "--no-track", "-q"]
    argv += ["--num-workers", "1"]  # each rank starts a loader worker of its own
    assert main(argv) == 0
    assert json.loads((run / "run_config.json").read_text())["compute"]["nproc"] == 2
    assert (run / "metrics.json").exists() and (run / "checkpoints" / "latest_model.pt").exists()
