"""The reject option: say "unclassifiable" instead of guessing.

One rule serves retrieval and classifier heads alike. Each prediction carries two numbers:

- a **distance** (lower = more confident): the top-1 cosine distance for retrieval
  (:func:`kenner.retrieval.vote.retrieval_confidence`), ``1 - max probability`` for a classifier
  (:func:`proba_confidence`);
- a **margin** (higher = more confident): top-1 minus top-2 vote score, or top-1 minus top-2 probability.

A :class:`RejectRule` rejects when the distance exceeds ``max_distance`` or the margin falls below
``min_margin``. :func:`tune_threshold` picks a threshold on validation data for a target precision
(accuracy among accepted predictions) or a target coverage (fraction accepted); :func:`evaluate_rule`
then measures what that rule really achieves on test data, which is what a report must show.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from kenner.errors import KennerError

UNCLASSIFIABLE = "unclassifiable"


@dataclass(frozen=True)
class RejectRule:
    """Reject when ``distance > max_distance`` or ``margin < min_margin`` (None = no limit)."""

    max_distance: float | None = None
    min_margin: float | None = None

    def accept(self, distance: np.ndarray, margin: np.ndarray) -> np.ndarray:
        """Boolean mask of accepted predictions."""
        accepted = np.ones(np.shape(distance), dtype=bool)
        if self.max_distance is not None:
            accepted &= np.asarray(distance) <= self.max_distance
        if self.min_margin is not None:
            accepted &= np.asarray(margin) >= self.min_margin
        return accepted

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RejectRule:
        return cls(max_distance=data.get("max_distance"), min_margin=data.get("min_margin"))


@dataclass(frozen=True)
class OperatingPoint:
    """A tuned threshold and what it achieved on the data it was tuned on."""

    threshold: float  # in units of ``signal``: accept when distance <= it, or score / margin >= it
    coverage: float
    precision: float  # accuracy among accepted predictions (nan when none accepted)
    n_accepted: int
    n: int
    target_met: bool
    signal: str = "score"

    def to_dict(self) -> dict:
        return asdict(self)


def proba_confidence(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 - max probability, top-1 minus top-2 probability) per row of a classifier's ``proba``."""
    ordered = np.sort(np.asarray(proba, dtype=np.float64), axis=1)
    second = ordered[:, -2] if ordered.shape[1] > 1 else np.zeros(len(ordered))
    return 1.0 - ordered[:, -1], ordered[:, -1] - second


