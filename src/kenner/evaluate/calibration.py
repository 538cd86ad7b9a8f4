"""Calibration: is a head's confidence (its top probability) as high as its accuracy?"""

from __future__ import annotations

import numpy as np

from kenner.errors import KennerError


def calibration_bins(
    proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability in ``n_bins`` equal-width confidence bins (lo, hi] (the first holds 0).

    Returns (mean confidence, accuracy, count) per bin; empty bins have confidence and accuracy 0.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true)
    if proba.ndim != 2 or y_true.shape != (proba.shape[0],):
        raise KennerError(f"proba must be [n, classes] and y_true [n], got {proba.shape} and {y_true.shape}")
    if n_bins < 1:
        raise KennerError(f"n_bins must be >= 1, got {n_bins}")
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    index = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins)
    safe = np.maximum(count, 1)
    mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / safe
    accuracy = np.bincount(index, weights=correct, minlength=n_bins) / safe
    return mean_confidence, accuracy, count


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (bin share of samples) * |accuracy - mean confidence|."""
    mean_confidence, accuracy, count = calibration_bins(proba, y_true, n_bins)
    if count.sum() == 0:
        raise KennerError("no samples to compute the calibration error on")
    return float(np.sum(count / count.sum() * np.abs(accuracy - mean_confidence)))
