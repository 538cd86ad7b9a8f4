"""Retrieval metrics from each query's ranked neighbour labels.

- Recall@K (class level): a hit when any of the top K neighbours has the query's class.
- precision@1: the top-1 neighbour has the query's class (equals class-level Recall@1).
- mAP@R (Musgrave et al., "A Metric Learning Reality Check"): R = number of gallery items of the
  query's class; AP over the first R neighbours, divided by R. Neighbours beyond those retrieved
  count as misses, so search with k >= the largest class size for the exact value. A query that is
  itself a gallery item searched leave-one-out has R - 1 relevant items (``query_in_gallery``).
- kNN accuracy and macro-F1 of voted predictions (scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from kenner.errors import KennerError


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of queries with their own class among the first ``k`` neighbours."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    if k > neighbour_labels.shape[1]:
        raise KennerError(f"Recall@{k} needs {k} neighbours per query; got {neighbour_labels.shape[1]}")
    return float((neighbour_labels[:, :k] == query_labels[:, None]).any(axis=1).mean())


def precision_at_1(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """Fraction of queries whose nearest neighbour has their class."""
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    return float((neighbour_labels[:, 0] == query_labels).mean())


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
             query_in_gallery: np.ndarray | None = None) -> float:
    """Mean average precision at R; queries with no other gallery item of their class are skipped.

    ``query_in_gallery`` (bool per query) marks queries searched leave-one-out: their R excludes themselves.
    """
    neighbour_labels, query_labels = _check(neighbour_labels, query_labels)
    classes, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    r = np.zeros(len(query_labels), dtype=np.int64)
    known = np.isin(query_labels, classes)
    r[known] = counts[np.searchsorted(classes, query_labels[known])]
    if query_in_gallery is not None:
        r -= np.asarray(query_in_gallery, dtype=bool) & known
    present = r > 0
    if not present.any():
        return float("nan")
    k = neighbour_labels.shape[1]
    rank = np.arange(1, k + 1)
    within_r = rank[None, :] <= r[:, None]
    relevant = (neighbour_labels == query_labels[:, None]) & within_r
    precision_at_rank = np.cumsum(relevant, axis=1) / rank[None, :]
    average_precision = (precision_at_rank * relevant).sum(axis=1)[present] / r[present]
    return float(average_precision.mean())


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
            f"need [Q, K] neighbour labels for Q query labels; "
            f"got {neighbour_labels.shape} and {query_labels.shape}"
        )
    return neighbour_labels, query_labels
