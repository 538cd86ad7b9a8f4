"""Voting schemes on hand-made neighbours."""

import numpy as np
import pytest

from kenner.errors import KennerError
from kenner.retrieval.index import Neighbours
from kenner.retrieval.vote import vote


def _neighbours(labels, similarities):
    labels = np.array(labels)
    return Neighbours(
        indices=np.arange(labels.size).reshape(labels.shape),
        similarities=np.array(similarities, dtype=np.float32),
        labels=labels,
    )


def test_majority_counts_and_margin():
    result = vote(_neighbours([[1, 0, 1, 2, 1]], [[0.9, 0.8, 0.7, 0.6, 0.5]]), 3, method="majority")
    np.testing.assert_allclose(result.scores, [[0.2, 0.6, 0.2]])
    assert result.predictions.tolist() == [1]
    assert result.margin[0] == pytest.approx(0.4)


def test_majority_tie_goes_to_class_ranked_first():
    result = vote(_neighbours([[2, 0, 0, 2], [0, 2, 2, 0]], [[0.9, 0.8, 0.7, 0.6]] * 2), 3)
    assert result.predictions.tolist() == [2, 0]
    assert result.margin.tolist() == [0.0, 0.0]


def test_inverse_distance_lets_one_close_neighbour_outvote_two_far_ones():
    # distances: 0.01 for class 0; 0.5 and 0.5 for class 1 -> weights 100 vs 2 + 2.
    nb = _neighbours([[0, 1, 1]], [[0.99, 0.5, 0.5]])
    assert vote(nb, 2, method="majority").predictions.tolist() == [1]
    result = vote(nb, 2, method="inverse_distance", eps=0.0)
    assert result.predictions.tolist() == [0]
    np.testing.assert_allclose(result.scores[0], [100 / 104, 4 / 104], rtol=1e-5)


def test_temperature_vote_matches_dino_formula():
    sims = np.array([[0.9, 0.85, 0.3]])
    nb = _neighbours([[0, 1, 1]], sims)
    result = vote(nb, 2, method="temperature", temperature=0.07)
    w = np.exp(sims[0] / 0.07)
    np.testing.assert_allclose(result.scores[0], [w[0] / w.sum(), (w[1] + w[2]) / w.sum()], rtol=1e-5)
    # A large temperature makes every neighbour count the same: back to majority.
    assert vote(nb, 2, method="temperature", temperature=1e6).predictions.tolist() == [1]


def test_k_limits_the_voters_and_empty_slots_are_ignored():
    nb = _neighbours([[0, 1, 1, -1]], [[0.9, 0.8, 0.7, -np.inf]])
    assert vote(nb, 2, k=1).predictions.tolist() == [0]
    result = vote(nb, 2)
    np.testing.assert_allclose(result.scores[0], [1 / 3, 2 / 3])
    assert np.isfinite(vote(nb, 2, method="inverse_distance").scores).all()


def test_unknown_method_is_a_user_error():
    with pytest.raises(KennerError, match="majority"):
        vote(_neighbours([[0]], [[1.0]]), 1, method="borda")
