"""Binary tasks: AUROC, best-F1 threshold sweep, orientation correction, thresholded predictions."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score

from kenner.evaluate.binary import auroc, best_f1_threshold, binary_metrics, binary_predictions, choose_threshold


def two_class(p_pos: list[float], pos_index: int = 1) -> np.ndarray:
    p = np.asarray(p_pos, dtype=float)
    return np.stack([1 - p, p], axis=1) if pos_index == 1 else np.stack([p, 1 - p], axis=1)


def test_auroc_and_single_class() -> None:
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.75
    assert math.isnan(auroc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_threshold_sweep_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    is_pos = rng.random(60) < 0.3
    scores = np.clip(rng.normal(0.4 + 0.3 * is_pos, 0.2), 0, 1)
    threshold, f1 = best_f1_threshold(is_pos, scores)
    brute = max(f1_score(is_pos, scores >= t) for t in np.unique(scores))
    assert abs(f1 - brute) < 1e-12
    assert abs(f1_score(is_pos, scores >= threshold) - f1) < 1e-12
    assert best_f1_threshold(np.zeros(3, bool), np.array([0.2, 0.5, 0.9])) == (0.5, 0.0)


def test_orientation_is_corrected_when_the_score_is_inverted() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    proba = two_class([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])  # positives get the lowest scores
    result = choose_threshold(y, proba, 1)
    assert result.flipped and result.auroc == 1.0 and result.f1 == 1.0
    # on the flipped score 1 - p positives have >= 0.7, negatives <= 0.3: the threshold sits halfway
    assert abs(result.threshold - 0.5) < 1e-12
    assert binary_predictions(proba, 1, result).tolist() == y.tolist()
    straight = choose_threshold(y, two_class([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), 1)
    assert not straight.flipped and abs(straight.threshold - 0.5) < 1e-12


def test_threshold_applies_to_other_splits_and_multiclass_falls_back_to_argmax() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.35, 0.55], [0.7, 0.2, 0.1]])
    result = choose_threshold(np.array([1, 1, 0]), proba, 1)
    assert not result.flipped and abs(result.threshold - 0.25) < 1e-12  # halfway between 0.2 and 0.3
    # row 0 and 1 reach 0.3 -> positive; row 2 does not -> best other class (0)
    assert binary_predictions(proba, 1, result).tolist() == [1, 1, 0]
    metrics = binary_metrics(np.array([1, 2, 0]), proba, 1, result)
    assert metrics["threshold"] == result.threshold and metrics["score_flipped"] == 0.0
    assert abs(metrics["f1_pos"] - 2 / 3) < 1e-12  # one true positive, one false positive
