"""``linear``, ``mlp`` and ``arcface``: a head (:class:`kenner.heads.EmbeddingClassifier`) on the cached
embeddings, with every long-tail knob of the ``head`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.evaluate.calibration import calibration_markdown, calibration_summary
from kenner.heads import EmbeddingClassifier, head_params
from kenner.methods.base import Extras, FitContext, Method, Prediction, Predictor, Samples, TaskData


class HeadPredictor(Predictor):
    """A fitted head; its probabilities are temperature-scaled when the head was calibrated."""

    def __init__(self, head: EmbeddingClassifier, class_names: list[str]) -> None:
        self.head = head
        self.class_names = list(class_names)
        self.history = head.history_

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        return Prediction.from_proba(self.head.predict_proba(samples.features()))

    def summary(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"best epoch": self.head.best_epoch_, "head fit s": round(self.head.fit_seconds_, 2)}
        if self.head.calibrate:
            facts["temperature"] = round(float(self.head.temperature_), 4)
        return facts

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        if not self.head.calibrate:
            return Extras()
        logits = self.head.logits(data.samples.features())
        summaries = {
            name: calibration_summary(logits[data.mask(name)], data.y[data.mask(name)], self.head.temperature_)
            for name in ("val", "test")
            if data.mask(name).any()
        }
        metrics = {
            name: {"ece_uncalibrated": s["ece_before"], "temperature": s["temperature"]}
            for name, s in summaries.items()
        }
        return Extras(
            metrics=metrics, sections=[("Calibration (temperature scaling)", calibration_markdown(summaries))]
        )

    def save(self, directory: Path) -> None:
        self.head.save(directory)

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> HeadPredictor:
        return cls(EmbeddingClassifier.load(directory), class_names)


class HeadMethod(Method):
    predictor = HeadPredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> HeadPredictor:
        train, y_train = data.part("train")
        val, y_val = data.part("val")
        head = EmbeddingClassifier(**head_params(cfg))
        has_val = len(val) > 0
        features = train.features()
        head.fit(
            features,
            y_train,
            X_val=val.features() if has_val else None,
            y_val=y_val if has_val else None,
            classes=np.arange(data.n_classes),
            init=zero_shot_init(data, cfg, features) if _start(cfg) == "zeroshot" else None,
        )
        return HeadPredictor(head, data.class_names)


def zero_shot_init(data: TaskData, cfg: RunConfig, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A linear head's starting ``(weight, bias)`` on raw embeddings from the zero-shot classifier.

    Zero-shot logits are ``s * normalise(x P) . w_c``; a linear map cannot normalise, so ``x P`` is divided by
    the median norm of the training rows instead: the same argmax for every row, about the same scale.
    """
    from kenner.methods.zeroshot import zero_shot_classifier

    if cfg["head_type"] != "linear":
        raise KennerError("--init zeroshot starts a linear head (--head-type linear)")
    classifier, _ = zero_shot_classifier(data, cfg)
    projection = classifier.projection if classifier.projection is not None else np.eye(classifier.weights.shape[1])
    if features.shape[1] != projection.shape[0]:
        raise KennerError(
            f"--init zeroshot: the head's input has {features.shape[1]} dims, the zero-shot classifier "
            f"{projection.shape[0]}; use one view (--views NAME) or --views avg"
        )
    norm = float(np.median(np.linalg.norm(features @ projection, axis=1))) or 1.0
    weight = (classifier.logit_scale / norm) * (classifier.weights @ projection.T)
    return weight.astype(np.float32), np.zeros(len(weight), dtype=np.float32)


def _start(cfg: RunConfig) -> str:
    if cfg["init"] == "probe":
        raise KennerError("--init probe starts a fine-tuned head from a linear probe; this head is one already")
    return cfg["init"]
