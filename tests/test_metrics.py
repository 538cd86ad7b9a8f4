"""Metrics against hand-computed values: accuracy, top-k, F1 averages, foreground metrics, ECE."""

from __future__ import annotations

import numpy as np
import pytest

from kenner.errors import KennerError
from kenner.evaluate.calibration import calibration_bins, expected_calibration_error
from kenner.evaluate.metrics import classification_metrics, per_class_table
from kenner.evaluate.neighbours import recall_at_1

CLASSES = ["bg", "a", "b", "c", "d", "e"]


def test_ece_hand_computed() -> None:
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y_true = np.array([0, 1, 1, 0])
    # bins of width 0.2: (0.8, 1] {0.9 right}, (0.6, 0.8] {0.8 wrong, 0.7 right}, (0.4, 0.6] {0.6 wrong}
    expected = 0.25 * abs(1 - 0.9) + 0.5 * abs(0.5 - 0.75) + 0.25 * abs(0 - 0.6)
    assert expected_calibration_error(proba, y_true, n_bins=5) == pytest.approx(expected)
    confidence, accuracy, count = calibration_bins(proba, y_true, n_bins=5)
    assert count.tolist() == [0, 0, 1, 2, 1]
    assert accuracy[3] == 0.5 and confidence[3] == pytest.approx(0.75)


def test_ece_zero_for_perfect_calibration() -> None:
    proba = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(proba, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    with pytest.raises(KennerError, match="must be"):
        expected_calibration_error(proba, np.array([0, 1]))


def test_metrics_hand_computed() -> None:
    y_true = [1, 1, 2, 2, 3, 0]
    y_pred = [1, 2, 2, 2, 3, 1]
    m = classification_metrics(y_true, y_pred, None, CLASSES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # present classes 0..3: F1 bg 0, a 1/2, b 4/5, c 1 (classes d, e absent everywhere: not averaged)
    assert m["macro_f1"] == pytest.approx((0 + 0.5 + 0.8 + 1) / 4)
    assert m["weighted_f1"] == pytest.approx((1 * 0 + 2 * 0.5 + 2 * 0.8 + 1 * 1) / 6)
    assert m["macro_precision"] == pytest.approx((0 + 0.5 + 2 / 3 + 1) / 4)
    assert m["macro_recall"] == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert "ece" not in m and "top3_accuracy" not in m


def test_foreground_metrics_leave_background_out() -> None:
    y_true = [1, 1, 2, 2, 3, 0, 0]
    y_pred = [1, 2, 2, 2, 3, 1, 0]
    m = classification_metrics(y_true, y_pred, None, CLASSES, background_class="bg")
    # foreground a: P 1/2 R 1/2, b: P 2/3 R 1, c: P 1 R 1; the background (F1 2/3) is left out
    assert m["macro_f1_fg"] == pytest.approx((0.5 + 0.8 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.8 + 1) / 4)
    assert m["macro_precision_fg"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["macro_recall_fg"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["weighted_f1_fg"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 1) / 5)
    assert m["accuracy_fg"] == pytest.approx(4 / 5)
    with pytest.raises(KennerError, match="'other' is not a class"):
        classification_metrics(y_true, y_pred, None, CLASSES, background_class="other")


def test_top_k_and_ece_with_proba() -> None:
    proba = np.array(
        [
            [0.05, 0.5, 0.2, 0.1, 0.1, 0.05],  # true 2: rank 2
            [0.1, 0.3, 0.05, 0.15, 0.2, 0.2],  # true 3: rank 4
            [0.05, 0.0, 0.1, 0.2, 0.3, 0.35],  # true 1: rank 6
        ]
    )
    y_true = [2, 3, 1]
    m = classification_metrics(y_true, proba.argmax(1), proba, CLASSES, top_k=(1, 3, 5))
    assert m["accuracy"] == 0
    assert m["top3_accuracy"] == pytest.approx(1 / 3)
    assert m["top5_accuracy"] == pytest.approx(2 / 3)
    assert "top1_accuracy" not in m
    assert m["ece"] == pytest.approx(expected_calibration_error(proba, np.array(y_true)))
    small = classification_metrics([0, 1, 2], [0, 1, 1], np.eye(3)[[0, 1, 1]], ["x", "y", "z"])
    assert "top3_accuracy" not in small and "top5_accuracy" not in small


def test_bad_inputs() -> None:
    with pytest.raises(KennerError, match="no samples"):
        classification_metrics([], [], None, CLASSES)
    with pytest.raises(KennerError, match=r"0\.\.5"):
        classification_metrics([7], [0], None, CLASSES)
    with pytest.raises(KennerError, match="proba has shape"):
        classification_metrics([0], [0], np.ones((1, 2)), CLASSES)


def test_per_class_table_lists_every_class() -> None:
    table = per_class_table([1, 1, 2, 2, 3, 0], [1, 2, 2, 2, 3, 1], CLASSES)
    assert table.columns.tolist() == ["class", "support", "precision", "recall", "f1"]
    assert table["class"].tolist() == CLASSES
    assert table["support"].tolist() == [1, 2, 2, 1, 0, 0]
    assert table.loc[2, "precision"] == pytest.approx(2 / 3)
    assert table.loc[1, "f1"] == pytest.approx(0.5)
    assert table.loc[5, "f1"] == 0


def test_recall_at_1_of_embeddings_against_a_gallery_and_leave_one_out():
    rng = np.random.default_rng(0)
    features, y = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    z = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = z @ z.T - 10 * np.eye(30)
    assert recall_at_1(features, y) == pytest.approx(np.mean(y[similarity.argmax(axis=1)] == y))
    queries, labels = rng.normal(size=(12, 5)), rng.integers(0, 3, 12)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    assert recall_at_1(queries, labels, features, y) == pytest.approx(np.mean(y[(q @ z.T).argmax(axis=1)] == labels))
    assert np.isnan(recall_at_1(features[:1], y[:1]))


def test_prediction_cv_and_the_best_and_worst_classes():
    """The face-name track's figures: how evenly classes are predicted, and the 5 best and worst names."""
    from kenner.evaluate.metrics import per_class_table, prediction_cv, ranked_classes

    assert prediction_cv([0, 1, 2, 3], 4) == 0.0  # every class predicted equally often
    counts = np.array([4, 0, 0, 0])
    assert prediction_cv([0, 0, 0, 0], 4) == pytest.approx(counts.std() / counts.mean())
    y_true = np.repeat(np.arange(7), 4)
    y_pred = y_true.copy()
    y_pred[:3] = 1  # class 0 mostly wrong
    table = per_class_table(y_true, y_pred, [f"name{i}" for i in range(7)])
    ranked = ranked_classes(table)
    assert [name for name, _ in ranked["worst_classes"]][:2] == ["name0", "name1"]
    assert len(ranked["best_classes"]) == len(ranked["worst_classes"]) == 5
    assert all(f1 == 1.0 for _, f1 in ranked["best_classes"])
    metrics = classification_metrics(y_true, y_pred, None, [f"name{i}" for i in range(7)])
    assert metrics["prediction_cv"] == pytest.approx(prediction_cv(y_pred, 7))
