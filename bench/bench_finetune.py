"""LP-FT (and WiSE-FT) against fine-tuning with frozen epochs first, on the same split, on CPU.

Usage: python bench/bench_finetune.py [--per-class 40] [--epochs 2] [--freeze-epochs 1] [--img-size 112]
       [--batch-size 32] [--threads N]

Data: a stratified Fashion-MNIST subset (Debian's ``dataset-fashion-mnist``), ``--per-class`` images of each
of the 10 classes exported as PNG (each image its own group), split 70/15/15 once and shared by every run.

(a) baseline, today's recipe: ``kenner train --method finetune --freeze-epochs F --epochs F+E``: F epochs
    train the head on the frozen backbone (still reading and encoding every image each epoch), then E
    epochs train everything;
(b) LP-FT: ``--init probe --epochs E``: the head starts from a linear probe fitted on the cached
    embeddings (extracted into a fresh cache, counted in the wall time), then the same E epochs;
(c) LP-FT + WiSE-FT: (b) with ``--wise-ft`` (alpha in 0, 0.1, ..., 1 chosen on val).

The default encoder (EfficientNet-Lite0, ImageNet weights), ``--img-size`` px, the ``light`` augmentation;
each run's best val epoch is evaluated on test. Prints a Markdown snippet (test macro-F1, accuracy, wall time,
time ratio against (a)) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from kenner.cli import main as kenner
from kenner.data.fashion_mnist import export_folder


def run(name: str, data: Path, root: Path, flags: list[str], common: list[str]) -> tuple[dict, float]:
    """One ``kenner train`` run: its test metrics, its wall time and its folder."""
    started = time.perf_counter()
    assert kenner(["train", "--data", str(data), "--out-dir", str(root / name), *common, *flags]) == 0
    seconds = time.perf_counter() - started
    metrics = json.loads((root / name / "metrics.json").read_text())
    info = json.loads((root / name / "model" / "finetuned.json").read_text())
    return {**metrics["test"], "alpha": info.get("wise_ft", {}).get("alpha")}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40, help="images per class (default: 40)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs training everything (default: 2)")
    parser.add_argument("--freeze-epochs", type=int, default=1, help="baseline's frozen epochs (default: 1)")
    parser.add_argument("--img-size", type=int, default=112, help="fine-tuning input size (default: 112)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="kenner-bench-finetune-") as tmp:
        root = Path(tmp)
        data = export_folder(root / "fashion_mnist", per_class=args.per_class, seed=0)
        common = [
            "--method", "finetune", "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
            "--warmup-epochs", "0", "--num-workers", "0", "--device", "cpu", "--no-track", "-q",
            "--split-seed", "0", "--cache-dir", str(root / "cache"),
        ]  # fmt: skip
        total = str(args.freeze_epochs + args.epochs)
        base, base_s = run(
            "frozen", data, root, ["--freeze-epochs", str(args.freeze_epochs), "--epochs", total], common
        )
        shared = [*common, "--splits", str(root / "frozen" / "splits")]
        lpft, lpft_s = run("lpft", data, root, ["--init", "probe", "--epochs", str(args.epochs)], shared)
        wise, wise_s = run("wise", data, root, ["--init", "probe", "--wise-ft", "--epochs", str(args.epochs)], shared)

    n_test = int(base["n"])
    print(f"### LP-FT vs frozen-epoch fine-tuning (Fashion-MNIST, {args.per_class}/class, {n_test} test images)\n")
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; default encoder at {args.img_size} px\n"
    )
    print("| recipe | test macro-F1 | test accuracy | wall time (s) | time / baseline |")
    print("|---|---|---|---|---|")
    rows = [
        (f"baseline: {args.freeze_epochs} frozen + {args.epochs} epochs", base, base_s),
        (f"LP-FT: probe on cached embeddings + {args.epochs} epochs", lpft, lpft_s),
        (f"LP-FT + WiSE-FT (alpha {wise['alpha']} on val)", wise, wise_s),
    ]
    for label, metrics, seconds in rows:
        print(
            f"| {label} | {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} | {seconds:.1f} | "
            f"{seconds / base_s:.2f}x |"
        )


if __name__ == "__main__":
    main()
