"""The zero-shot classifier: cosine similarity of image embeddings to one text embedding per class.

``weights`` [C, D] are the normalised prompt embeddings averaged per class (and normalised again);
image embeddings are projected (``projection`` [D_image, D], if any) and L2-normalised; logits are
``logit_scale * cos + logit_bias``; scores are a softmax (CLIP) or a sigmoid per class (SigLIP, which
has a bias). Several views of a sample are averaged after normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kenner.io import atomic_write_bytes, atomic_write_json

ARRAYS = "zeroshot.npz"
INFO = "zeroshot.json"


@dataclass
class ZeroShotClassifier:
    """Fixed class embeddings; nothing is trained."""

    weights: np.ndarray
    projection: np.ndarray | None
    logit_scale: float
    logit_bias: float | None

    @property
    def sigmoid(self) -> bool:
        return self.logit_bias is not None

    def image_features(self, views: list[np.ndarray]) -> np.ndarray:
        """Normalised joint-space image features [N, D]: each view projected and normalised, then averaged."""
        total = 0.0
        for matrix in views:
            features = np.asarray(matrix, dtype=np.float32)
            if self.projection is not None:
                features = features @ self.projection
            total = total + _unit(features)
        return _unit(total / len(views))

    def logits(self, views: list[np.ndarray]) -> np.ndarray:
        cosine = self.image_features(views) @ self.weights.T
        return self.logit_scale * cosine + (self.logit_bias or 0.0)

    def predict_proba(self, views: list[np.ndarray]) -> np.ndarray:
        """Scores [N, C] float64: softmax over classes, or an independent sigmoid per class (SigLIP)."""
        logits = self.logits(views).astype(np.float64)
        if self.sigmoid:
            return 1.0 / (1.0 + np.exp(-logits))
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        arrays = {"weights": self.weights}
        if self.projection is not None:
            arrays["projection"] = self.projection
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def info(self) -> dict:
        return {"logit_scale": self.logit_scale, "logit_bias": self.logit_bias}

    def save(self, directory: Path) -> None:
        atomic_write_bytes(directory / ARRAYS, self.to_bytes())
        atomic_write_json(directory / INFO, self.info())

    @classmethod
    def from_files(cls, arrays: Path, info: dict) -> ZeroShotClassifier:
        with np.load(arrays) as loaded:
            projection = loaded["projection"] if "projection" in loaded.files else None
            return cls(loaded["weights"], projection, float(info["logit_scale"]), info.get("logit_bias"))

    @classmethod
    def load(cls, directory: Path) -> ZeroShotClassifier:
        return cls.from_files(directory / ARRAYS, json.loads((directory / INFO).read_text(encoding="utf-8")))


def _unit(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
