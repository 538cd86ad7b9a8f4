"""Recall@1 of embeddings by exact cosine search, for the validation step of training loops."""

from __future__ import annotations

import numpy as np

CHUNK = 2048


def recall_at_1(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
) -> float:
    """Share of queries whose most cosine-similar gallery row has their label.

    Without a gallery, the queries are searched among themselves leave-one-out (a row never finds
    itself). NaN when there is nothing to search.
    """
    leave_one_out = gallery is None
    gallery, gallery_labels = (queries, query_labels) if leave_one_out else (gallery, gallery_labels)
    if len(queries) == 0 or len(gallery) <= int(leave_one_out):
        return float("nan")
    q, g = _unit(queries), _unit(gallery)
    nearest = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), CHUNK):
        similarity = q[start : start + CHUNK] @ g.T
        if leave_one_out:
            rows = np.arange(len(similarity))
            similarity[rows, start + rows] = -np.inf
        nearest[start : start + CHUNK] = similarity.argmax(axis=1)
    return float((np.asarray(gallery_labels)[nearest] == np.asarray(query_labels)).mean())


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
