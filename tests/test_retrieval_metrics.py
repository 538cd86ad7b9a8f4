"""Retrieval metrics against brute-force references on toy data."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from kenner.retrieval.index import Gallery
from kenner.retrieval.metrics import (
    knn_classification,
    map_at_r,
    precision_at_1,
    recall_at_k,
    retrieval_metrics,
)


def _toy(seed=0, n_gallery=120, n_query=40, n_classes=6, d=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)) * 1.5
    gl = rng.integers(0, n_classes, n_gallery)
    ql = rng.integers(0, n_classes, n_query)
    g = (centres[gl] + rng.normal(size=(n_gallery, d))).astype(np.float32)
    q = (centres[ql] + rng.normal(size=(n_query, d))).astype(np.float32)
    return g, gl, q, ql


def _brute_force_ranking(g, q):
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(qn @ gn.T), axis=1, kind="stable")


def test_recall_and_map_match_brute_force_loops():
    g, gl, q, ql = _toy()
    ranking = _brute_force_ranking(g, q)
    neighbours = Gallery.build(g, gl).search(q, k=len(g))
    for k in (1, 5, 10):
        expected = np.mean([ql[i] in gl[ranking[i, :k]] for i in range(len(q))])
        assert recall_at_k(neighbours.labels, ql, k) == pytest.approx(expected)
    assert precision_at_1(neighbours.labels, ql) == pytest.approx(np.mean(gl[ranking[:, 0]] == ql))
    aps = []
    for i in range(len(q)):
        r = int((gl == ql[i]).sum())
        rel = gl[ranking[i, :r]] == ql[i]
        aps.append(sum(rel[: j + 1].mean() for j in range(r) if rel[j]) / r)
    assert map_at_r(neighbours.labels, ql, gl) == pytest.approx(np.mean(aps))


def test_map_at_r_agrees_with_pytorch_metric_learning():
    g, gl, q, ql = _toy(seed=1)
    neighbours = Gallery.build(g, gl).search(q, k=len(g))
    include = ("mean_average_precision_at_r", "precision_at_1")
    calculator = AccuracyCalculator(include=include, k="max_bin_count")
    gn, qn = (torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)) for x in (g, q))
    reference = calculator.get_accuracy(qn, torch.from_numpy(ql), gn, torch.from_numpy(gl))
    expected = reference["mean_average_precision_at_r"]
    assert map_at_r(neighbours.labels, ql, gl) == pytest.approx(expected, abs=1e-6)
    assert precision_at_1(neighbours.labels, ql) == pytest.approx(reference["precision_at_1"], abs=1e-6)


def test_perfect_and_hand_made_rankings():
    labels = np.array([[0, 0, 1], [1, 0, 1]])
    query = np.array([0, 1])
    gallery = np.array([0, 0, 1, 1])  # R = 2 for both queries
    assert recall_at_k(labels, query, 1) == 1.0
    assert recall_at_k(np.array([[1, 0, 1], [0, 0, 1]]), query, 1) == 0.0
    assert recall_at_k(np.array([[1, 0, 1], [0, 0, 1]]), query, 3) == 1.0
    # query 0: hits at ranks 1,2 -> AP 1; query 1: hit at rank 1 only within R=2 -> AP 1/2.
    assert map_at_r(labels, query, gallery) == pytest.approx(0.75)


def test_retrieval_metrics_skips_k_beyond_the_list_and_knn_scores():
    out = retrieval_metrics(np.array([[0, 1], [1, 1]]), np.array([1, 1]), np.array([0, 1, 1]))
    assert set(out) == {"recall_at_1", "precision_at_1", "map_at_r", "n_queries"}
    assert out["recall_at_1"] == 0.5 and out["map_at_r"] == pytest.approx((0.5 / 2 + 1.0) / 2)
    scores = knn_classification(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    assert scores["knn_accuracy"] == 0.75
    assert scores["knn_macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))


def test_leave_one_out_map_at_r_agrees_with_pytorch_metric_learning():
    """Gallery items queried without themselves: R counts the other items of their class only."""
    g, gl, _, _ = _toy(seed=2)
    loo = Gallery.build(g, gl).search(g, k=len(g) - 1, exclude=np.arange(len(g)))
    calculator = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count")
    gn = torch.from_numpy(g / np.linalg.norm(g, axis=1, keepdims=True))
    reference = calculator.get_accuracy(gn, torch.from_numpy(gl), gn, torch.from_numpy(gl), ref_includes_query=True)
    expected = reference["mean_average_precision_at_r"]
    in_gallery = np.ones(len(g), dtype=bool)
    assert map_at_r(loo.labels, gl, gl, in_gallery) == pytest.approx(expected, abs=1e-6)
    assert map_at_r(loo.labels, gl, gl) < expected  # counting the query itself in R understates mAP@R
    metrics = retrieval_metrics(loo.labels, gl, gl, query_in_gallery=in_gallery)
    assert metrics["map_at_r"] == pytest.approx(expected, abs=1e-6)


def _old_map_at_r(neighbour_labels, query_labels, gallery_labels, query_in_gallery=None):
    """kenner 0.1's hand-written mAP@R, kept as the reference pml's AccuracyCalculator must reproduce."""
    classes, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    r = np.zeros(len(query_labels), dtype=np.int64)
    known = np.isin(query_labels, classes)
    r[known] = counts[np.searchsorted(classes, query_labels[known])]
    if query_in_gallery is not None:
        r -= np.asarray(query_in_gallery, dtype=bool) & known
    present = r > 0
    if not present.any():
        return float("nan")
    rank = np.arange(1, neighbour_labels.shape[1] + 1)
    relevant = (neighbour_labels == query_labels[:, None]) & (rank[None, :] <= r[:, None])
    precision_at_rank = np.cumsum(relevant, axis=1) / rank[None, :]
    return float(((precision_at_rank * relevant).sum(axis=1)[present] / r[present]).mean())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [3, 25, 119])
def test_pml_metrics_equal_the_hand_written_ones(seed, k):
    """Random neighbour lists, classes missing from the gallery, a mix of leave-one-out and other queries,
    lists shorter than R: precision@1 and mAP@R from pytorch-metric-learning equal kenner 0.1's numbers."""
    rng = np.random.default_rng(seed)
    gallery = rng.integers(0, 8, 120)
    queries = rng.integers(0, 10, 60)  # classes 8 and 9 have no gallery item
    neighbours = gallery[np.argsort(rng.random((60, 120)), axis=1)[:, :k]]
    neighbours[:, 0] = np.where(rng.random(60) < 0.5, queries, neighbours[:, 0])
    in_gallery = rng.random(60) < 0.4
    for mask in (None, in_gallery, np.ones(60, bool)):
        assert map_at_r(neighbours, queries, gallery, mask) == pytest.approx(
            _old_map_at_r(neighbours, queries, gallery, mask), abs=1e-12
        )
    assert precision_at_1(neighbours, queries) == pytest.approx(np.mean(neighbours[:, 0] == queries), abs=1e-12)
    assert np.isnan(map_at_r(neighbours[:3], np.array([9, 9, 8]), gallery))
