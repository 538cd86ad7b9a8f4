"""Near-duplicate pairs (embedding cosine at or above a threshold) and byte-identical files (same SHA-256).

A pair is two sample rows ``first < second``. Near-duplicates come from the shared kNN search
(:mod:`kenner.audit.neighbours`): a pair is found when either sample is among the other's ``k`` nearest, so a
set of more than ``k + 1`` copies of one image is reported through its nearest pairs, not all of them.

How close is "near" depends on the encoder and on the data: with the default encoder, distinct Tux Paint stamps
are rarely closer than cosine 0.5 while distinct Fashion-MNIST garments often pass 0.9, and a resized or
JPEG-recompressed copy scores 0.85-0.99 in both. So the default threshold is relative to the dataset: a pair is a
near-duplicate when its cosine distance is below ``AUTO_FACTOR`` (0.4) times the median distance of a sample to
its nearest neighbour, i.e. ``threshold = 1 - 0.4 x median nearest-neighbour distance``. The factor was chosen
with bench/bench_audit.py (BENCHMARKS.md: recall of planted copies against all pairs found, per threshold).
``--near-duplicate-threshold`` sets a fixed cosine instead; the report shows the pairs just above and just below
the threshold so that a user can check it on their own data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from kenner.audit.neighbours import Neighbourhood


@dataclass(frozen=True)
class Pairs:
    """Sample pairs (row positions, ``first < second``) and their cosine similarity, most similar first."""

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def take(self, mask: np.ndarray) -> Pairs:
        return Pairs(self.first[mask], self.second[mask], self.similarity[mask])

    def as_tuples(self) -> list[tuple[int, int]]:
        return list(zip(self.first.tolist(), self.second.tolist(), strict=True))


def _pairs(first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> Pairs:
    """Unordered, deduplicated pairs (the highest similarity kept), most similar first."""
    a, b = np.minimum(first, second), np.maximum(first, second)
    order = np.lexsort((b, a, -similarity))
    a, b, similarity = a[order], b[order], similarity[order]
    _, keep = np.unique(a * (max(int(b.max(initial=0)), 0) + 1) + b, return_index=True)
    keep = np.sort(keep)
    return Pairs(a[keep].astype(np.int64), b[keep].astype(np.int64), similarity[keep].astype(np.float32))


AUTO_FACTOR = 0.4


def resolve_threshold(neighbours: Neighbourhood, threshold: float | None) -> float:
    """``threshold``, or the automatic one: ``1 - AUTO_FACTOR x`` the median nearest-neighbour cosine distance."""
    if threshold is not None:
        return float(threshold)
    nearest_distance = neighbours.distances[:, 0] if neighbours.distances.shape[1] else np.zeros(1)
    finite = nearest_distance[np.isfinite(nearest_distance)]
    return float(1.0 - AUTO_FACTOR * np.median(finite)) if len(finite) else 1.0


def similar_pairs(neighbours: Neighbourhood, low: float, high: float = np.inf) -> Pairs:
    """Pairs of neighbours with ``low <= cosine < high``, most similar first."""
    rows = np.broadcast_to(np.arange(len(neighbours.indices))[:, None], neighbours.indices.shape)
    mask = (neighbours.indices >= 0) & (neighbours.similarities >= low) & (neighbours.similarities < high)
    return _pairs(rows[mask], neighbours.indices[mask], neighbours.similarities[mask])


def near_duplicates(neighbours: Neighbourhood, threshold: float) -> Pairs:
    """Near-duplicate pairs: cosine >= ``threshold``."""
    return similar_pairs(neighbours, threshold)


def threshold_examples(neighbours: Neighbourhood, threshold: float, count: int) -> tuple[Pairs, Pairs]:
    """The ``count`` pairs just above the threshold (the least similar duplicates) and the ``count`` just below it
    (the most similar non-duplicates)."""
    above = similar_pairs(neighbours, threshold)
    below = similar_pairs(neighbours, -np.inf, threshold)
    return above.take(np.arange(len(above))[-count:][::-1]), below.take(np.arange(min(count, len(below))))


def identical_pairs(digests: Sequence[Sequence[str]]) -> Pairs:
    """Pairs of samples that share a byte-identical file (``digests``: each sample's file SHA-256s)."""
    rows: dict[str, list[int]] = defaultdict(list)
    for row, sample_digests in enumerate(digests):
        for digest in dict.fromkeys(sample_digests):
            rows[digest].append(row)
    found = [pair for members in rows.values() if len(members) > 1 for pair in combinations(members, 2)]
    if not found:
        empty = np.zeros(0, np.int64)
        return Pairs(empty, empty, np.zeros(0, np.float32))
    first, second = np.asarray(found, dtype=np.int64).T
    return _pairs(first, second, np.ones(len(first), np.float32))


def crossing(pairs: Pairs, split: np.ndarray) -> np.ndarray:
    """Boolean mask of the pairs whose samples are in different splits (leakage)."""
    split = np.asarray(split)
    return split[pairs.first] != split[pairs.second]
