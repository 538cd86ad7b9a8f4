"""A linear probe: a linear head fitted on embeddings, returned as ``(weight, bias)`` on the raw embeddings
(the standardisation folded in), to start or replace another network's linear head."""

from __future__ import annotations

import numpy as np

from kenner.heads.classifier import EmbeddingClassifier


def linear_probe(
    X: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    seed: int = 0,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [C, D], bias [C])`` with ``X @ weight.T + bias`` the logits of a linear head (the default head
    settings on centred rows, uncalibrated) fitted on ``X`` (``y`` in ``0..n_classes-1``), early-stopped on val."""
    # centred, not scaled: folding a per-dimension scale back into raw weights makes them huge on near-constant
    # dimensions, and fine-tuning from such a head wrecked the backbone (bench/bench_finetune.py)
    probe = EmbeddingClassifier("linear", standardize="center", calibrate=False, seed=seed, device=device)
    has_val = X_val is not None and y_val is not None and len(X_val) > 0
    probe.fit(X, y, X_val=X_val if has_val else None, y_val=y_val if has_val else None, classes=np.arange(n_classes))
    layer = probe.model_.classifier
    weight = layer.weight.detach().cpu().numpy() / probe.scale_[None, :]
    bias = layer.bias.detach().cpu().numpy() - weight @ probe.mean_
    return weight.astype(np.float32), bias.astype(np.float32)
