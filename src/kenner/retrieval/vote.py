"""Classification by retrieval: turn each query's top-K neighbours into class scores.

Methods (weights per neighbour; distance d = 1 - cosine similarity, see ``retrieval.index``):

- ``majority``: weight 1; ties go to the class whose nearest member ranks first.
- ``inverse_distance``: weight 1 / (d + eps).
- ``temperature``: weight exp(cos / T), DINO's weighted kNN (T = 0.07 by default).

Scores are normalised to sum to 1 per query, so they read like probabilities; the *vote margin*
is the top-1 minus the top-2 class score (used by the reject option).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kenner.errors import KennerError
from kenner.retrieval.index import Neighbours

VOTE_METHODS = ("majority", "inverse_distance", "temperature")


@dataclass(frozen=True)
class VoteResult:
    scores: np.ndarray  # [Q, C] normalised class scores
    predictions: np.ndarray  # [Q] int64 predicted class
    margin: np.ndarray  # [Q] top-1 minus top-2 score


def neighbour_weights(
    similarities: np.ndarray, method: str, *, temperature: float = 0.07, eps: float = 1e-6
) -> np.ndarray:
    """Per-neighbour vote weights ([Q, K]); empty slots (similarity -inf) weigh 0."""
    similarities = np.asarray(similarities, dtype=np.float64)
    valid = np.isfinite(similarities)
    safe = np.where(valid, similarities, 0.0)
    if method == "majority":
        weights = np.ones_like(safe)
    elif method == "inverse_distance":
        weights = 1.0 / (np.clip(1.0 - safe, 0.0, None) + eps)
    elif method == "temperature":
        # Subtracting the per-query maximum keeps exp() finite and does not change normalised scores.
        weights = np.exp((safe - safe.max(axis=1, keepdims=True)) / temperature)
    else:
        raise KennerError(f"unknown vote method {method!r}; choose one of {', '.join(VOTE_METHODS)}")
    return np.where(valid, weights, 0.0)


def vote(
    neighbours: Neighbours,
    n_classes: int,
    *,
    method: str = "majority",
    k: int | None = None,
    temperature: float = 0.07,
    eps: float = 1e-6,
) -> VoteResult:
    """Vote over the first ``k`` neighbours (all of them by default) of each query."""
    labels = neighbours.labels[:, :k]
    similarities = neighbours.similarities[:, :k]
    weights = neighbour_weights(similarities, method, temperature=temperature, eps=eps)
    n_queries, n_neighbours = labels.shape
    valid = labels >= 0
    rows = np.broadcast_to(np.arange(n_queries)[:, None], labels.shape)
    scores = np.zeros((n_queries, n_classes), dtype=np.float64)
    np.add.at(scores, (rows[valid], labels[valid]), weights[valid])
    totals = scores.sum(axis=1, keepdims=True)
    scores = np.divide(scores, totals, out=np.zeros_like(scores), where=totals > 0)

    # Tie-break: among equally scored classes, the one whose first neighbour ranks best wins.
    first_rank = np.full((n_queries, n_classes), n_neighbours, dtype=np.int64)
    ranks = np.broadcast_to(np.arange(n_neighbours)[None, :], labels.shape)
    np.minimum.at(first_rank, (rows[valid], labels[valid]), ranks[valid])
    top = scores.max(axis=1, keepdims=True)
    tied = np.isclose(scores, top, rtol=1e-9, atol=1e-12) & (top > 0)
    predictions = np.where(tied, first_rank, n_neighbours + 1).argmin(axis=1)

    ordered = np.sort(scores, axis=1)
    second = ordered[:, -2] if n_classes > 1 else np.zeros(n_queries)
    margin = ordered[:, -1] - second
    return VoteResult(scores=scores.astype(np.float32), predictions=predictions, margin=margin.astype(np.float32))


def retrieval_confidence(neighbours: Neighbours, result: VoteResult) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 cosine distance, vote margin) per query: the reject option's signals for retrieval."""
    return neighbours.distances[:, 0].astype(np.float64), result.margin.astype(np.float64)
