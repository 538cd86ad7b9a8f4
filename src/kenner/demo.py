"""``kenner demo``: the whole pipeline on real images (Fashion-MNIST) with the embedded default encoder."""

from __future__ import annotations

import time
from pathlib import Path

from kenner.config.legacy import DataConfig, EncoderConfig, RunConfig
from kenner.data import fashion_mnist
from kenner.heads.config import HeadConfig
from kenner.train.run import headline, train_classifier


def run_demo(out_dir: Path, *, per_class: int = 200, encoder: str = "default",
             cache_dir: str | None = None) -> dict[str, dict[str, float]]:
    """Export a stratified Fashion-MNIST subset, then split, embed, fit, evaluate and report."""
    started = time.perf_counter()
    data_dir = fashion_mnist.export_folder(out_dir / "fashion_mnist", per_class=per_class, seed=0)
    cfg = RunConfig(
        out_dir=str(out_dir / "fashion_mnist_run"),
        data=DataConfig(data=str(data_dir)),
        encoder=EncoderConfig(encoder=encoder, cache_dir=cache_dir),
        head=HeadConfig(head_type="linear", standardize="standardize"),
    )
    metrics = train_classifier(cfg)
    print(f"\nkenner demo: Fashion-MNIST, {per_class} images per class, encoder {encoder!r}, linear head")
    print(headline(metrics, indent="  "))
    print(f"  report: {Path(cfg.out_dir) / 'report.md'}   ({time.perf_counter() - started:.0f} s)")
    return metrics
