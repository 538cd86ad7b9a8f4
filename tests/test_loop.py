"""The loop parts: seeding contract, batch orders, early stopping, history schema, schedules; and the head
loop built from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kenner.heads import EmbeddingClassifier
from kenner.heads.modules import build_head_net, linear_init, reset_classifier_
from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.epochs import (
    class_balanced_order,
    hard_example_order,
    make_generator,
    minibatch_order,
    pk_order,
)
from kenner.loop.history import check_history, epoch_record
from kenner.loop.schedulers import build_scheduler, step_scheduler, warmup_cosine_factor
from synthetic import blobs

torch.set_num_threads(1)


# --- early stopping -----------------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_and_stops_after_patience() -> None:
    stopper = EarlyStopping("macro_f1", patience=2)
    improved = [bool(stopper.step(e, v)[0]) for e, v in enumerate([0.5, 0.7, 0.6, 0.7, 0.65], start=1)]
    assert improved == [True, True, False, False, False]
    assert stopper.best_epoch.tolist() == [2] and stopper.best_value.tolist() == [0.7]
    assert stopper.stopped.tolist() == [True]  # epoch 5 - best epoch 2 >= 2


def test_ties_are_broken_by_the_lower_validation_loss() -> None:
    """On easy data macro-F1 is 1.0 from epoch 1: the later, better-trained epoch must win the tie."""
    stopper = EarlyStopping("macro_f1", patience=3)
    for epoch, (f1, loss) in enumerate([(1.0, 0.40), (1.0, 0.20), (1.0, 0.25), (1.0, 0.10)], start=1):
        stopper.step(epoch, f1, loss)
    assert stopper.best_epoch.tolist() == [4] and stopper.best_loss.tolist() == [0.10]
    loss_monitor = EarlyStopping("loss", patience=1)
    assert loss_monitor.step(1, 0.5, 0.5)[0] and loss_monitor.step(2, 0.4, 0.4)[0]
    assert not loss_monitor.step(3, 0.45, 0.45)[0] and loss_monitor.stopped[0]
    assert not EarlyStopping("accuracy", 1).step(1, float("nan"))[0]  # NaN never improves


def test_patience_zero_keeps_the_last_and_min_epochs_delays_stopping() -> None:
    last = EarlyStopping("macro_f1", patience=0)
    for epoch, value in enumerate([0.9, 0.1, 0.2], start=1):
        assert last.step(epoch, value)[0]
    assert last.best_epoch.tolist() == [3] and not last.stopped[0] and last.keeps_last
    patient = EarlyStopping("macro_f1", patience=1, min_epochs=4)
    for epoch, value in enumerate([0.9, 0.1, 0.2], start=1):
        patient.step(epoch, value)
    assert not patient.stopped[0]  # 2 epochs without improvement, but only 3 of the 4 minimum
    patient.step(4, 0.3)
    assert patient.stopped[0] and patient.best_epoch.tolist() == [1]


def test_early_stopping_is_vectorised_over_heads_and_round_trips() -> None:
    stopper = EarlyStopping("accuracy", patience=1, n_heads=3)
    assert stopper.step(1, [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]).tolist() == [True, True, True]
    assert stopper.step(2, [0.6, 0.5, 0.4], [1.0, 0.9, 1.0]).tolist() == [True, True, False]
    assert stopper.stopped.tolist() == [False, False, True]
    assert stopper.step(3, [0.7, 0.4], heads=[0, 1]).tolist() == [True, False]  # head 2 left the batch
    assert stopper.best_epoch.tolist() == [3, 2, 1] and stopper.last_epoch.tolist() == [3, 3, 2]
    again = EarlyStopping("accuracy", patience=1, n_heads=3)
    again.load_state_dict(stopper.state_dict())
    assert str(again.state_dict()) == str(stopper.state_dict())  # NaN best loss: epoch 3 had none
    assert again.stopped.tolist() == [False, True, True]


def test_is_better_compares_model_and_ema_candidates() -> None:
    stopper = EarlyStopping("recall_at_1", patience=2)
    assert stopper.is_better(0.8, 0.3, 0.8, 0.4) and not stopper.is_better(0.8, 0.5, 0.8, 0.4)
    assert stopper.is_better(0.9, None, 0.8, None) and not stopper.is_better(0.8, None, 0.8, None)


# --- history ------------------------------------------------------------------------------------------


def test_history_schema() -> None:
    record = epoch_record(
        "train", 1, train_loss=0.5, lr=1e-3, seconds=0.1, val={"loss": 0.4, "macro_f1": 0.9}, margin=0.2
    )
    assert record == {
        "phase": "train",
        "epoch": 1,
        "train_loss": 0.5,
        "val_loss": 0.4,
        "val_macro_f1": 0.9,
        "lr": 1e-3,
        "seconds": 0.1,
        "margin": 0.2,
    }
    check_history([record, epoch_record("crt", 1, train_loss=0.2, lr=1e-3, seconds=0.1)])
    for broken in ({**record, "epoch": 0}, {**record, "val_macro_f1": None}, {**record, "extra": [1]}):
        with pytest.raises(ValueError, match="record 0"):
            check_history([broken])
    with pytest.raises(ValueError, match="missing seconds"):
        check_history([{k: v for k, v in record.items() if k != "seconds"}])


# --- schedules ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_schedules_per_epoch() -> None:
    factors = [warmup_cosine_factor(e, warmup=1, total=5, floor=0.0) for e in range(5)]
    half_cos = [0.5 * (1 + np.cos(np.pi * t)) for t in (0.25, 0.75)]
    assert factors == pytest.approx([0.5, 1.0, half_cos[0], 0.5, half_cos[1]])

    def lrs(metrics: list[float | None], **schedule) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(optimizer, epochs=5, **schedule)
        seen = []
        for metric in metrics:
            seen.append(optimizer.param_groups[0]["lr"])
            step_scheduler(scheduler, metric)
        return seen

    assert lrs([None] * 5, scheduler="cosine", warmup_epochs=1) == pytest.approx(factors)
    assert lrs([None] * 4, scheduler="restarts", t0=2) == pytest.approx([1.0, 0.5, 1.0, 0.5])
    plateau = lrs([0.5, 0.6, 0.6, 0.6, 0.6], scheduler="plateau", plateau_patience=1, plateau_factor=0.1)
    assert plateau == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])  # 1 stalled epoch tolerated, the 2nd cuts
    loss_plateau = lrs([0.5, 0.4, 0.3], scheduler="plateau", plateau_patience=0, plateau_factor=0.1, monitor="loss")
    assert loss_plateau == [1.0, 1.0, 1.0]  # a falling loss is progress
    assert lrs([None] * 3, scheduler="constant") == [1.0, 1.0, 1.0]
    assert lrs([None] * 4, scheduler="constant", warmup_epochs=2) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert (
        build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), scheduler="constant", epochs=3)
        is None
    )


# --- batch orders and the seeding contract ------------------------------------------------------------


def test_minibatch_order_is_a_seeded_permutation_split_into_batches() -> None:
    batches = minibatch_order(10, 4, make_generator(3))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.randperm(10, generator=torch.Generator().manual_seed(3)))


def test_hard_example_order_draws_high_loss_rows_more_often() -> None:
    losses = torch.tensor([0.0] * 9 + [9.0])
    drawn = torch.cat([torch.cat(hard_example_order(losses, 7, make_generator(seed))) for seed in range(200)])
    assert (drawn == 9).double().mean().item() == pytest.approx(0.5 + 0.5 / 10, abs=0.03)


def test_class_balanced_order_equalises_classes() -> None:
    y = torch.tensor([0] * 90 + [1] * 9 + [2])
    drawn = torch.cat([torch.cat(class_balanced_order(y, 32, make_generator(s))) for s in range(50)])
    shares = torch.bincount(y[drawn], minlength=3).double() / len(drawn)
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.03, rtol=0)


def test_pk_order_gives_p_classes_times_k_rows_seeded_by_the_generator() -> None:
    y = np.repeat(np.arange(6), [20, 10, 8, 5, 3, 2])
    batches = pk_order(y, 3, 4, make_generator(0))
    assert len(batches) == len(y) // 12 and all(len(b) == 12 for b in batches)
    for batch in batches:
        assert sorted(np.bincount(y[batch.numpy()], minlength=6)[np.unique(y[batch.numpy()])]) == [4, 4, 4]
    again = pk_order(y, 3, 4, make_generator(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches, pk_order(y, 3, 4, make_generator(1)), strict=True))


def test_linear_init_draws_small_normal_weights_and_zero_bias() -> None:
    weight, bias = linear_init(64, 32, make_generator(0))
    assert torch.equal(weight, 0.01 * torch.randn(32, 64, generator=torch.Generator().manual_seed(0)))
    layer = torch.nn.Linear(64, 32)
    reset_classifier_(layer, make_generator(0))
    assert torch.equal(layer.weight.data, weight) and torch.equal(layer.bias.data, bias)
    net = build_head_net(EmbeddingClassifier().get_params(), 5, 3, make_generator(7))
    assert torch.equal(net.classifier.weight.data, linear_init(5, 3, make_generator(7))[0]) and not net.blocks


def test_plain_linear_fit_matches_a_hand_written_adamw_loop() -> None:
    """The documented seeding contract reproduces a linear head's training."""
    X, y = blobs([30, 20, 10], dim=6)
    clf = EmbeddingClassifier(
        epochs=3, batch_size=16, lr=0.05, weight_decay=0.01, label_smoothing=0.1, standardize="none", device="cpu"
    ).fit(X, y)
    generator = make_generator(0)
    weight, bias = linear_init(6, 3, generator)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.AdamW([weight, bias], lr=0.05, weight_decay=0.01, fused=True)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(3):
        for rows in minibatch_order(len(X), 16, generator):
            loss = torch.nn.functional.cross_entropy(Xt[rows] @ weight.T + bias, yt[rows], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.testing.assert_close(clf.model_.classifier.weight.data, weight.detach())
    torch.testing.assert_close(clf.model_.classifier.bias.data, bias.detach())


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    X, y = blobs([20, 20])
    config = dict(head_type="mlp", hidden_sizes=(8,), dropout=0.2, epochs=2, batch_size=8, device="cpu")
    a, b = EmbeddingClassifier(**config).fit(X, y), EmbeddingClassifier(**config).fit(X, y)
    c = EmbeddingClassifier(**config, seed=1).fit(X, y)
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
    assert not np.array_equal(a.decision_function(X), c.decision_function(X))


# --- the head loop ------------------------------------------------------------------------------------


def test_early_stopping_restores_the_best_epoch() -> None:
    X, y = blobs([40, 40], sep=1.0)
    X_val, y_val = blobs([40, 40], sep=1.0, seed=5)
    y_val = 1 - y_val  # the better the head fits, the worse it scores on these labels
    clf = EmbeddingClassifier(epochs=50, batch_size=8, lr=0.02, patience=3, standardize="none", device="cpu")
    clf.fit(X, y, X_val=X_val, y_val=y_val)
    f1s = [r["val_macro_f1"] for r in clf.history_]
    assert len(f1s) == clf.best_epoch_ + 3 < 50
    assert f1s[clf.best_epoch_ - 1] == max(f1s) > f1s[-1]
    restored = f1_score(y_val, clf.predict(X_val), average="macro", zero_division=0)
    assert restored == pytest.approx(f1s[clf.best_epoch_ - 1])


def test_on_easy_data_the_tie_goes_to_the_better_trained_epoch() -> None:
    X, y = blobs([40, 40], sep=6.0)
    X_val, y_val = blobs([20, 20], sep=6.0, draw=1)
    clf = EmbeddingClassifier(epochs=12, batch_size=16, lr=0.01, patience=3, device="cpu")
    clf.fit(X, y, X_val=X_val, y_val=y_val)
    history = clf.history_
    assert history[0]["val_macro_f1"] == 1.0  # perfect from the first epoch
    assert clf.best_epoch_ > 1
    best = history[clf.best_epoch_ - 1]
    assert best["val_loss"] == min(r["val_loss"] for r in history if r["val_macro_f1"] == 1.0)


def test_monitor_loss_min_epochs_and_patience_zero() -> None:
    X, y = blobs([20, 20])
    X_val, y_val = blobs([10, 10], draw=1)
    by_loss = EmbeddingClassifier(epochs=8, batch_size=8, monitor="loss", device="cpu").fit(
        X, y, X_val=X_val, y_val=y_val
    )
    losses = [r["val_loss"] for r in by_loss.history_]
    assert losses[by_loss.best_epoch_ - 1] == min(losses)
    last = EmbeddingClassifier(epochs=6, batch_size=8, patience=0, device="cpu").fit(X, y, X_val=X, y_val=y)
    assert len(last.history_) == 6 and last.best_epoch_ == 6
    assert all(r["val_macro_f1"] is not None for r in last.history_)
    late = EmbeddingClassifier(epochs=30, batch_size=8, lr=1e-6, patience=1, min_epochs=7, device="cpu")
    assert len(late.fit(X, y, X_val=X_val, y_val=y_val).history_) >= 7


def test_history_reports_losses_lr_and_time() -> None:
    X, y = blobs([20, 20])
    clf = EmbeddingClassifier(epochs=4, batch_size=8, lr=0.1, scheduler="cosine", device="cpu").fit(X, y)
    check_history(clf.history_)
    assert [r["epoch"] for r in clf.history_] == [1, 2, 3, 4]
    for record in clf.history_:
        assert record["phase"] == "train" and record["val_loss"] is None and "val_macro_f1" not in record
        assert record["train_loss"] > 0 and record["seconds"] > 0
    lrs = [r["lr"] for r in clf.history_]
    assert lrs[0] == 0.1 and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert clf.fit_seconds_ > 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_other_optimizers_train(optimizer: str) -> None:
    X, y = blobs([30, 30])
    clf = EmbeddingClassifier(optimizer=optimizer, epochs=10, batch_size=16, lr=0.05, device="cpu").fit(X, y)
    assert clf.score(X, y) > 0.9