def coverage_accuracy_curve(scores: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """Coverage and accuracy of "accept when score >= threshold" for every distinct threshold.

    ``scores`` are confidences (higher = more confident; pass ``-distance`` for distances). Arrays are
    ordered from the strictest threshold (lowest coverage) to accepting everything (coverage 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if scores.shape != correct.shape or scores.ndim != 1 or len(scores) == 0:
        raise KennerError(
            f"need matching non-empty 1-D scores and correct flags; got {scores.shape} and {correct.shape}"
        )
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    hits = np.cumsum(correct[order])
    # Only the last position of each run of equal scores is a reachable threshold.
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    accepted = ends + 1
    return {
        "threshold": sorted_scores[ends],
        "coverage": accepted / len(scores),
        "accuracy": hits[ends] / accepted,
        "n_accepted": accepted,
    }


def tune_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> OperatingPoint:
    """Pick a confidence threshold on validation data.

    With ``target_precision``: the largest coverage whose accuracy among accepted predictions reaches the
    target; if no threshold reaches it, the most precise one (``target_met`` False). With
    ``target_coverage``: the strictest threshold that still accepts at least that fraction.
    """
    if (target_precision is None) == (target_coverage is None):
        raise KennerError("give exactly one of target_precision and target_coverage")
    target = target_precision if target_precision is not None else target_coverage
    if not 0.0 < target <= 1.0:
        raise KennerError(f"a target precision or coverage must lie in (0, 1]; got {target}")
    curve = coverage_accuracy_curve(scores, correct)
    if target_precision is not None:
        reaching = np.flatnonzero(curve["accuracy"] >= target_precision - 1e-12)
        met = len(reaching) > 0
        best = reaching[-1] if met else int(np.argmax(curve["accuracy"]))
    else:
        met = True
        best = int(np.flatnonzero(curve["coverage"] >= target_coverage - 1e-12)[0])
    thresholds = curve["threshold"]  # descending: strictest first
    # halfway to the next less confident score (same rows accepted here), so a score that recomputes a
    # hair lower elsewhere (another batch size, another machine) is not rejected
    # (accepting everything: just past the least confident score, so a bounded signal stays in its range)
    below = (
        thresholds[best + 1]
        if best + 1 < len(thresholds)
        else thresholds[best] - 1e-6 * max(1.0, abs(thresholds[best]))
    )
    return OperatingPoint(
        threshold=float((thresholds[best] + below) / 2),
        coverage=float(curve["coverage"][best]),
        precision=float(curve["accuracy"][best]),
        n_accepted=int(curve["n_accepted"][best]),
        n=int(curve["n_accepted"][-1]),
        target_met=bool(met),
    )


def tune_reject_rule(
    distance: np.ndarray,
    margin: np.ndarray,
    correct: np.ndarray,
    *,
    by: str = "distance",
    target_precision: float | None = None,
    target_coverage: float | None = None,
) -> tuple[RejectRule, OperatingPoint]:
    """Tune a :class:`RejectRule` on one signal (``by`` = ``distance`` or ``margin``) or on both."""
    if by == "distance":
        confidence = -np.asarray(distance, dtype=np.float64)
        point = tune_threshold(confidence, correct, target_precision, target_coverage)
        point = replace(point, threshold=-point.threshold, signal="distance")
        return RejectRule(max_distance=point.threshold), point
    if by == "margin":
        point = replace(tune_threshold(margin, correct, target_precision, target_coverage), signal="margin")
        return RejectRule(min_margin=point.threshold), point
    if by == "both":
        return tune_joint_rule(distance, margin, correct, target_precision, target_coverage)
    raise KennerError(f"reject rules are tuned by 'distance', 'margin' or 'both', not {by!r}")


def tune_joint_rule(
    distance: np.ndarray,
    margin: np.ndarray,
    correct: np.ndarray,
    target_precision: float | None,
    target_coverage: float | None,
    candidates: int = 64,
) -> tuple[RejectRule, OperatingPoint]:
    """Both limits at once: a grid of ``candidates`` quantiles of each signal, searched exhaustively.

    For a target precision, the rule with the largest coverage reaching it (else the most precise);
    for a target coverage, the most precise rule accepting at least that fraction.
    """
    if (target_precision is None) == (target_coverage is None):
        raise KennerError("give exactly one of target_precision and target_coverage")
    distance, margin = np.asarray(distance, np.float64), np.asarray(margin, np.float64)
    correct = np.asarray(correct, dtype=bool)
    quantiles = np.linspace(0, 1, candidates)
    max_distances = np.unique(np.quantile(distance, quantiles))
    min_margins = np.unique(np.quantile(margin, quantiles))
    accepted = (distance[None, None, :] <= max_distances[:, None, None]) & (
        margin[None, None, :] >= min_margins[None, :, None]
    )
    n_accepted = accepted.sum(axis=2)
    coverage = n_accepted / len(correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_accepted > 0, (accepted & correct).sum(axis=2) / n_accepted, -1.0)
    if target_precision is not None:
        reaching = precision >= target_precision - 1e-12
        met = bool(reaching.any())
        score = np.where(reaching, coverage + 1e-9 * precision, -np.inf) if met else precision
    else:
        met = True
        score = np.where(coverage >= target_coverage - 1e-12, precision + 1e-9 * coverage, -np.inf)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    rule = RejectRule(max_distance=float(max_distances[i]), min_margin=float(min_margins[j]))
    point = OperatingPoint(
        threshold=float(max_distances[i]),
        coverage=float(coverage[i, j]),
        precision=float(precision[i, j]) if n_accepted[i, j] else math.nan,
        n_accepted=int(n_accepted[i, j]),
        n=len(correct),
        target_met=met,
        signal="distance+margin",
    )
    return rule, point


def evaluate_rule(rule: RejectRule, distance: np.ndarray, margin: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """What ``rule`` achieves on (held-out) data: coverage, precision among accepted, counts."""
    accepted = rule.accept(distance, margin)
    correct = np.asarray(correct, dtype=bool)
    n_accepted = int(accepted.sum())
    return {
        "coverage": n_accepted / len(correct) if len(correct) else math.nan,
        "precision": float(correct[accepted].mean()) if n_accepted else math.nan,
        "accuracy_all": float(correct.mean()) if len(correct) else math.nan,
        "n_accepted": n_accepted,
        "n": len(correct),
    }
