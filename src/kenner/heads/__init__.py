"""Heads on cached embeddings: sklearn-style estimators, created by name.

``create_head("mlp", hidden_sizes=(768, 384), mixup=0.1)`` returns an :class:`EmbeddingClassifier`
whose :class:`HeadConfig` has that ``head_type`` and those knobs.
"""

from __future__ import annotations

from functools import partial

from sklearn.base import BaseEstimator

from kenner.heads.classifier import EmbeddingClassifier
from kenner.heads.config import HEAD_TYPES, HeadConfig
from kenner.heads.persist import load_head, save_head
from kenner.registry import Registry

HEADS: Registry[BaseEstimator] = Registry("head")
for _name in HEAD_TYPES:
    HEADS.register(_name)(partial(EmbeddingClassifier, head_type=_name))


def create_head(head_type: str, **params) -> BaseEstimator:
    """An unfitted head estimator; ``params`` are HeadConfig fields."""
    return HEADS.create(head_type, **params)


__all__ = ["HEADS", "EmbeddingClassifier", "HeadConfig", "create_head", "load_head", "save_head"]
