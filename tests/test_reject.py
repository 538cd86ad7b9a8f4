"""Reject option: tuned thresholds reach their target on val and are measured, not assumed, on test."""

import numpy as np
import pytest

from kenner.errors import KennerError
from kenner.evaluate.reject import (
    RejectRule,
    coverage_accuracy_curve,
    evaluate_rule,
    proba_confidence,
    tune_reject_rule,
    tune_threshold,
)
from kenner.retrieval.index import Gallery
from kenner.retrieval.vote import retrieval_confidence, vote


def _confidences(n, seed):
    """Scores where higher means more often correct (about 75% correct overall)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, n).round(2)  # rounded: many ties, as with vote margins
    correct = rng.uniform(0, 1, n) < 0.4 + 0.6 * scores
    return scores, correct


def test_curve_matches_brute_force_loop():
    scores, correct = _confidences(300, 0)
    curve = coverage_accuracy_curve(scores, correct)
    rows = zip(curve["threshold"], curve["coverage"], curve["accuracy"], strict=True)
    for threshold, coverage, accuracy in rows:
        accepted = scores >= threshold
        assert coverage == pytest.approx(accepted.mean())
        assert accuracy == pytest.approx(correct[accepted].mean())
    assert curve["coverage"][-1] == 1.0
    assert np.all(np.diff(curve["coverage"]) > 0)


def test_target_precision_is_reached_on_val_with_the_largest_coverage():
    scores, correct = _confidences(2000, 1)
    point = tune_threshold(scores, correct, target_precision=0.95)
    accepted = scores >= point.threshold
    assert point.target_met
    assert correct[accepted].mean() >= 0.95
    assert point.precision == pytest.approx(correct[accepted].mean())
    assert point.coverage == pytest.approx(accepted.mean())
    # Any looser threshold (accepting more) misses the target.
    for looser in np.unique(scores[scores < point.threshold]):
        assert correct[scores >= looser].mean() < 0.95


def test_rule_is_reported_honestly_on_test():
    val_scores, val_correct = _confidences(2000, 2)
    test_scores, test_correct = _confidences(2000, 3)
    rule, point = tune_reject_rule(1 - val_scores, 1 - val_scores, val_correct, target_precision=0.95)
    assert rule.max_distance == point.threshold and rule.min_margin is None and point.signal == "distance"
    assert point.target_met and point.precision >= 0.95
    report = evaluate_rule(rule, 1 - test_scores, 1 - test_scores, test_correct)
    accepted = (1 - test_scores) <= rule.max_distance
    assert report["coverage"] == pytest.approx(accepted.mean())
    assert report["precision"] == pytest.approx(test_correct[accepted].mean())
    assert report["accuracy_all"] == pytest.approx(test_correct.mean())
    assert report["precision"] > report["accuracy_all"]
    assert report["n"] == 2000 and report["n_accepted"] == accepted.sum()


def test_target_coverage_accepts_at_least_that_fraction():
    scores, correct = _confidences(1000, 4)
    point = tune_threshold(scores, correct, target_coverage=0.5)
    assert point.coverage >= 0.5
    accepted = scores >= point.threshold
    assert accepted.mean() == pytest.approx(point.coverage)
    assert (scores > scores[accepted].min()).mean() < 0.5  # the next stricter threshold falls short


def test_unreachable_precision_is_flagged_not_hidden():
    correct = np.array([True, False, False, False])
    point = tune_threshold(np.array([0.4, 0.9, 0.8, 0.1]), correct, target_precision=0.99)
    assert not point.target_met
    assert point.precision < 0.99


def test_same_rule_on_classifier_probabilities():
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    distance, margin = proba_confidence(proba)
    np.testing.assert_allclose(distance, [0.1, 0.6, 0.2])
    np.testing.assert_allclose(margin, [0.85, 0.05, 0.7])
    assert RejectRule(max_distance=0.3).accept(distance, margin).tolist() == [True, False, True]
    assert RejectRule(min_margin=0.75).accept(distance, margin).tolist() == [True, False, False]
    both = RejectRule(max_distance=0.15, min_margin=0.5)
    assert both.accept(distance, margin).tolist() == [True, False, False]
    assert RejectRule.from_dict(both.to_dict()) == both


def test_retrieval_confidence_rejects_far_queries():
    rng = np.random.default_rng(5)
    centres = np.eye(8, dtype=np.float32)[:2] * 10
    gallery_vectors = np.repeat(centres, 20, axis=0) + rng.normal(size=(40, 8)).astype(np.float32)
    gallery = Gallery.build(gallery_vectors, np.repeat([0, 1], 20))
    near, far = centres[0] + rng.normal(size=8), np.eye(8, dtype=np.float32)[5]  # orthogonal to both classes
    neighbours = gallery.search(np.stack([near, far]).astype(np.float32), k=5)
    distance, margin = retrieval_confidence(neighbours, vote(neighbours, 2))
    assert RejectRule(max_distance=0.5).accept(distance, margin).tolist() == [True, False]


def test_bad_targets_are_user_errors():
    scores, correct = _confidences(10, 6)
    with pytest.raises(KennerError, match="exactly one"):
        tune_threshold(scores, correct)
    with pytest.raises(KennerError, match=r"\(0, 1\]"):
        tune_threshold(scores, correct, target_precision=95)
    with pytest.raises(KennerError, match="distance"):
        tune_reject_rule(scores, scores, correct, by="entropy", target_coverage=0.5)


def test_run_folder_reject_report_tunes_on_val_and_measures_test(tmp_path):
    from kenner.evaluate.reject_report import reject_markdown, rule_text, tune_reject
    from kenner.io import read_json

    scores, correct = _confidences(3000, 7)
    split = np.repeat(np.array(["train", "val", "test"]), 1000)
    distance, margin = 1 - scores, scores
    summary, rule = tune_reject(
        distance, margin, correct, split, by="margin", target_precision=0.9, target_coverage=None, out_dir=tmp_path
    )
    assert rule.min_margin is not None and rule.max_distance is None
    on_val = rule.accept(distance, margin)[split == "val"]
    assert correct[split == "val"][on_val].mean() >= 0.9
    saved = read_json(tmp_path / "reject.json")
    test = split == "test"
    assert saved["splits"]["test"]["precision"] == pytest.approx(correct[test][margin[test] >= rule.min_margin].mean())
    assert (tmp_path / "coverage_accuracy.png").is_file()
    text = reject_markdown(summary)
    assert f"margin < {rule.min_margin:.4g}" in text and "target precision 0.9" in text and "| test |" in text
    assert rule_text({"max_distance": 0.25, "min_margin": 0.1}) == "unclassifiable when distance > 0.25 or margin < 0.1"
    assert "No target" in reject_markdown(
        tune_reject(
            distance,
            margin,
            correct,
            split,
            by="distance",
            target_precision=None,
            target_coverage=None,
            out_dir=tmp_path,
        )[0]
    )
    with pytest.raises(KennerError, match="val is empty"):
        tune_reject(
            distance,
            margin,
            correct,
            np.full(3000, "train"),
            by="distance",
            target_precision=None,
            target_coverage=0.5,
            out_dir=tmp_path,
        )


def test_joint_rule_uses_both_limits_and_reaches_the_targets():
    from kenner.evaluate.reject import tune_reject_rule

    rng = np.random.default_rng(0)
    n = 2000
    distance = rng.uniform(0, 1, n)
    margin = rng.uniform(0, 1, n)
    # right answers need BOTH a small distance and a large margin: one signal alone cannot isolate them
    correct = (distance < 0.6) & (margin > 0.4) | (rng.uniform(size=n) < 0.1)
    rule, point = tune_reject_rule(distance, margin, correct, by="both", target_precision=0.95)
    assert rule.max_distance is not None and rule.min_margin is not None
    assert point.target_met and point.precision >= 0.95
    measured = evaluate_rule(rule, distance, margin, correct)
    assert measured["coverage"] == pytest.approx(point.coverage) and measured["precision"] >= 0.95
    _, single = tune_reject_rule(distance, margin, correct, by="distance", target_precision=0.95)
    assert point.coverage > single.coverage  # the joint rule keeps more predictions at the same precision
    rule, point = tune_reject_rule(distance, margin, correct, by="both", target_coverage=0.3)
    assert point.coverage >= 0.3 and evaluate_rule(rule, distance, margin, correct)["coverage"] >= 0.3


def test_accepting_everything_keeps_a_bounded_signal_in_its_range():
    """1 - max probability lies in [0, 1): the rule that accepts every row must not say "distance > 1.3"."""
    proba = np.random.default_rng(0).dirichlet(np.ones(4), size=200)
    distance, margin = proba_confidence(proba)
    correct = np.ones(len(proba), dtype=bool)
    for by in ("distance", "margin"):
        rule, point = tune_reject_rule(distance, margin, correct, by=by, target_coverage=1.0)
        assert point.coverage == 1.0 and rule.accept(distance, margin).all()
        if by == "distance":
            assert distance.max() < rule.max_distance < distance.max() + 1e-5
        else:
            assert margin.min() - 1e-5 < rule.min_margin < margin.min()
