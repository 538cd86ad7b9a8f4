"""``zeroshot``: CLIP / SigLIP zero-shot classification of the cached image embeddings by prompts.

Nothing is trained: each class's prompts (templates filled with its display name) are embedded by the
encoder's text tower, normalised and averaged (as open_clip's ``build_zero_shot_classifier`` does), and
an image gets the class whose text embedding is closest. The class embeddings are cached under
``CACHE/text/`` by a fingerprint of the model (image and text weights), the spec and every prompt, so a rerun or
another split does not run the text tower again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.encoders.prompts import display_names, prompts_per_class
from kenner.encoders.views import resolve_mode
from kenner.errors import KennerError
from kenner.heads.zeroshot import ARRAYS, INFO, ZeroShotClassifier
from kenner.methods.base import FitContext, Method, Prediction, Predictor, Samples, TaskData
from kenner.progress import progress_bar

TEXT_CACHE = "text"


def zero_shot_classifier(data: TaskData, cfg: RunConfig) -> tuple[ZeroShotClassifier, dict[str, Any]]:
    """The zero-shot classifier of ``data``'s classes with ``cfg``'s encoder, names and templates (cached)."""
    embedder = data.samples.embedder
    if embedder is None:
        raise KennerError("zero-shot needs the run's encoder")
    names = display_names(data.class_names, cfg["class_names"])
    prompts = prompts_per_class(data.class_names, names, cfg["templates"])
    from kenner.encoders.text import load_text_tower, text_weights_id

    encoder = embedder.encoder
    model = [cfg.encoder.encoder, encoder.fingerprint, text_weights_id(cfg.encoder.encoder, encoder)]
    key = hashlib.sha256(json.dumps([*model, prompts]).encode()).hexdigest()[:16]
    folder = embedder.cache_dir / TEXT_CACHE / key
    facts: dict[str, Any] = {"prompts per class": round(float(np.mean([len(p) for p in prompts])), 1)}
    if (folder / ARRAYS).is_file() and (folder / INFO).is_file():
        classifier = ZeroShotClassifier.load(folder)
        facts["text embeddings"] = "cached"
    else:
        started = time.perf_counter()
        tower = load_text_tower(cfg.encoder.encoder, encoder, weights=cfg.encoder.weights)
        rows = []
        with progress_bar(total=len(prompts), desc="class prompts", unit="class") as bar:
            for class_prompts in prompts:
                mean = tower.encode(class_prompts).mean(axis=0)
                rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
                bar.update(1)
        classifier = ZeroShotClassifier(np.stack(rows), tower.projection, tower.logit_scale, tower.logit_bias)
        classifier.save(folder)
        facts["text embeddings"] = f"computed in {time.perf_counter() - started:.1f} s"
    expected = classifier.projection.shape[0] if classifier.projection is not None else classifier.weights.shape[1]
    if encoder.dim != expected:
        raise KennerError(f"zero-shot: image embeddings of {encoder.dim} dims do not match the text tower ({expected})")
    facts["scores"] = "sigmoid (SigLIP)" if classifier.sigmoid else "softmax (CLIP)"
    return classifier, facts


def view_matrices(samples: Samples) -> list[np.ndarray]:
    """The view ``samples.views`` names, else every view (zero-shot averages views, even for ``concat``)."""
    per_view = samples.per_view()
    mode = resolve_mode(samples.view_names, samples.views)
    return [per_view[mode]] if mode in per_view else list(per_view.values())


class ZeroShotPredictor(Predictor):
    """Fixed class text embeddings."""

    def __init__(self, classifier: ZeroShotClassifier, class_names: list[str], facts: dict[str, Any]) -> None:
        self.classifier = classifier
        self.class_names = list(class_names)
        self.history: list[dict[str, Any]] = []
        self.facts = facts

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        if not len(samples):
            return Prediction.from_proba(np.zeros((0, len(self.class_names))))
        return Prediction.from_proba(self.classifier.predict_proba(view_matrices(samples)))

    def summary(self) -> dict[str, Any]:
        return dict(self.facts)

    def save(self, directory: Path) -> None:
        self.classifier.save(directory)

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> ZeroShotPredictor:
        return cls(ZeroShotClassifier.load(directory), class_names, {})


class ZeroShotMethod(Method):
    predictor = ZeroShotPredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> ZeroShotPredictor:
        classifier, facts = zero_shot_classifier(data, cfg)
        return ZeroShotPredictor(classifier, data.class_names, facts)
