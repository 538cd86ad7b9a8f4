"""Benchmark: a sweep of 100+ linear-head configurations, batched trainer vs scikit-learn.

Embeds 10,000 Fashion-MNIST images (1,000 per class, from Debian's ``dataset-fashion-mnist``) with the
default encoder (EfficientNet-Lite0, 1,280 dims; cached in the embedding store, so only the first run
pays for it), splits them 70/15/15 (stratified), then sweeps learning rate x weight decay x label
smoothing:

* kenner: every configuration as one head of :func:`kenner.train.multihead.fit_multihead`
  (standardised input, AdamW, early stopping on validation macro-F1);
* scikit-learn: ``LogisticRegression`` (lbfgs, standardised input) fitted once per configuration, with
  ``C = 1 / (weight_decay * n_train)`` (the L2 strength that matches decay on the mean loss; no
  penalty for weight decay 0). It has no learning rate or label smoothing, so configurations sharing a
  weight decay give the same model: by default each distinct C is fitted once and the mean fit time is
  the cost per configuration (``--sklearn-all`` fits every configuration).

Prints seconds per configuration for both, their ratio and the test macro-F1 of the configuration each
picks on the validation set (and the best test macro-F1 over all configurations).

    python bench/bench_sweep.py [--per-class 1000] [--threads 2] [--sklearn-all]

If the encoder or the store cannot be used, it falls back to raw pixel features and says so loudly.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from kenner.data import fashion_mnist
from kenner.encoders.store import kenner_cache_root
from kenner.errors import KennerError
from kenner.heads.config import HeadConfig
from kenner.train.multihead import fit_multihead

LRS = (1e-3, 3e-3, 1e-2, 3e-2)
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2, 0.3)


def load_embeddings(per_class: int, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(X, y, what X is): default-encoder embeddings of a stratified subset, or pixels as a fallback."""
    images, labels = fashion_mnist.load("train")
    indices = fashion_mnist.stratified_indices(labels, per_class, seed=0)
    try:
        from kenner.encoders import create_encoder
        from kenner.encoders.extract import extract_embeddings
        from kenner.encoders.store import EmbeddingStore

        folder = fashion_mnist.export_folder(cache_dir / "fashion_mnist_bench", per_class=per_class, seed=0)
        paths = [folder / fashion_mnist.CLASSES[labels[i]] / f"fmnisttrain{i:05d}.png" for i in indices]
        encoder = create_encoder("default")
        store = EmbeddingStore(cache_dir / "embeddings", encoder.fingerprint, encoder.dim)
        X = extract_embeddings(encoder, paths, store, batch_size=64, num_workers=2)
        return X, labels[indices].astype(np.int64), f"default encoder ({encoder.name}, {encoder.dim} dims)"
    except (KennerError, OSError, ImportError) as error:
        print(f"!! FALLBACK: the default encoder/store failed ({error}); using RAW PIXEL FEATURES (784 dims)")
        X = images[indices].reshape(len(indices), -1).astype(np.float32) / 255.0
        return X, labels[indices].astype(np.int64), "RAW PIXELS (fallback, not embeddings)"


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch and BLAS threads for both sides")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sklearn-all", action="store_true", help="fit sklearn for every configuration")
    parser.add_argument("--cache-dir", type=Path, default=kenner_cache_root(),
                        help="kenner cache root (default: $KENNER_CACHE or ~/.cache/kenner)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    X, y, what = load_embeddings(args.per_class, args.cache_dir)
    print(f"data: {len(X)} x {X.shape[1]} from {what}, {len(np.unique(y))} classes "
          f"({time.perf_counter() - start:.0f} s to load/embed)")
    X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest,
                                                    random_state=0)
    grid = list(itertools.product(LRS, WEIGHT_DECAYS, LABEL_SMOOTHINGS))
    print(f"sweep: {len(grid)} configurations (lr x weight decay x label smoothing), "
          f"train {len(X_train)} / val {len(X_val)} / test {len(X_test)}, {args.threads} threads")

    configs = [HeadConfig(lr=lr, weight_decay=wd, label_smoothing=ls, standardize="standardize",
                          epochs=args.epochs, batch_size=args.batch_size, early_stopping_patience=5,
                          device="cpu") for lr, wd, ls in grid]
    start = time.perf_counter()
    fit = fit_multihead(X_train, y_train, configs, n_classes=10, X_val=X_val, y_val=y_val)
    val_pred = fit.logits(X_val).argmax(-1).cpu().numpy()
    test_pred = fit.logits(X_test).argmax(-1).cpu().numpy()
    kenner_seconds = time.perf_counter() - start
    kenner_val = [macro_f1(y_val, p) for p in val_pred]
    kenner_test = [macro_f1(y_test, p) for p in test_pred]

    scaler = StandardScaler().fit(X_train)
    Xs_train, Xs_val, Xs_test = (scaler.transform(a) for a in (X_train, X_val, X_test))
    fits: dict[float, tuple[float, float, float]] = {}  # C -> (seconds, val F1, test F1)
    for _lr, wd, _ls in grid:
        C = 1.0 / (wd * len(X_train)) if wd > 0 else float("inf")
        if C in fits and not args.sklearn_all:
            continue
        start = time.perf_counter()
        model = LogisticRegression(C=C, max_iter=300)  # C = inf: no penalty
        model.fit(Xs_train, y_train)
        seconds = time.perf_counter() - start
        fits[C] = (seconds, macro_f1(y_val, model.predict(Xs_val)), macro_f1(y_test, model.predict(Xs_test)))
        print(f"  sklearn C={C:.4g}: {seconds:.1f} s, val macro-F1 {fits[C][1]:.4f}")
    sk_seconds = float(np.mean([s for s, _, _ in fits.values()]))
    sk_best = max(fits.values(), key=lambda f: f[1])

    per_config = kenner_seconds / len(grid)
    best = int(np.argmax(kenner_val))
    print(f"\nkenner batched: {kenner_seconds:.1f} s for {len(grid)} configurations "
          f"= {per_config:.3f} s each")
    print(f"sklearn LogisticRegression: {sk_seconds:.2f} s per configuration "
          f"(mean of {len(fits)} fits{'' if args.sklearn_all else ', one per distinct C'})")
    print(f"speed-up per configuration: {sk_seconds / per_config:.1f}x")
    print(f"test macro-F1 of the configuration picked on val: kenner {kenner_test[best]:.4f} "
          f"({grid[best]}), sklearn {sk_best[2]:.4f}; "
          f"difference {100 * (kenner_test[best] - sk_best[2]):+.2f} points")
    print(f"best test macro-F1 over all configurations: kenner {max(kenner_test):.4f}, "
          f"sklearn {max(f[2] for f in fits.values()):.4f}")


if __name__ == "__main__":
    main()
