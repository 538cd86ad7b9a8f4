"""Headline classification metrics and the per-class table, computed with scikit-learn.

Macro and weighted averages run over the classes present in ``y_true`` or ``y_pred`` (with
``zero_division=0``): a class that neither occurs nor is predicted in a split says nothing about
that split, and counting it as F1 = 0 would make small splits look worse than they are. The
per-class table lists every class (support 0 where absent).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from kenner.errors import KennerError
from kenner.evaluate.calibration import expected_calibration_error


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    proba: np.ndarray | None,
    class_names: Sequence[str],
    *,
    background_class: str | None = None,
    top_k: Sequence[int] = (1, 3, 5),
) -> dict[str, float]:
    """Metrics of one split; class indices refer to ``class_names``.

    Keys: ``n``, ``accuracy``, ``top{k}_accuracy`` (k > 1, needs ``proba`` and more than k classes),
    ``macro_f1``, ``weighted_f1``, ``macro_precision``, ``macro_recall``, ``ece`` (needs ``proba``),
    ``prediction_cv`` (std / mean of how often each class is predicted: 0 when every class is predicted
    equally often; high when a few classes take most answers).
    With ``background_class``: ``macro_f1_fg``, ``weighted_f1_fg``, ``macro_precision_fg``,
    ``macro_recall_fg`` (averaged over the foreground classes only) and ``accuracy_fg`` (accuracy
    on samples whose true class is foreground); each only when it is defined.
    """
    n_classes = len(class_names)
    y_true, y_pred = _check_labels(y_true, y_pred, n_classes)
    labels = np.union1d(y_true, y_pred)
    metrics: dict[str, float] = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.shape != (len(y_true), n_classes):
            raise KennerError(f"proba has shape {proba.shape}, expected {(len(y_true), n_classes)}")
        for k in top_k:
            if 1 < k < n_classes:
                metrics[f"top{k}_accuracy"] = float(
                    top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(n_classes))
                )
    metrics.update(_averaged(y_true, y_pred, labels, suffix=""))
    metrics["prediction_cv"] = prediction_cv(y_pred, n_classes)
    if proba is not None:
        metrics["ece"] = expected_calibration_error(proba, y_true)
    if background_class is not None:
        if background_class not in class_names:
            raise KennerError(
                f"background class {background_class!r} is not a class of this dataset; "
                f"classes: {', '.join(class_names[:20])}{' ...' if n_classes > 20 else ''}"
            )
        background = list(class_names).index(background_class)
        foreground = labels[labels != background]
        if len(foreground):
            metrics.update(_averaged(y_true, y_pred, foreground, suffix="_fg"))
        is_fg = y_true != background
        if is_fg.any():
            metrics["accuracy_fg"] = float(accuracy_score(y_true[is_fg], y_pred[is_fg]))
    return metrics


def prediction_cv(y_pred: Sequence[int], n_classes: int) -> float:
    """Coefficient of variation of the predicted-class counts over all ``n_classes`` classes."""
    counts = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return float(counts.std() / counts.mean()) if counts.mean() > 0 else float("nan")


def ranked_classes(table: pd.DataFrame, n: int = 5) -> dict[str, list[list]]:
    """The ``n`` best and worst classes by F1 among those present (``[[name, f1], ...]``) of a per-class table."""
    present = table[table["support"] > 0].sort_values(["f1", "support", "class"], ascending=[False, False, True])
    pairs = [[str(row["class"]), float(row["f1"])] for _, row in present.iterrows()]
    return {"best_classes": pairs[:n], "worst_classes": pairs[::-1][:n]}


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of ``y_pred`` [H, N] (class indices) against ``y_true`` [N], as scikit-learn's
    ``f1_score(average="macro", zero_division=0)`` computes it: averaged over the classes present in truth
    or prediction. One bincount for all H rows, so a loop over many heads pays once."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.atleast_2d(np.asarray(y_pred, dtype=np.int64))
    n_rows = len(y_pred)
    index = (np.arange(n_rows)[:, None] * n_classes + y_true) * n_classes + y_pred
    confusion = np.bincount(index.ravel(), minlength=n_rows * n_classes * n_classes)
    confusion = confusion.reshape(n_rows, n_classes, n_classes).astype(np.float64)
    tp = confusion.diagonal(axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = denominator > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def per_class_table(y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]) -> pd.DataFrame:
    """One row per class, in class order: class, support, precision, recall, f1."""
    y_true, y_pred = _check_labels(y_true, y_pred, len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(class_names)), zero_division=0
    )
    return pd.DataFrame(
        {"class": list(class_names), "support": support, "precision": precision, "recall": recall, "f1": f1}
    )


def _averaged(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray, suffix: str) -> dict[str, float]:
    out = {}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        out[f"{average}_f1{suffix}"] = float(f1)
        if average == "macro":
            out[f"macro_precision{suffix}"] = float(precision)
            out[f"macro_recall{suffix}"] = float(recall)
    return out


def _check_labels(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise KennerError(f"y_true and y_pred must be 1-D of one length, got {y_true.shape}, {y_pred.shape}")
    if len(y_true) == 0:
        raise KennerError("no samples to evaluate")
    both = np.concatenate([y_true, y_pred])
    if both.min() < 0 or both.max() >= n_classes:
        raise KennerError(f"class indices must be in 0..{n_classes - 1}, got {both.min()}..{both.max()}")
    return y_true, y_pred
