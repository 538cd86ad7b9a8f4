"""The evaluation artifacts every method writes: metrics.json, predictions.parquet, per_class.csv, plots.

Frozen-embedding heads, retrieval and fine-tuning all call :func:`write_evaluation`, so their run
folders and reports have the same shape and can be compared on the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kenner.evaluate.metrics import classification_metrics, per_class_table, ranked_classes
from kenner.evaluate.plots import plot_confusion_matrix
from kenner.io import atomic_write_bytes, atomic_write_json, atomic_write_text

SPLIT_ORDER = ("train", "val", "test")


def report_split(split: np.ndarray) -> str:
    """The split the detailed artifacts describe: test when there is one, else val, else train."""
    present = set(split.tolist())
    return next((name for name in ("test", "val", "train") if name in present), "train")


def top_k(proba: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` highest columns per row, best first."""
    k = min(k, proba.shape[1])
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(proba, order, axis=1)


def write_predictions(
    path: Path,
    *,
    sample_ids: list[str],
    split: np.ndarray,
    y_true: np.ndarray | None,
    proba: np.ndarray,
    class_names: list[str],
    k: int = 5,
    predicted: np.ndarray | None = None,
    accepted: np.ndarray | None = None,
    metadata: dict[str, list[str | None]] | None = None,
) -> Path:
    """predictions.parquet: sample id, split, true, predicted, top-k labels and scores.

    With a reject rule's ``accepted`` mask, rejected rows have ``predicted`` null ("unclassifiable").
    ``metadata`` (column -> one value per row, e.g. a manifest's extra columns) is appended as string columns;
    a name that is already a column gets the prefix ``meta_``.
    """
    order, scores = top_k(proba, k)
    predicted = order[:, 0] if predicted is None else predicted
    if accepted is not None:
        predicted = np.where(accepted, predicted, -1)
    names = np.asarray(class_names, dtype=object)
    columns = {
        "sample_id": pa.array(sample_ids, pa.string()),
        "split": pa.array(split.tolist(), pa.string()),
        "true": pa.nulls(len(sample_ids), pa.string())
        if y_true is None
        else pa.array(names[y_true].tolist(), pa.string()),
        "predicted": pa.array([names[p] if p >= 0 else None for p in predicted], pa.string()),
        "score": pa.array(scores[:, 0].astype(float)),
        "topk_labels": pa.array(names[order].tolist(), pa.list_(pa.string())),
        "topk_scores": pa.array(scores.astype(float).tolist(), pa.list_(pa.float64())),
    }
    if accepted is not None:
        columns["accepted"] = pa.array(np.asarray(accepted, dtype=bool))
    for name, values in (metadata or {}).items():
        columns[f"meta_{name}" if name in columns else name] = pa.array(values, pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


@dataclass
class Evaluation:
    """What :func:`write_evaluation` computed: metrics per split and the report split's class table."""

    metrics: dict[str, dict[str, float]]
    per_class: pd.DataFrame
    report_split: str


def write_evaluation(
    out_dir: Path,
    *,
    y: np.ndarray,
    split: np.ndarray,
    proba: np.ndarray,
    class_names: list[str],
    sample_ids: list[str],
    background_class: str | None = None,
    predicted: np.ndarray | None = None,
    accepted: np.ndarray | None = None,
    extra_metrics: dict[str, dict[str, float]] | None = None,
    metadata: dict[str, list[str | None]] | None = None,
) -> Evaluation:
    """Metrics per split plus predictions, per-class table and confusion matrix of the report split.

    ``predicted`` overrides the argmax of ``proba`` (e.g. a retrieval vote). Metrics score every
    prediction; ``accepted`` (a reject rule's mask) only marks rejected rows in predictions.parquet —
    the reject option's own figures are in reject.json. ``extra_metrics`` (per split) join metrics.json;
    ``metadata`` columns join predictions.parquet.
    """
    predicted = proba.argmax(axis=1) if predicted is None else predicted
    metrics: dict[str, dict[str, float]] = {}
    for name in SPLIT_ORDER:
        mask = split == name
        if mask.any():
            metrics[name] = classification_metrics(
                y[mask], predicted[mask], proba[mask], class_names, background_class=background_class
            )
            metrics[name].update((extra_metrics or {}).get(name, {}))
    focus_name = report_split(split)
    focus = split == focus_name
    table = per_class_table(y[focus], predicted[focus], class_names)
    metrics[focus_name].update(ranked_classes(table))
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_predictions(
        out_dir / "predictions.parquet",
        sample_ids=sample_ids,
        split=split,
        y_true=y,
        proba=proba,
        class_names=class_names,
        predicted=predicted,
        accepted=accepted,
        metadata=metadata,
    )
    atomic_write_text(out_dir / "per_class.csv", table.to_csv(index=False))
    plot_confusion_matrix(y[focus], predicted[focus], class_names, out_dir / "confusion_matrix.png")
    return Evaluation(metrics, table, focus_name)
