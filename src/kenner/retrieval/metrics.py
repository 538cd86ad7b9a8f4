"""Retrieval metrics from each query's ranked neighbour labels.

- Recall@K (class level): a hit when any of the top K neighbours has the query's class (written here:
  pytorch-metric-learning has no class-level Recall@K for K > 1).
- precision@1: the top-1 neighbour has the query's class (equals class-level Recall@1); pml's
  ``precision_at_k`` over every query.
- mAP@R (Musgrave et al., "A Metric Learning Reality Check"): pml's ``AccuracyCalculator`` on the given
  neighbours. R = number of gallery items of the query's class; AP over the first R neighbours, divided by R.
  Neighbours beyond those retrieved count as misses, so search with k >= the largest class size for the
  exact value. A query that is itself a gallery item searched leave-one-out has R - 1 relevant items
  (``query_in_gallery``, pml's ``ref_includes_query``); queries with no relevant item are skipped.
- kNN accuracy and macro-F1 of voted predictions (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import (
    EQUALITY,
    AccuracyCalculator,
    get_label_match_counts,
    get_lone_query_labels,
    precision_at_k,
)
from sklearn.metrics import accuracy_score, f1_score

from kenner.errors import KennerError

MAP_AT_R = "mean_average_precision_at_r"


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of queries with their own class among the first ``k`` neighbours."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    if k > neighbour_labels.shape[1]:
        raise KennerError(f"Recall@{k} needs {k} neighbours per query; got {neighbour_labels.shape[1]}")
    return float((neighbour_labels[:, :k] == query_labels[:, None]).any(axis=1).mean())


def precision_at_1(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Fraction of queries whose nearest neighbour has their class."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    knn, queries = torch.as_tensor(neighbour_labels), torch.as_tensor(query_labels)
    return float(precision_at_k(knn, queries[:, None], 1, False, False, EQUALITY))


def map_at_r(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_in_gallery: np.ndarray | None = None,
) -> float:
    """Mean average precision at R; queries with no other gallery item of their class are skipped (NaN when
    none is left). ``query_in_gallery`` (bool per query) marks queries searched leave-one-out."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    in_gallery = np.zeros(len(query_labels), bool) if query_in_gallery is None else np.asarray(query_in_gallery, bool)
    calculator = AccuracyCalculator(include=(MAP_AT_R,), device=torch.device("cpu"))
    gallery = torch.as_tensor(np.asarray(gallery_labels))
    total, counted = 0.0, 0
    for leave_one_out in (False, True):  # pml takes one ref_includes_query for all queries
        part = in_gallery == leave_one_out
        if not part.any():
            continue
        knn, queries = torch.as_tensor(neighbour_labels[part]), torch.as_tensor(query_labels[part])
        counts = get_label_match_counts(queries, gallery, EQUALITY)
        _, relevant = get_lone_query_labels(queries, counts, leave_one_out, EQUALITY)
        if relevant.any():
            value = calculator.calculate_mean_average_precision_at_r(
                knn_labels=knn,
                query_labels=queries,
                not_lone_query_mask=relevant,
                label_counts=counts,
                ref_includes_query=leave_one_out,
            )
            total, counted = total + value * int(relevant.sum()), counted + int(relevant.sum())
    return total / counted if counted else float("nan")


def knn_classification(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over classes present in ``y_true`` or ``y_pred``) of kNN predictions."""
    return {
        "knn_accuracy": float(accuracy_score(y_true, y_pred)),
        "knn_macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def retrieval_metrics(
    neighbour_labels: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_in_gallery: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@K for each K that fits the neighbour list, precision@1 and mAP@R, as one dict."""
    out = {
        f"recall_at_{k}": recall_at_k(neighbour_labels, query_labels, k)
        for k in ks
        if k <= np.shape(neighbour_labels)[1]
    }
    out["precision_at_1"] = precision_at_1(neighbour_labels, query_labels)
    out["map_at_r"] = map_at_r(neighbour_labels, query_labels, gallery_labels, query_in_gallery)
    out["n_queries"] = len(query_labels)
    return out


def _check(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    neighbour_labels = np.asarray(neighbour_labels)
    query_labels = np.asarray(query_labels)
    if neighbour_labels.ndim != 2 or len(neighbour_labels) != len(query_labels) or len(query_labels) == 0:
        raise KennerError(
            f"need [Q, K] neighbour labels for Q query labels; got {neighbour_labels.shape} and {query_labels.shape}"
        )
    return neighbour_labels, query_labels
