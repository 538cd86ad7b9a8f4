"""kenner audit on Fashion-MNIST with planted problems: precision and recall of each finding, and its speed.

A stratified Fashion-MNIST subset (``--per-class`` images of each of the 10 classes, each its own group) gets
planted problems: exact byte copies and resized + JPEG-recompressed copies under new ids (near-duplicates),
images moved to another class folder (label flips) and flat-colour, noise and Tux Paint stamp images among the
garments (outliers). ``kenner audit`` runs on it with the default encoder (EfficientNet-Lite0); each finding is
scored against what was planted. Fashion-MNIST has look-alikes and mislabelled images of its own, so a finding
that was not planted is not necessarily wrong: precision here is a lower bound.

Speed: the audit's steps on cached embeddings, on the subset and on 10,000 rows (the subset's real embeddings
resampled with a little noise), against a baseline measured in the same run: the same kNN by NumPy brute force
(chunked matrix products and argpartition) instead of Faiss. Also printed: how many planted resized copies and
how many pairs in all each threshold finds (how the default ``--near-duplicate-threshold`` was chosen).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kenner.audit.label_issues import label_issues, out_of_fold_proba
from kenner.audit.near_duplicates import near_duplicates
from kenner.audit.neighbours import nearest
from kenner.audit.outliers import find_outliers
from kenner.config.tree import build_config
from kenner.data import fashion_mnist
from kenner.paths import kenner_cache_root
from kenner.runs.audit import NEIGHBOURS, audit_dataset

STAMPS = Path("/usr/share/tuxpaint/stamps")
THRESHOLDS = (0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


def plant(folder: Path, out: Path, *, copies: int, flips: int, outliers: int, seed: int) -> dict[str, set]:
    """Copy the exported subset into ``out`` with planted problems; returns what was planted (ids)."""
    rng = np.random.default_rng(seed)
    shutil.copytree(folder, out)
    files = sorted(out.glob("*/*.png"))
    chosen = rng.choice(len(files), size=2 * copies + flips, replace=False)
    planted: dict[str, set] = {"exact": set(), "resized": set(), "flips": set(), "outliers": set()}
    for n, index in enumerate(chosen[:copies]):
        source = files[index]
        shutil.copyfile(source, source.parent / f"copyexact{n}.png")
        planted["exact"].add((_id(source, out), f"{source.parent.name}/copyexact{n}"))
    for n, index in enumerate(chosen[copies : 2 * copies]):
        source = files[index]
        image = Image.open(source).convert("L").resize((56, 56), Image.Resampling.BICUBIC)
        image.save(source.parent / f"copyjpeg{n}.jpg", quality=85)
        planted["resized"].add((_id(source, out), f"{source.parent.name}/copyjpeg{n}"))
    classes = sorted(path.name for path in out.iterdir())
    for index in chosen[2 * copies :]:
        source = files[index]
        target = rng.choice([name for name in classes if name != source.parent.name])
        moved = out / target / source.name
        source.rename(moved)
        planted["flips"].add(_id(moved, out))
    stamps = sorted(STAMPS.rglob("*.png"))[:: max(1, len(list(STAMPS.rglob("*.png"))) // 50)] if STAMPS.is_dir() else []
    for n in range(outliers):
        kind = ("flat", "noise", "stamp")[n % 3] if stamps else ("flat", "noise")[n % 2]
        target = out / classes[rng.integers(len(classes))] / f"odd{kind}{n}.png"
        if kind == "flat":
            Image.new("RGB", (28, 28), tuple(int(v) for v in rng.integers(0, 255, 3))).save(target)
        elif kind == "noise":
            Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(target)
        else:
            Image.open(stamps[rng.integers(len(stamps))]).convert("RGBA").save(target)
        planted["outliers"].add(_id(target, out))
    return planted


def _id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def precision_recall(found: set, planted: set) -> tuple[float, float, int]:
    hits = len(found & planted)
    return hits / max(len(found), 1), hits / max(len(planted), 1), len(found)


def brute_force_knn(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """The baseline: exact cosine kNN by NumPy matrix products (rows are unit vectors), self left out."""
    indices = np.empty((len(x), k), np.int64)
    for start in range(0, len(x), chunk):
        sims = x[start : start + chunk] @ x.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        indices[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return indices


def timed(function, *args, repeats: int = 3, **kwargs) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class (default 200)")
    parser.add_argument("--copies", type=int, default=20, help="exact copies, and as many resized JPEG copies")
    parser.add_argument("--flips", type=int, default=40, help="images moved to another class")
    parser.add_argument("--outliers", type=int, default=9, help="flat-colour, noise and stamp images planted")
    parser.add_argument("--rows", type=int, default=10_000, help="rows of the speed test on cached embeddings")
    parser.add_argument("--cache-dir", type=Path, default=kenner_cache_root(), help="kenner cache root")
    args = parser.parse_args()

    folder = fashion_mnist.export_folder(args.cache_dir / "fashion_mnist_audit_bench", per_class=args.per_class, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fmnist"
        planted = plant(folder, data, copies=args.copies, flips=args.flips, outliers=args.outliers, seed=1)
        cfg = build_config(
            [{"data": {"data": str(data)}, "encoder": {"cache_dir": str(args.cache_dir / "embeddings")}}]
        )
        audit_dataset(cfg, output=str(Path(tmp) / "warm"))  # fills the embedding cache
        started = time.perf_counter()
        result = audit_dataset(cfg, output=str(Path(tmp) / "audit"))
        total = time.perf_counter() - started
        ids = result.data.ids
        findings = result.findings
        found_pairs = {(ids[a], ids[b]) for a, b in findings.near.as_tuples() + findings.identical.as_tuples()} | {
            (ids[b], ids[a]) for a, b in findings.near.as_tuples() + findings.identical.as_tuples()
        }
        planted_pairs = planted["exact"] | planted["resized"]
        rows = {
            "near-duplicates (exact + resized copies)": precision_recall(
                {p for p in found_pairs if p[0] < p[1]}, {tuple(sorted(p)) for p in planted_pairs}
            ),
            "resized JPEG copies only (recall)": (
                float("nan"),
                len({tuple(sorted(p)) for p in planted["resized"]} & found_pairs) / max(len(planted["resized"]), 1),
                len(planted["resized"]),
            ),
            "label flips (cleanlab)": precision_recall({ids[r] for r in findings.issues.rows}, planted["flips"]),
            f"label flips, the {len(planted['flips'])} ranked first": precision_recall(
                {ids[r] for r in findings.issues.rows[: len(planted["flips"])]}, planted["flips"]
            ),
            "outliers": precision_recall({ids[r] for r in findings.outliers.rows}, planted["outliers"]),
        }
        missed = sorted(planted["outliers"] - {ids[r] for r in findings.outliers.rows})
        n = len(ids)
        features = result.features

    print("### kenner audit (bench/bench_audit.py)\n")
    print(
        f"Fashion-MNIST, {args.per_class} per class + planted: {args.copies} exact copies, {args.copies} resized "
        f"(28→56 px) JPEG q85 copies under new ids, {args.flips} label flips, {args.outliers} outliers "
        f"(flat colour / noise / Tux Paint stamp); {n} samples; default encoder; threshold "
        f"{findings.threshold:.3f} (automatic: 1 - 0.4 × median nearest-neighbour distance).\n"
    )
    print("| finding | precision | recall | flagged |\n|---|---|---|---|")
    for name, (precision, recall, flagged) in rows.items():
        shown = "—" if np.isnan(precision) else f"{precision:.2f}"
        print(f"| {name} | {shown} | {recall:.2f} | {flagged} |")

    if missed:
        print(f"\nOutliers not flagged: {', '.join(missed)}")
    neighbours = nearest(features, NEIGHBOURS)
    print("\n| threshold | resized copies found | exact copies found | pairs in all |\n|---|---|---|---|")
    for threshold in THRESHOLDS:
        pairs = {(ids[a], ids[b]) for a, b in near_duplicates(neighbours, threshold).as_tuples()}
        pairs |= {(b, a) for a, b in pairs}
        resized = len(planted["resized"] & pairs) / len(planted["resized"])
        exact = len(planted["exact"] & pairs) / len(planted["exact"])
        print(f"| {threshold:g} | {resized:.2f} | {exact:.2f} | {len(pairs) // 2} |")
    print(f"\n(median nearest-neighbour cosine of the subset: {np.median(neighbours.similarities[:, 0]):.3f})")

    print(f"\nWhole audit of {n} samples on cached embeddings: {total:.1f} s; its steps:\n")
    print("| step | s |\n|---|---|")
    for step, seconds in result.seconds.items():
        print(f"| {step} | {seconds:.2f} |")

    # speed on --rows rows: the subset's real embeddings resampled with a little noise
    rng = np.random.default_rng(0)
    pick = rng.integers(0, n, args.rows)
    big = features[pick] + rng.normal(scale=0.01, size=(args.rows, features.shape[1])).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    y = np.asarray([result.data.class_names.index(label) for label in result.data.labels])[pick]
    groups = [str(i) for i in range(args.rows)]
    faiss_s, _ = timed(nearest, big, NEIGHBOURS)
    numpy_s, _ = timed(brute_force_knn, big, NEIGHBOURS, repeats=1)
    started = time.perf_counter()
    proba = out_of_fold_proba(big, y, groups)
    label_issues(y, proba)
    issues_s = time.perf_counter() - started
    outlier_s, _ = timed(find_outliers, big, y, nearest(big, NEIGHBOURS), repeats=1)
    print(f"\nSpeed on {args.rows:,} × {big.shape[1]} cached embeddings:\n")
    print("| step | s |\n|---|---|")
    print(f"| kNN for near-duplicates, outliers, confusable classes: Faiss | {faiss_s:.2f} |")
    print(f"| same kNN, NumPy brute force (baseline) | {numpy_s:.2f} |")
    print(f"| label issues: 5 group-aware folds of logistic regression + cleanlab | {issues_s:.2f} |")
    print(f"| outliers (incl. per-class kNN) | {outlier_s:.2f} |")
    print(f"\nFaiss / NumPy brute-force speed ratio: {numpy_s / faiss_s:.2f}×")
    print(
        f"\n(load average during the run: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
