"""HDBSCAN evaluation on generated clusters."""

import numpy as np
import pytest

from kenner.errors import KennerError
from kenner.retrieval.clustering import cluster_purity, hdbscan_eval


def test_separated_classes_are_recovered():
    rng = np.random.default_rng(0)
    centres = np.eye(16, dtype=np.float32)[:4] * 10
    labels = np.repeat(np.arange(4), 25)
    x = centres[labels] + rng.normal(scale=0.3, size=(100, 16)).astype(np.float32)
    metrics, clusters = hdbscan_eval(x, labels, min_cluster_size=5)
    assert clusters.shape == (100,)
    assert metrics["n_clusters"] == 4
    assert metrics["ari"] > 0.9 and metrics["nmi"] > 0.9 and metrics["purity"] == 1.0
    assert metrics["noise_fraction"] < 0.1


def test_random_embeddings_do_not_look_clustered():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 16)).astype(np.float32)
    metrics, _ = hdbscan_eval(x, rng.integers(0, 4, 100), min_cluster_size=5)
    assert metrics["ari"] < 0.2


def test_purity_by_hand():
    clusters = np.array([0, 0, 0, 1, 1, -1])
    classes = np.array([1, 1, 2, 3, 3, 1])
    assert cluster_purity(clusters, classes) == pytest.approx(4 / 5)
    assert np.isnan(cluster_purity(np.array([-1, -1]), np.array([0, 1])))


def test_too_few_points_is_a_user_error():
    with pytest.raises(KennerError, match="min_cluster_size"):
        hdbscan_eval(np.ones((3, 4)), np.zeros(3), min_cluster_size=5)
