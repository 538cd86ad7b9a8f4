"""Binary tasks (``--pos-class``): AUROC, the threshold with the best F1, and orientation correction.

The score of a sample is the predicted probability of the positive class. When that score ranks the
validation samples the wrong way round (AUROC < 0.5), it is flipped (``1 - score``) and the flip is
reported; the threshold is then chosen on the flipped score. Threshold and flip are chosen on the
validation split and applied unchanged to the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class BinaryResult:
    """Chosen on validation: AUROC of the oriented score, its best-F1 threshold, that F1, and the flip."""

    auroc: float
    threshold: float
    f1: float
    flipped: bool


def auroc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, scores))


def best_f1_threshold(is_positive: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(threshold, F1)`` maximising the positive class's F1 of ``score >= threshold`` over every
    distinct score; ``(0.5, 0.0)`` without positives. The threshold sits halfway between the chosen
    score and the next lower one (same F1 here), so a score that recomputes a hair lower elsewhere
    (another batch size, another machine) is not flipped."""
    is_positive = np.asarray(is_positive, dtype=bool)
    if not is_positive.any():
        return DEFAULT_THRESHOLD, 0.0
    precision, recall, thresholds = precision_recall_curve(is_positive, scores)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=(precision + recall) > 0
    )
    best = int(np.argmax(f1))
    below = thresholds[best - 1] if best > 0 else thresholds[0] - 1.0  # best == 0: accept everything
    return float((thresholds[best] + below) / 2), float(f1[best])


def oriented_scores(proba: np.ndarray, pos_index: int, flipped: bool) -> np.ndarray:
    """The positive-class probability, or one minus it when the orientation is flipped."""
    scores = np.asarray(proba)[:, pos_index]
    return 1.0 - scores if flipped else scores


def choose_threshold(y: np.ndarray, proba: np.ndarray, pos_index: int) -> BinaryResult:
    """Orientation, AUROC and best-F1 threshold of the positive-class score on labelled (validation)
    samples."""
    is_positive = np.asarray(y) == pos_index
    raw = auroc(is_positive, oriented_scores(proba, pos_index, False))
    flipped = bool(raw < 0.5)
    threshold, f1 = best_f1_threshold(is_positive, oriented_scores(proba, pos_index, flipped))
    return BinaryResult(auroc=1.0 - raw if flipped else raw, threshold=threshold, f1=f1, flipped=flipped)


def binary_predictions(proba: np.ndarray, pos_index: int, result: BinaryResult) -> np.ndarray:
    """The positive class where the oriented score reaches the threshold, else the best other class."""
    others = np.array(proba, dtype=float)
    others[:, pos_index] = -np.inf
    return np.where(
        oriented_scores(proba, pos_index, result.flipped) >= result.threshold, pos_index, others.argmax(axis=1)
    )


def binary_metrics(y: np.ndarray, proba: np.ndarray, pos_index: int, result: BinaryResult) -> dict[str, float]:
    """AUROC and positive-class F1 on ``y`` with the orientation and threshold of ``result``."""
    is_positive = np.asarray(y) == pos_index
    predicted_positive = binary_predictions(proba, pos_index, result) == pos_index
    return {
        "auroc": auroc(is_positive, oriented_scores(proba, pos_index, result.flipped)),
        "f1_pos": float(f1_score(is_positive, predicted_positive, zero_division=0)),
        "threshold": result.threshold,
        "score_flipped": float(result.flipped),
    }
