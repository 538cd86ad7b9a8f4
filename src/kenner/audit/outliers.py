"""Outliers: samples far from every other sample, by their mean cosine distance to their k nearest neighbours.

A sample is flagged when that distance is unusual for the dataset: above the median by more than ``z`` robust
standard deviations (1.4826 x the median absolute deviation). The distance to the nearest samples of its own
class is reported beside it (a sample close to others but far from its own class is a label question, not an
outlier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kenner.audit.neighbours import Neighbourhood, nearest

OUTLIER_Z = 4.0


@dataclass(frozen=True)
class Outliers:
    """Every row's kNN distances and the flagged rows, farthest first."""

    distance: np.ndarray  # [N] mean cosine distance to the k nearest samples
    class_distance: np.ndarray  # [N] the same within the row's class (nan for a class of one)
    rows: np.ndarray  # flagged rows, ranked
    cutoff: float

    @property
    def ranked(self) -> np.ndarray:
        """Every row, farthest first."""
        return np.argsort(-self.distance, kind="stable")


def find_outliers(
    features: np.ndarray, y: np.ndarray, neighbours: Neighbourhood, *, k: int = 5, z: float = OUTLIER_Z
) -> Outliers:
    """Rank rows by kNN distance and flag those above ``median + z * robust std``."""
    k = min(k, neighbours.indices.shape[1])
    distances = neighbours.distances[:, :k]
    distance = np.where(np.isfinite(distances), distances, np.nan)
    distance = np.nanmean(distance, axis=1) if k else np.zeros(len(features))
    class_distance = np.full(len(features), np.nan)
    y = np.asarray(y)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        if len(rows) < 2:
            continue
        within = nearest(features[rows], min(k, len(rows) - 1)).distances
        class_distance[rows] = np.nanmean(np.where(np.isfinite(within), within, np.nan), axis=1)
    median = float(np.nanmedian(distance))
    spread = 1.4826 * float(np.nanmedian(np.abs(distance - median)))
    cutoff = median + z * max(spread, 1e-6)
    flagged = np.flatnonzero(distance > cutoff)
    return Outliers(distance, class_distance, flagged[np.argsort(-distance[flagged], kind="stable")], cutoff)
