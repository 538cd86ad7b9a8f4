"""Fine-tuning the default encoder against an MLP head on its frozen embeddings, same split, on CPU.

Usage: python bench/bench_finetune.py [--per-class 100] [--epochs 2] [--img-size 112] [--batch-size 32]
       [--lr 1e-3] [--threads N]

Data: a stratified Fashion-MNIST subset (Debian's ``dataset-fashion-mnist``), ``--per-class`` images of each
of the 10 classes exported as PNG (each image its own group), split 70/15/15 once and shared by both runs.

(a) ``kenner finetune``: the default encoder (EfficientNet-Lite0, ImageNet weights) fine-tuned end to end
    for ``--epochs`` epochs at ``--img-size`` px with the ``light`` augmentation, best validation epoch
    evaluated on test;
(b) ``kenner train --head-type mlp``: the same encoder frozen, its embeddings (its own 224 px
    preprocessing) extracted into a fresh cache, an MLP head fitted on them.

Wall time of each covers everything it needs from the image folder on (b: extraction + fit). Prints a
Markdown snippet (test macro-F1, accuracy, wall time and the time ratio) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from kenner.config.legacy import DataConfig, EncoderConfig, RunConfig, SplitConfig
from kenner.heads.config import HeadConfig
from kenner.train.finetune_config import FinetuneConfig, FinetuneRun
from kenner.train.run import train_classifier

from kenner.data.fashion_mnist import export_folder
from kenner.train.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default: 100)")
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default: 2)")
    parser.add_argument("--img-size", type=int, default=112, help="fine-tuning input size (default: 112)")
    parser.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: 1e-3)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="kenner-bench-finetune-") as tmp:
        root = Path(tmp)
        data = export_folder(root / "fashion_mnist", per_class=args.per_class, seed=0)
        data_cfg = DataConfig(data=str(data))

        started = time.perf_counter()
        ft_run = FinetuneRun(
            out_dir=str(root / "finetune"),
            data=data_cfg,
            split=SplitConfig(split_seed=0),
            encoder=EncoderConfig(encoder="default"),
            finetune=FinetuneConfig(
                epochs=args.epochs,
                img_size=args.img_size,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_epochs=0,
                aug_preset="light",
            ),
        )
        ft_metrics = finetune(ft_run)
        ft_seconds = time.perf_counter() - started

        started = time.perf_counter()
        mlp_cfg = RunConfig(
            out_dir=str(root / "mlp"),
            data=data_cfg,
            split=SplitConfig(splits=str(root / "finetune" / "splits")),
            encoder=EncoderConfig(encoder="default", cache_dir=str(root / "cache")),
            head=HeadConfig(head_type="mlp"),
        )
        mlp_metrics = train_classifier(mlp_cfg)
        mlp_seconds = time.perf_counter() - started

    n_test = int(ft_metrics["test"]["n"])
    print(f"### Fine-tuning vs frozen embeddings + MLP (Fashion-MNIST, {args.per_class}/class, {n_test} test images)\n")
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| method | test macro-F1 | test accuracy | wall time (s) |")
    print("|---|---|---|---|")
    print(
        f"| finetune default, {args.epochs} epochs at {args.img_size} px | "
        f"{ft_metrics['test']['macro_f1']:.4f} | {ft_metrics['test']['accuracy']:.4f} | {ft_seconds:.1f} |"
    )
    print(
        f"| frozen default (224 px) + MLP head | {mlp_metrics['test']['macro_f1']:.4f} | "
        f"{mlp_metrics['test']['accuracy']:.4f} | {mlp_seconds:.1f} |"
    )
    print(f"\nwall-time ratio finetune / (embed + MLP): {ft_seconds / mlp_seconds:.1f}x")


if __name__ == "__main__":
    main()
