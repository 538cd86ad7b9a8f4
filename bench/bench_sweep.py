"""Benchmark: a sweep of 100+ linear-head configurations, batched trainer vs scikit-learn.

Embeds 10,000 Fashion-MNIST images (1,000 per class, from Debian's ``dataset-fashion-mnist``) with the
default encoder (EfficientNet-Lite0, 1,280 dims; cached in the embedding store, so only the first run
pays for it), splits them 70/15/15 (stratified), then sweeps learning rate x weight decay x label
smoothing:

* kenner: every configuration as one head of :func:`kenner.heads.multihead.fit_multihead`
  (standardised input, torch's AdamW, early stopping on validation macro-F1);
* scikit-learn: ``LogisticRegression`` (lbfgs, standardised input) fitted once per configuration, with
  ``C = 1 / (weight_decay * n_train)`` (the L2 strength that matches decay on the mean loss; no
  penalty for weight decay 0). It has no learning rate or label smoothing, so configurations sharing a
  weight decay give the same model; ``--sklearn-distinct-c`` fits each distinct C once instead.

Prints seconds per configuration for both, their ratio and the test macro-F1 of the configuration each
picks on the validation set (and the best test macro-F1 over all configurations). Timings are medians: of the
``--repeats`` kenner sweeps, run before, between and after the scikit-learn fits, and of those fits, so that
both sides see the machine in the same state and a burst of other load does not decide the ratio.

    python bench/bench_sweep.py [--per-class 1000] [--threads 2] [--repeats 3] [--sklearn-distinct-c]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from kenner.data import fashion_mnist
from kenner.encoders import create_encoder
from kenner.encoders.extract import extract_embeddings
from kenner.encoders.store import EmbeddingStore
from kenner.heads.multihead import fit_multihead
from kenner.paths import kenner_cache_root

LRS = (1e-3, 3e-3, 1e-2, 3e-2)
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2, 0.3)


def load_embeddings(per_class: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(X, y, what X is): default-encoder embeddings of a stratified Fashion-MNIST subset (cached)."""
    _, labels = fashion_mnist.load("train")
    indices = fashion_mnist.stratified_indices(labels, per_class, seed=0)
    folder = fashion_mnist.export_folder(cache_dir / "fashion_mnist_bench", per_class=per_class, seed=0)
    paths = [folder / fashion_mnist.CLASSES[labels[i]] / f"fmnisttrain{i:05d}.png" for i in indices]
    encoder = create_encoder("default")
    store = EmbeddingStore(cache_dir / "embeddings", encoder.fingerprint, encoder.dim)
    X = extract_embeddings(encoder, paths, store, batch_size=64, num_workers=2)
    return X, labels[indices].astype(np.int64), f"the default encoder ({encoder.name})"


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads for both sides")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="kenner sweeps timed (the median is reported)")
    parser.add_argument(
        "--sklearn-distinct-c",
        action="store_true",
        help="fit sklearn once per distinct C instead of once per configuration (faster; "
        "configurations sharing a weight decay give the same LogisticRegression)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=kenner_cache_root(),
        help="kenner cache root (default: $KENNER_CACHE or ~/.cache/kenner)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    X, y, what = load_embeddings(args.per_class, args.cache_dir)
    data_line = (
        f"{len(X)} x {X.shape[1]} embeddings from {what}, {len(np.unique(y))} classes "
        f"({time.perf_counter() - start:.0f} s to load/embed)"
    )
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0)
    grid = list(itertools.product(LRS, WEIGHT_DECAYS, LABEL_SMOOTHINGS))
    sweep_line = (
        f"{len(grid)} linear-head configurations (lr × weight decay × label smoothing), "
        f"train {len(X_train)} / val {len(X_val)} / test {len(X_test)}, {args.threads} threads"
    )

    heads = [
        dict(
            lr=lr,
            weight_decay=wd,
            label_smoothing=ls,
            standardize="standardize",
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=5,
            device="cpu",
        )
        for lr, wd, ls in grid
    ]
    sweeps: list[float] = []

    def kenner_sweep() -> tuple[np.ndarray, np.ndarray]:
        """One timed sweep: fit every head, then predict the validation and test rows."""
        start = time.perf_counter()
        fit = fit_multihead(X_train, y_train, heads, classes=np.arange(10), X_val=X_val, y_val=y_val)
        predictions = fit.logits(X_val).argmax(-1), fit.logits(X_test).argmax(-1)
        sweeps.append(time.perf_counter() - start)
        print(f"  kenner sweep: {sweeps[-1]:.1f} s", file=sys.stderr)
        return predictions

    # The kenner sweeps are spread over the scikit-learn fits (start, ..., end): both sides see the machine
    # in the same state, and the medians keep a burst of other load from deciding the ratio.
    at = {round(i * len(grid) / max(args.repeats - 1, 1)) for i in range(args.repeats)}
    scaler = StandardScaler().fit(X_train)
    Xs_train, Xs_val, Xs_test = (scaler.transform(a) for a in (X_train, X_val, X_test))
    fits: dict[float, tuple[float, float, float]] = {}  # C -> (seconds, val F1, test F1)
    fit_seconds: list[float] = []
    for i in range(len(grid) + 1):
        if i in at:
            val_pred, test_pred = kenner_sweep()
        if i == len(grid):
            break
        wd = grid[i][1]
        C = 1.0 / (wd * len(X_train)) if wd > 0 else float("inf")
        if C in fits and args.sklearn_distinct_c:
            continue
        start = time.perf_counter()
        model = LogisticRegression(C=C, max_iter=300)  # C = inf: no penalty
        model.fit(Xs_train, y_train)
        seconds = time.perf_counter() - start
        fit_seconds.append(seconds)
        fits[C] = (seconds, macro_f1(y_val, model.predict(Xs_val)), macro_f1(y_test, model.predict(Xs_test)))
        print(f"  sklearn C={C:.4g}: {seconds:.1f} s, val macro-F1 {fits[C][1]:.4f}", file=sys.stderr)
    kenner_seconds = float(np.median(sweeps))
    kenner_val = [macro_f1(y_val, p) for p in val_pred]
    kenner_test = [macro_f1(y_test, p) for p in test_pred]
    sk_seconds = float(np.median(fit_seconds))
    sk_best = max(fits.values(), key=lambda f: f[1])

    per_config = kenner_seconds / len(grid)
    best = int(np.argmax(kenner_val))
    fitted = f"{len(fit_seconds)} fits" + (", one per distinct C" if args.sklearn_distinct_c else "")
    fitted += f" ({min(fit_seconds):.1f}-{max(fit_seconds):.1f} s each)"
    print("### Sweep of linear heads vs scikit-learn (`bench/bench_sweep.py`)\n")
    print(
        f"{data_line}; {sweep_line}. scikit-learn: `LogisticRegression` on standardised embeddings, "
        f"C = 1 / (weight decay · n_train), {fitted}.\n"
    )
    print(
        "| | seconds per configuration (median) | test macro-F1 of the configuration picked on val "
        "| best test macro-F1 |"
    )
    print("|---|---:|---:|---:|")
    print(
        f"| kenner batched multi-head ({kenner_seconds:.1f} s for {len(grid)}, median of {len(sweeps)} sweeps: "
        f"{', '.join(f'{t:.1f}' for t in sweeps)} s, spread over the scikit-learn fits) | {per_config:.3f} | "
        f"{kenner_test[best]:.4f} | {max(kenner_test):.4f} |"
    )
    print(
        f"| scikit-learn LogisticRegression | {sk_seconds:.2f} | {sk_best[2]:.4f} | "
        f"{max(f[2] for f in fits.values()):.4f} |"
    )
    print(
        f"\nSpeed-up per configuration: **{sk_seconds / per_config:.1f}×** (target ≥ 20×). Picked on val, "
        f"kenner's test macro-F1 differs from scikit-learn's by {100 * (kenner_test[best] - sk_best[2]):+.2f} "
        f"points (target: within 1 point); kenner's pick: lr, weight decay, label smoothing = {grid[best]}."
    )


if __name__ == "__main__":
    main()
