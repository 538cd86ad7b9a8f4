"""Benchmark: ``kenner compare`` on real images — the methods on the same group-aware folds of Fashion-MNIST.

Exports a stratified Fashion-MNIST subset (``--per-class`` images per class, from Debian's
``dataset-fashion-mnist``) as a folder dataset, then runs exactly what a user would run:

    kenner compare --data fashion_mnist/ --methods knn,linear,mlp,mlp:full,metric --folds 3 --out-dir ...

with the default encoder (EfficientNet-Lite0, cached embeddings). ``--methods ...,finetune`` adds the same
encoder fine-tuned (at ``--img-size`` px, to fit a CPU; hours over 3 folds on 2 cores, so not by default).
Prints the comparison table it wrote.

    python bench/bench_compare.py [--per-class 100] [--folds 3] [--methods ...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from kenner.cli import main as kenner
from kenner.data import fashion_mnist
from kenner.paths import kenner_cache_root

METHODS = "knn,linear,mlp,mlp:full,metric"  # fine-tuning: bench_finetune.py (hours of CPU over 3 folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="images per class (default: 100)")
    parser.add_argument("--folds", type=int, default=3, help="group-aware folds (default: 3)")
    parser.add_argument("--methods", default=METHODS, help=f"methods (default: {METHODS})")
    parser.add_argument("--img-size", type=int, default=64, help="fine-tuning input size (default: 64)")
    args = parser.parse_args()
    data = fashion_mnist.export_folder(
        kenner_cache_root() / f"fashion_mnist_compare_{args.per_class}", per_class=args.per_class, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare"
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the Markdown snippet
            code = kenner(
                [
                    "compare",
                    "--data",
                    str(data),
                    "--methods",
                    args.methods,
                    "--folds",
                    str(args.folds),
                    "--img-size",
                    str(args.img_size),
                    "--out-dir",
                    str(out),
                    "--no-track",
                ]
            )
        if code != 0:
            sys.exit(code)
        lines = (out / "comparison.md").read_text(encoding="utf-8").splitlines()[2:]
        table = "\n".join(line for line in lines if not line.startswith("!["))
    finetuning = f"; fine-tuning at {args.img_size} px" if "finetune" in args.methods else ""
    print("### Every method on one set of folds (`bench/bench_compare.py`)\n")
    print(
        f"Fashion-MNIST, {args.per_class} images per class ({10 * args.per_class} images, one image per group), "
        f"{args.folds} group-aware folds, default encoder (EfficientNet-Lite0)"
        f"{finetuning}. Command: `kenner compare --data fashion_mnist/ --methods {args.methods} "
        f"--folds {args.folds} --img-size {args.img_size}`.\n"
    )
    print(table.strip())


if __name__ == "__main__":
    main()
