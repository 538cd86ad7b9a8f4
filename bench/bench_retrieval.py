"""Retrieval benchmark: Faiss search vs NumPy brute force, and metric mode vs a linear head vs raw kNN.

Usage: python bench/bench_retrieval.py [--queries 10000] [--gallery 100000] [--dim 768] [--per-class 200]
Both parts run by default (``--skip-speed`` / ``--skip-real`` leave one out).

(1) Speed: ``--queries`` random-but-clustered queries against a ``--gallery`` x ``--dim`` gallery
    (``--classes`` Gaussian clusters). kenner's exact Faiss path (``Gallery.build`` + ``search``) and a
    NumPy brute force (normalise, matmul in chunks, argmax) on the same vectors: queries/s of each,
    the ratio, and Recall@1 of both (they should be identical; index disagreements are counted).
(2) Real data: a stratified Fashion-MNIST subset (Debian ``dataset-fashion-mnist``) embedded with the
    default encoder (cached by the embedding store), one group-aware split; on its test split:
    raw-embedding kNN, a linear head and metric mode (MLP projection, ArcFace + triplets): Recall@1,
    accuracy and macro-F1.

Prints a Markdown snippet to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, centres: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), n)
    vectors = centres[labels] + rng.normal(scale=noise, size=(n, centres.shape[1])).astype(np.float32)
    return vectors.astype(np.float32), labels


def numpy_top1(queries: np.ndarray, gallery: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """Index of the most cosine-similar gallery row per query, by brute force."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.concatenate([(q[i : i + chunk] @ g.T).argmax(axis=1) for i in range(0, len(q), chunk)])


def speed(args: argparse.Namespace) -> list[str]:
    from kenner.retrieval.index import Gallery
    from kenner.retrieval.metrics import recall_at_k

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    gallery_vectors, gallery_labels = clustered(args.gallery, centres, args.noise, rng)
    queries, query_labels = clustered(args.queries, centres, args.noise, rng)
    print(f"speed: {args.queries} queries x {args.gallery} x {args.dim} gallery", file=sys.stderr)

    started = time.perf_counter()
    gallery = Gallery.build(gallery_vectors, gallery_labels)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    found = gallery.search(queries, k=1)
    faiss_s = time.perf_counter() - started
    started = time.perf_counter()
    brute = numpy_top1(queries, gallery_vectors)
    numpy_s = time.perf_counter() - started

    recall_faiss = recall_at_k(found.labels, query_labels, 1)
    recall_numpy = recall_at_k(gallery_labels[brute][:, None], query_labels, 1)
    disagree = int((found.indices[:, 0] != brute).sum())
    return [
        f"#### Exact search: {args.queries:,} queries against a {args.gallery:,} x {args.dim} gallery",
        "",
        f"{args.classes} Gaussian clusters (noise std {args.noise}); cosine similarity.",
        "",
        "| path | seconds | queries/s | Recall@1 |",
        "|---|---|---|---|",
        f"| kenner Faiss `Flat` (IndexFlatIP) search | {faiss_s:.2f} | {args.queries / faiss_s:,.0f} | "
        f"{recall_faiss:.4f} |",
        f"| NumPy brute force (matmul in 1000-query chunks + argmax) | {numpy_s:.2f} | "
        f"{args.queries / numpy_s:,.0f} | {recall_numpy:.4f} |",
        "",
        f"Faiss / NumPy speed ratio: **{numpy_s / faiss_s:.2f}x**; index build {build_s:.2f} s; "
        f"Recall@1 identical: **{recall_faiss == recall_numpy}**; top-1 index disagreements: {disagree}.",
        "",
    ]


def real(args: argparse.Namespace, work: Path) -> list[str]:
    from kenner.cli import main
    from kenner.data import fashion_mnist
    from kenner.io import read_json
    from kenner.paths import kenner_cache_root

    print(f"real: Fashion-MNIST, {args.per_class} images per class, default encoder", file=sys.stderr)
    # A stable folder (kenner's cache root): re-runs find the PNGs and their cached embeddings.
    data_dir = fashion_mnist.export_folder(
        kenner_cache_root() / f"fashion_mnist_retrieval_{args.per_class}", per_class=args.per_class, seed=0
    )

    def kenner(argv: list[str]) -> int:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the Markdown snippet
            return main(argv)

    data = ["--data", str(data_dir), "--quiet", *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    common = [*data, "--epochs", str(args.epochs), "--no-track"]
    started = time.perf_counter()
    if kenner(["embed", *data]) != 0:
        sys.exit("embedding failed")
    embed_s = time.perf_counter() - started
    s, m = args.metric_scale, args.metric_margin
    methods = (
        ("raw-embedding kNN (`--method knn`, temperature vote)", ["--method", "knn"]),
        (
            f"metric learning (`--method metric`, ArcFace s={s:g} m={m:g} + triplets)",
            ["--method", "metric", "--arcface-scale", str(s), "--arcface-margin", str(m)],
        ),
        ("linear head (`--method linear`, standardised, calibrated)", ["--method", "linear"]),
    )
    rows, n_test = [], 0
    for label, flags in methods:
        out = work / flags[1]
        started = time.perf_counter()
        if kenner(["train", *common, *flags, "--out-dir", str(out)]) != 0:
            sys.exit(f"kenner train {' '.join(flags)} failed")
        seconds = time.perf_counter() - started
        test = read_json(out / "metrics.json")["test"]
        n_test = len(read_json(out / "splits" / "test_ids.json"))
        recall = f"{test['recall_at_1']:.4f}" if "recall_at_1" in test else "n/a (no gallery)"
        rows.append(f"| {label} | {recall} | {test['accuracy']:.4f} | {test['macro_f1']:.4f} | {seconds:.1f} |")
    return [
        f"#### Fashion-MNIST ({args.per_class} per class, {10 * args.per_class} images), default encoder, test split",
        "",
        f"Embedding with the default encoder (EfficientNet-Lite0; cached in the embedding store, so re-runs "
        f"skip it): {embed_s:.0f} s. `kenner train` per method on the same split, {n_test} test images; kNN "
        f"methods search a gallery of the train split; up to {args.epochs} epochs with early stopping on val.",
        "",
        "| method | Recall@1 | accuracy | macro-F1 | train + evaluate s |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000, help="clusters in the synthetic data")
    parser.add_argument("--noise", type=float, default=3.5, help="noise std around unit-variance centres")
    parser.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class")
    parser.add_argument("--epochs", type=int, default=100, help="max epochs of the metric and linear heads")
    parser.add_argument("--metric-scale", type=float, default=16.0, help="ArcFace s (10 classes: lower than 64)")
    parser.add_argument("--metric-margin", type=float, default=0.2, help="ArcFace m (10 classes: lower than 0.5)")
    parser.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    lines = [f"### Retrieval (`bench/bench_retrieval.py`, {machine}, {os.cpu_count()} CPUs)", ""]
    if not args.skip_speed:
        lines += speed(args)
    if not args.skip_real:
        with tempfile.TemporaryDirectory() as tmp:
            lines += real(args, Path(tmp))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
