"""Confusable class pairs: how often the nearest neighbours of one class belong to another.

For classes a and b, ``score = (share of a's neighbours in b + share of b's neighbours in a) / 2``; pairs are
ranked by it, highest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kenner.audit.neighbours import Neighbourhood


@dataclass(frozen=True)
class ConfusablePair:
    first: int
    second: int
    score: float
    first_to_second: float  # share of the first class's neighbours that are of the second
    second_to_first: float


def confusable_pairs(neighbours: Neighbourhood, y: np.ndarray, n_classes: int) -> list[ConfusablePair]:
    """Every pair of classes whose neighbourhoods overlap at all, most confusable first."""
    y = np.asarray(y, dtype=np.int64)
    valid = neighbours.indices >= 0
    rows = np.broadcast_to(y[:, None], neighbours.indices.shape)[valid]
    cols = y[neighbours.indices[valid]]
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (rows, cols), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    pairs = [
        ConfusablePair(a, b, (share[a, b] + share[b, a]) / 2, share[a, b], share[b, a])
        for a in range(n_classes)
        for b in range(a + 1, n_classes)
        if share[a, b] + share[b, a] > 0
    ]
    return sorted(pairs, key=lambda pair: -pair.score)
