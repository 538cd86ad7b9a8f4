"""Metric mode: the projection head learns an embedding where kNN works better than on raw embeddings."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kenner.config.tree import RunConfig
from kenner.errors import InvalidInput, KennerError
from kenner.heads.projection import ProjectionHead, projection_params
from kenner.loop.history import check_history
from kenner.retrieval.index import Gallery
from kenner.retrieval.metrics import recall_at_k


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


SETTINGS = dict(
    epochs=15,
    lr=1e-2,
    pk_p=8,
    pk_k=8,
    arcface_scale=16,
    arcface_margin=0.2,
    margin_warmup_epochs=2,
    patience=5,
    seed=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    X, y = _clustered(40, seed=0)
    X_val, y_val = _clustered(10, seed=1)
    head = ProjectionHead("linear", embedding_dim=16, **SETTINGS).fit(X, y, X_val=X_val, y_val=y_val)
    return head, X, y, X_val, y_val


def test_metric_mode_improves_recall_at_1_over_raw_embeddings(fitted):
    head, X, y, _, _ = fitted
    X_test, y_test = _clustered(10, seed=2)
    assert _recall(X, y, X_test, y_test) < 0.4
    assert _recall(head.transform(X), y, head.transform(X_test), y_test) > 0.8


def test_history_tracks_margin_schedule_and_best_epoch(fitted):
    head = fitted[0]
    check_history(head.history_)
    margins = [record["margin"] for record in head.history_]
    assert margins[:2] == [0.0, 0.0] and margins[2] == pytest.approx(0.2)
    recalls = [record["val_recall_at_1"] for record in head.history_]
    best = max(recalls)
    ties = [i + 1 for i, r in enumerate(recalls) if r == best]
    losses = {i: head.history_[i - 1]["val_loss"] for i in ties}
    assert head.best_epoch_ == min(losses, key=losses.get)  # equal Recall@1: the lower val loss wins


def test_best_epoch_weights_are_restored(fitted):
    head, X, y, X_val, y_val = fitted
    best = head.history_[head.best_epoch_ - 1]["val_recall_at_1"]
    assert _recall(head.transform(X), y, head.transform(X_val), y_val) == pytest.approx(best)


def test_transform_is_normalised_and_save_load_round_trips(fitted, tmp_path: Path):
    head, X, *_ = fitted
    Z = head.transform(X[:10])
    assert Z.shape == (10, 16) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    head.save(tmp_path / "proj")
    loaded = ProjectionHead.load(tmp_path / "proj")
    np.testing.assert_array_equal(loaded.transform(X[:10]), Z)
    assert loaded.history_ == head.history_ and loaded.get_params() == head.get_params()


def test_mlp_projection_trains_without_validation_and_string_labels():
    torch.set_num_threads(1)
    X, y = _clustered(8, n_classes=3, d=12)
    # P = 16 > 3 classes: clamped to 3.
    head = ProjectionHead(
        "mlp",
        embedding_dim=8,
        proj_hidden_dim=16,
        epochs=2,
        pk_p=16,
        pk_k=4,
        arcface_scale=16,
        arcface_margin=0.2,
        device="cpu",
    ).fit(X, np.array(["x", "y", "z"])[y])
    assert len(head.history_) == 2 and "val_recall_at_1" not in head.history_[0]
    assert head.best_epoch_ == 2 and list(head.classes_) == ["x", "y", "z"]
    assert head.transform(X).shape == (24, 8)


def test_projection_params_from_a_run_config():
    cfg = RunConfig().replace(embedding_dim=32, pk_k=2, lr=0.05, device="cpu")
    params = projection_params(cfg)
    assert params == {**ProjectionHead().get_params(), "embedding_dim": 32, "pk_k": 2, "lr": 0.05, "device": "cpu"}


def test_user_errors():
    X, y = _clustered(4, n_classes=2, d=6)
    with pytest.raises(KennerError, match="--proj-type"):
        ProjectionHead("transformer").fit(X, y)
    with pytest.raises(KennerError, match="--monitor"):
        ProjectionHead(monitor="macro_f1").fit(X, y)
    with pytest.raises(InvalidInput, match="two classes"):
        ProjectionHead(epochs=1).fit(np.ones((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="not fitted"):
        ProjectionHead().transform(np.ones((2, 3)))
    head = ProjectionHead(epochs=1, pk_p=2, pk_k=2, device="cpu").fit(X, y)
    with pytest.raises(InvalidInput, match="X has 3 features"):
        head.transform(X[:, :3])
