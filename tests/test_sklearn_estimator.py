"""scikit-learn's own estimator checks on EmbeddingClassifier."""

from __future__ import annotations

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from kenner.heads import EmbeddingClassifier

torch.set_num_threads(1)

# Each entry: check name -> why EmbeddingClassifier does not pass it.
EXPECTED_FAILED_CHECKS = {
    "check_class_weight_classifiers": "class_weight is kenner's none|inverse|effective (the --class-weight flag), "
    "not scikit-learn's dict or 'balanced'",
}


@parametrize_with_checks(
    [EmbeddingClassifier(epochs=30, batch_size=32, lr=0.05, patience=0, device="cpu")],
    expected_failed_checks=lambda _estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    check(estimator)
