"""``kenner demo``: the whole pipeline on real images (Fashion-MNIST) with the embedded default encoder."""

from __future__ import annotations

import time
from pathlib import Path

from kenner.config.tree import build_config, to_nested
from kenner.data import fashion_mnist
from kenner.runs.driver import RunResult, train
from kenner.runs.folder import headline


def run_demo(
    out_dir: Path,
    *,
    per_class: int = 200,
    encoder: str = "default",
    cache_dir: str | None = None,
    track: str = "mlflow",
) -> RunResult:
    """Export a stratified Fashion-MNIST subset, then split, embed, fit a linear head, evaluate and report."""
    started = time.perf_counter()
    data_dir = fashion_mnist.export_folder(out_dir / "fashion_mnist", per_class=per_class, seed=0)
    cfg = build_config(
        [
            to_nested(
                {
                    "out_dir": str(out_dir / "fashion_mnist_run"),
                    "method": "linear",
                    "data": str(data_dir),
                    "encoder": encoder,
                    "cache_dir": cache_dir,
                    "standardize": "standardize",
                    "track": track,
                }
            )
        ]
    )
    result = train(cfg)
    print(f"\nkenner demo: Fashion-MNIST, {per_class} images per class, encoder {encoder!r}, linear head")
    print(headline(result.metrics, indent="  "))
    print(f"  report: {result.report}   ({time.perf_counter() - started:.0f} s)")
    return result
