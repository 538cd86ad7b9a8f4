"""Per-class loss weights for long-tailed training data."""

from __future__ import annotations

import numpy as np


def _normalise(raw: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Zero the weight of absent classes and scale the rest to mean 1."""
    present = counts > 0
    weights = np.zeros(counts.shape, dtype=np.float64)
    if present.any():
        weights[present] = raw[present] / raw[present].mean()
    return weights


def _as_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative class counts")
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Weight ``1 / n_c`` per class, mean 1 over present classes; absent classes get 0."""
    counts = _as_counts(counts)
    return _normalise(1.0 / np.maximum(counts, 1.0), counts)


def effective_number_weights(counts: np.ndarray, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights of Cui et al. (2019): ``(1 - beta) / (1 - beta ** n_c)``.

    Mean 1 over present classes; absent classes get 0. ``beta -> 1`` approaches inverse frequency,
    ``beta = 0`` gives uniform weights.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _as_counts(counts)
    raw = np.zeros_like(counts)
    present = counts > 0
    raw[present] = 1.0 if beta == 0 else (1.0 - beta) / -np.expm1(counts[present] * np.log(beta))
    return _normalise(raw, counts)
