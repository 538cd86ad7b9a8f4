"""Heads on cached embeddings, as scikit-learn estimators: :class:`EmbeddingClassifier` (linear, mlp and
arcface heads), :class:`~kenner.heads.projection.ProjectionHead` (metric learning) and batched training of
many heads at once (:func:`~kenner.heads.multihead.fit_multihead`)."""

from __future__ import annotations

from kenner.heads.classifier import EmbeddingClassifier, head_params
from kenner.heads.persist import load_head, save_head

__all__ = ["EmbeddingClassifier", "head_params", "load_head", "save_head"]
