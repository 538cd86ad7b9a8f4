"""The training loop: seeding contract, minibatch order, samplers, early stopping, history."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kenner.heads import EmbeddingClassifier
from kenner.heads.config import HeadConfig
from kenner.heads.modules import build_head_net
from kenner.train.loop import (
    class_balanced_order,
    hard_example_order,
    linear_init,
    make_generator,
    minibatch_order,
    reset_classifier_,
)

torch.set_num_threads(1)


def blobs(sizes: list[int], dim: int = 8, sep: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, ``sizes[c]`` rows of class c around a random centre ``sep`` apart (unit noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * sep
    y = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_minibatch_order_is_a_seeded_permutation_split_into_batches() -> None:
    batches = minibatch_order(10, 4, make_generator(3))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(batches), torch.randperm(10, generator=torch.Generator().manual_seed(3)))
    again = minibatch_order(10, 4, make_generator(3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_linear_init_draws_small_normal_weights_and_zero_bias() -> None:
    weight, bias = linear_init(64, 32, make_generator(0))
    assert weight.shape == (32, 64) and torch.equal(bias, torch.zeros(32))
    assert torch.equal(weight, 0.01 * torch.randn(32, 64, generator=torch.Generator().manual_seed(0)))
    layer = torch.nn.Linear(64, 32)
    reset_classifier_(layer, make_generator(0))
    assert torch.equal(layer.weight.data, weight) and torch.equal(layer.bias.data, bias)


def test_linear_head_initial_weights_come_from_linear_init() -> None:
    net = build_head_net(HeadConfig(), 5, 3, make_generator(7))
    weight, bias = linear_init(5, 3, make_generator(7))
    assert torch.equal(net.classifier.weight.data, weight) and torch.equal(net.classifier.bias.data, bias)
    assert len(net.blocks) == 0


def test_plain_linear_fit_matches_a_hand_written_adamw_loop() -> None:
    """The documented seeding contract reproduces a linear head's training exactly."""
    X, y = blobs([30, 20, 10], dim=6)
    config = HeadConfig(epochs=3, batch_size=16, lr=0.05, weight_decay=0.01, label_smoothing=0.1, device="cpu")
    clf = EmbeddingClassifier(config).fit(X, y)

    generator = make_generator(config.seed)
    weight, bias = linear_init(6, 3, generator)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.AdamW([weight, bias], lr=0.05, weight_decay=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(3):
        for idx in minibatch_order(len(X), 16, generator):
            loss = torch.nn.functional.cross_entropy(Xt[idx] @ weight.T + bias, yt[idx], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(clf.model_.classifier.weight.data, weight.detach())
    torch.testing.assert_close(clf.model_.classifier.bias.data, bias.detach())


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    X, y = blobs([20, 20])
    config = dict(head_type="mlp", hidden_sizes=(8,), dropout=0.2, epochs=2, batch_size=8, device="cpu")
    a = EmbeddingClassifier(**config).fit(X, y)
    b = EmbeddingClassifier(**config).fit(X, y)
    c = EmbeddingClassifier(**config, seed=1).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    assert not np.array_equal(a.decision_function(X), c.decision_function(X))


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch() -> None:
    X, y = blobs([40, 40], sep=1.0)
    X_val, y_val = blobs([40, 40], sep=1.0, seed=5)
    y_val = 1 - y_val  # the better the head fits, the worse it scores on these labels
    clf = EmbeddingClassifier(epochs=50, batch_size=8, lr=0.02, early_stopping_patience=3, device="cpu")
    clf.fit(X, y, X_val=X_val, y_val=y_val)
    f1s = [r["val_macro_f1"] for r in clf.history_]
    assert len(f1s) == clf.best_epoch_ + 3 < 50
    assert f1s[clf.best_epoch_ - 1] == max(f1s) > f1s[-1]
    restored = f1_score(y_val, clf.predict(X_val), average="macro", zero_division=0)
    assert restored == pytest.approx(f1s[clf.best_epoch_ - 1])


def test_patience_zero_trains_every_epoch_and_keeps_the_last_weights() -> None:
    X, y = blobs([20, 20])
    clf = EmbeddingClassifier(epochs=6, batch_size=8, early_stopping_patience=0, device="cpu")
    clf.fit(X, y, X_val=X, y_val=y)
    assert len(clf.history_) == 6 and clf.best_epoch_ == 6
    assert all(r["val_macro_f1"] is not None for r in clf.history_)


def test_history_reports_losses_lr_time_and_throughput() -> None:
    X, y = blobs([20, 20])
    clf = EmbeddingClassifier(epochs=4, batch_size=8, lr=0.1, lr_schedule="cosine", device="cpu").fit(X, y)
    assert [r["epoch"] for r in clf.history_] == [1, 2, 3, 4]
    for record in clf.history_:
        assert record["phase"] == "train" and record["val_loss"] is None
        assert record["train_loss"] > 0 and record["seconds"] > 0 and record["samples_per_s"] > 0
    lrs = [r["lr"] for r in clf.history_]
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert clf.fit_seconds_ > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_train(optimizer: str) -> None:
    X, y = blobs([30, 30])
    clf = EmbeddingClassifier(optimizer=optimizer, epochs=10, batch_size=16, lr=0.05, device="cpu").fit(X, y)
    assert clf.score(X, y) > 0.9


def test_hard_example_order_draws_high_loss_rows_more_often() -> None:
    losses = torch.tensor([0.0] * 9 + [9.0])
    drawn = torch.cat(hard_example_order(losses, 7, make_generator(0)))
    for seed in range(1, 200):
        drawn = torch.cat([drawn, *hard_example_order(losses, 7, make_generator(seed))])
    share = (drawn == 9).double().mean().item()
    assert share == pytest.approx(0.5 + 0.5 / 10, abs=0.03)  # half by loss, half uniform


def test_class_balanced_order_equalises_classes() -> None:
    y = torch.tensor([0] * 90 + [1] * 9 + [2])
    drawn = torch.cat([torch.cat(class_balanced_order(y, 32, make_generator(s))) for s in range(50)])
    shares = torch.bincount(y[drawn], minlength=3).double() / len(drawn)
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0)
