"""Metric mode: the projection head learns an embedding where kNN works better than on raw embeddings."""

import numpy as np
import pytest
import torch

from kenner.errors import KennerError
from kenner.heads.projection import ProjectionHead
from kenner.retrieval.index import Gallery
from kenner.retrieval.metrics import recall_at_k
from kenner.train.metric import MetricTrainConfig, margin_at


def _clustered(n_per_class, n_classes=8, d=48, seed=0):
    """Classes differ in 4 informative dimensions; high-variance nuisance dimensions swamp them."""
    centres = np.zeros((n_classes, d), np.float32)
    centres[:, :4] = np.random.default_rng(123).normal(scale=3.0, size=(n_classes, 4))
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    noise = rng.normal(size=(len(labels), d)).astype(np.float32)
    noise[:, :4] *= 0.3
    noise[:, 4:] *= 4.0
    return centres[labels] + noise, labels


def _recall(train, y_train, queries, y_queries):
    return recall_at_k(Gallery.build(train, y_train).search(queries, k=1).labels, y_queries, 1)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    X, y = _clustered(40, seed=0)
    X_val, y_val = _clustered(10, seed=1)
    config = MetricTrainConfig(epochs=15, lr=1e-2, p=8, k=8, arcface_scale=16, arcface_margin=0.2,
                               warmup_epochs=2, patience=5, seed=0)
    head = ProjectionHead("linear", embedding_dim=16, train_config=config).fit(X, y, X_val=X_val, y_val=y_val)
    return head, X, y, X_val, y_val


def test_metric_mode_improves_recall_at_1_over_raw_embeddings(fitted):
    head, X, y, _, _ = fitted
    X_test, y_test = _clustered(10, seed=2)
    raw = _recall(X, y, X_test, y_test)
    learned = _recall(head.transform(X), y, head.transform(X_test), y_test)
    assert raw < 0.4
    assert learned > 0.8


def test_history_tracks_margin_schedule_and_best_epoch(fitted):
    head = fitted[0]
    margins = [record["margin"] for record in head.history_]
    assert margins[:2] == [0.0, 0.0] and margins[2] == pytest.approx(0.2)
    recalls = [record["val_recall_at_1"] for record in head.history_]
    assert head.best_epoch_ == int(np.argmax(recalls)) + 1
    assert margin_at(1, head.train_config) == 0.0 and margin_at(2, head.train_config) == 0.2


def test_best_epoch_weights_are_restored(fitted):
    head, X, y, X_val, y_val = fitted
    best = max(record["val_recall_at_1"] for record in head.history_)
    assert _recall(head.transform(X), y, head.transform(X_val), y_val) == pytest.approx(best)


def test_transform_is_normalised_and_save_load_round_trips(fitted, tmp_path):
    head, X, *_ = fitted
    Z = head.transform(X[:10])
    assert Z.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    head.save(tmp_path / "proj")
    loaded = ProjectionHead.load(tmp_path / "proj")
    np.testing.assert_allclose(loaded.transform(X[:10]), Z, atol=1e-6)
    assert loaded.history_ == head.history_ and loaded.train_config == head.train_config


def test_mlp_projection_trains_without_validation():
    torch.set_num_threads(1)
    X, y = _clustered(8, n_classes=3, d=12)
    config = MetricTrainConfig(epochs=2, p=16, k=4, arcface_scale=16, arcface_margin=0.2)  # P > classes: clamped
    head = ProjectionHead("mlp", embedding_dim=8, hidden_dim=16, train_config=config).fit(X, y)
    assert len(head.history_) == 2 and "val_recall_at_1" not in head.history_[0]
    assert head.best_epoch_ == 2
    assert head.transform(X).shape == (24, 8)


def test_user_errors():
    with pytest.raises(KennerError, match="proj-type"):
        ProjectionHead("transformer")
    with pytest.raises(KennerError, match="two classes"):
        ProjectionHead(train_config=MetricTrainConfig(epochs=1)).fit(np.ones((4, 3)), np.zeros(4))
    with pytest.raises(KennerError, match="not fitted"):
        ProjectionHead().transform(np.ones((2, 3)))
