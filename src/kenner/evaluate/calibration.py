"""Calibration: is a head's confidence (its top probability) as high as its accuracy? ECE, reliability bins,
and what a fitted softmax temperature buys (for a run's report)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_softmax

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


def calibration_summary(logits: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, float]:
    """ECE and NLL of ``softmax(logits)`` (before) and ``softmax(logits / temperature)`` (after).

    ``logits`` [N, C] are the ones predictions come from (a head's ``logits(X)``, after any inference-time
    logit adjustment); ``y`` are class indices. Keys: ``temperature``, ``n``, ``ece_before``, ``ece_after``,
    ``nll_before``, ``nll_after``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    summary: dict[str, float] = {"temperature": float(temperature), "n": len(y)}
    for when, scaled in (("before", logits), ("after", logits / temperature)):
        log_proba = log_softmax(scaled, axis=1)
        summary[f"ece_{when}"] = expected_calibration_error(np.exp(log_proba), y)
        summary[f"nll_{when}"] = float(-log_proba[np.arange(len(y)), y].mean())
    return summary


def calibration_markdown(summaries: dict[str, dict[str, float]]) -> str:
    """A report section: the temperature, then ECE and NLL before/after per split."""
    if not summaries:
        return "No validation or test rows to measure calibration on.\n"
    temperature = next(iter(summaries.values()))["temperature"]
    lines = [
        f"Temperature T = {temperature:.4g}, fitted on the validation split (argmax unchanged).",
        "",
        "| split | n | ECE before | ECE after | NLL before | NLL after |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        nll = [f"{s[k]:.4f}" if math.isfinite(s[k]) else "inf" for k in ("nll_before", "nll_after")]
        lines.append(f"| {name} | {s['n']} | {s['ece_before']:.4f} | {s['ece_after']:.4f} | {nll[0]} | {nll[1]} |")
    return "\n".join(lines) + "\n"
