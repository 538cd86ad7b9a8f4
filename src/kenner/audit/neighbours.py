"""One exact kNN search over the whole dataset, shared by every finding of an audit.

Embeddings are L2-normalised and searched by inner product in a Faiss ``IndexFlatIP``, so similarities are
cosines and distances ``1 - cosine`` (as everywhere in kenner, see :mod:`kenner.retrieval.index`).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from kenner.retrieval.index import l2_normalize


@dataclass(frozen=True)
class Neighbourhood:
    """Row i's ``k`` nearest other rows, most similar first (-1 / -inf where the dataset has fewer rows)."""

    indices: np.ndarray  # [N, k] int64
    similarities: np.ndarray  # [N, k] float32 cosine

    @property
    def distances(self) -> np.ndarray:
        return np.maximum(1.0 - self.similarities, 0.0)


def pair_features(per_view: dict[str, np.ndarray]) -> np.ndarray:
    """One unit vector per sample: every view L2-normalised, concatenated and normalised again, so the cosine of
    two samples is the mean cosine of their views."""
    return l2_normalize(np.concatenate([l2_normalize(matrix) for matrix in per_view.values()], axis=1))


def nearest(features: np.ndarray, k: int) -> Neighbourhood:
    """The ``k`` nearest other rows of every row of ``features`` (exact search; the row itself left out even when
    identical copies tie with it)."""
    x = l2_normalize(features)
    n = len(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    similarities, indices = index.search(x, min(k + 1, n))
    own = indices == np.arange(n)[:, None]
    # rows whose own index was crowded out by exact copies lose their last neighbour instead
    own[~own.any(axis=1), -1] = True
    order = np.argsort(own, axis=1, kind="stable")[:, : indices.shape[1] - 1]
    indices = np.take_along_axis(indices, order, axis=1)
    similarities = np.take_along_axis(similarities, order, axis=1)
    if indices.shape[1] < k:
        pad = k - indices.shape[1]
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        similarities = np.pad(similarities, ((0, 0), (0, pad)), constant_values=-np.inf)
    similarities = np.where(indices < 0, -np.inf, similarities)
    return Neighbourhood(indices.astype(np.int64), similarities.astype(np.float32))
