"""Likely label errors: cleanlab's ``find_label_issues`` on out-of-fold predicted probabilities.

The probabilities come from a multinomial logistic regression on the standardised embeddings, fitted once per
fold of a group-aware stratified K-fold (scikit-learn's ``StratifiedGroupKFold``), so that no sample, and no
photo of the same object, is scored by a model that saw it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from kenner.errors import KennerError


@dataclass(frozen=True)
class LabelIssues:
    """Rows whose given label is likely wrong, most likely first, with the label the folds suggest instead."""

    rows: np.ndarray  # int64 sample rows, ranked
    suggested: np.ndarray  # int64 class index per ranked row
    quality: np.ndarray  # float: out-of-fold probability of the given label (low = likely wrong)


def out_of_fold_proba(
    features: np.ndarray, y: np.ndarray, groups: Sequence[str], *, folds: int = 5, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """[N, C] probabilities of each row from a linear head that did not see its group (``C`` = ``y.max() + 1``)."""
    y = np.asarray(y)
    n_classes = int(y.max()) + 1
    n_groups = len(set(groups))
    k = min(folds, n_groups)
    if k < 2:
        raise KennerError(f"out-of-fold predictions need at least 2 groups; the dataset has {n_groups}")
    proba = np.zeros((len(y), n_classes))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer groups than folds is expected in small collections
        warnings.simplefilter("ignore", UserWarning)
        fold_rows = list(splitter.split(features, y, groups))
    with threadpool_limits(1):  # small fits: BLAS threads cost more than they give, and thrash on a busy machine
        for train, held_out in fold_rows:
            _fit_fold(features, y, train, held_out, proba, c)
    return proba


def _fit_fold(
    features: np.ndarray, y: np.ndarray, train: np.ndarray, held_out: np.ndarray, proba: np.ndarray, c: float
) -> None:
    """Fill ``proba[held_out]`` from a logistic regression fitted on ``train``."""
    present = np.unique(y[train])
    if len(present) == 1:
        proba[np.ix_(held_out, present)] = 1.0
        return
    scaler = StandardScaler().fit(features[train])
    model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: the ranking, not the last digit, matters here
        model.fit(scaler.transform(features[train]), y[train])
    proba[np.ix_(held_out, model.classes_)] = model.predict_proba(scaler.transform(features[held_out]))


def label_issues(y: np.ndarray, proba: np.ndarray) -> LabelIssues:
    """cleanlab's label issues of ``y`` given out-of-fold ``proba``, ranked by self-confidence."""
    y = np.asarray(y, dtype=np.int64)
    proba = np.clip(proba, 1e-6, None)
    proba = proba / proba.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = np.asarray(
            find_label_issues(labels=y, pred_probs=proba, return_indices_ranked_by="self_confidence", n_jobs=1),
            dtype=np.int64,
        )
    return LabelIssues(rows, proba[rows].argmax(axis=1).astype(np.int64), proba[rows, y[rows]])
