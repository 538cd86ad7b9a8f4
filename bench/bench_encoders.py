"""Benchmark: each packaged encoder beside each fusion of their ensemble, and the head + kNN blend, on one split.

Exports a stratified Fashion-MNIST subset (``--per-class`` images per class, from Debian's
``dataset-fashion-mnist``) as a folder dataset and runs what a user would run:

    kenner compare --data fashion_mnist/ --methods linear,knn,blend \
        --encoders default,efficientnet_lite1,efficientnet_lite2 --fusion concat,late,learned --out-dir ...

on one group-aware split (70/15/15): every method on each encoder alone and on the three-encoder ensemble fused
each way, all chosen on val, measured on test. The baseline is ``linear`` on the default encoder (EfficientNet-
Lite0) in the same run; the ratio is each entry's test macro-F1 over the baseline's. Embeddings are cached, so
re-runs skip the encoders.

    python bench/bench_encoders.py [--per-class 150] [--methods linear,knn,blend]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from kenner.cli import main as kenner
from kenner.data import fashion_mnist
from kenner.paths import kenner_cache_root

ENCODERS = "default,efficientnet_lite1,efficientnet_lite2"
FUSIONS = "concat,late,learned"
BASELINE = "linear@default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=150, help="images per class (default: 150)")
    parser.add_argument("--methods", default="linear,knn,blend", help="methods (default: linear,knn,blend)")
    parser.add_argument("--encoders", default=ENCODERS, help=f"encoders (default: {ENCODERS})")
    parser.add_argument("--fusion", default=FUSIONS, help=f"fusions of their ensemble (default: {FUSIONS})")
    args = parser.parse_args()
    data = fashion_mnist.export_folder(
        kenner_cache_root() / f"fashion_mnist_encoders_{args.per_class}", per_class=args.per_class, seed=0
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare"
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the Markdown snippet alone
            code = kenner(
                [
                    "compare",
                    "--data",
                    str(data),
                    "--methods",
                    args.methods,
                    "--encoders",
                    args.encoders,
                    "--fusion",
                    args.fusion,
                    "--out-dir",
                    str(out),
                    "--no-track",
                    "-q",
                ]
            )
        if code != 0:
            sys.exit(code)
        seconds = time.perf_counter() - started
        table = pd.read_csv(out / "comparison.csv")
    baseline = table.loc[table["method"] == BASELINE, "test_macro_f1"]
    reference = float(baseline.iloc[0]) if len(baseline) else float("nan")
    rows = [
        "| | method @ encoder(s) | test macro-F1 | test accuracy | val macro-F1 | fit s | vs linear@default |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table.sort_values("test_macro_f1", ascending=False).itertuples():
        rows.append(
            f"| {'✓' if row.chosen_on_val else ''} | {row.method} | {row.test_macro_f1:.4f} | "
            f"{row.test_accuracy:.4f} | {row.val_macro_f1:.4f} | {row.fit_seconds:.1f} | "
            f"{row.test_macro_f1 / reference:.3f}x |"
        )
    singles = table[~table["encoder"].str.contains(",")]
    best_single = singles.loc[singles["test_macro_f1"].idxmax()]
    best = table.loc[table["test_macro_f1"].idxmax()]
    chosen = table.loc[table["chosen_on_val"]].iloc[0]
    print("### Encoders, encoder ensembles and the head + kNN blend (`bench/bench_encoders.py`)\n")
    print(
        f"Fashion-MNIST, {args.per_class} images per class ({10 * args.per_class} images), one group-aware "
        f"70/15/15 split shared by every entry. Command: `kenner compare --data fashion_mnist/ --methods "
        f"{args.methods} --encoders {args.encoders} --fusion {args.fusion}` ({seconds:.0f} s, embeddings "
        "cached beforehand). Ensembles: the three encoders' L2-normalised embeddings; `concat` side by side, "
        "`late` one model per encoder with probabilities averaged, `learned` weights fitted on val. `blend`: "
        "α·linear head + (1 − α)·kNN vote, α chosen on val. ✓: the entry with the best val macro-F1.\n"
    )
    print("\n".join(rows))
    print(
        f"\nBest single encoder: **{best_single['method']}** {best_single['test_macro_f1']:.4f}; best entry: "
        f"**{best['method']}** {best['test_macro_f1']:.4f} ({best['test_macro_f1'] / reference:.3f}x the "
        f"baseline {reference:.4f}); chosen on val: **{chosen['method']}** {chosen['test_macro_f1']:.4f}."
    )


if __name__ == "__main__":
    main()
