"""``linear``, ``mlp`` and ``arcface``: a head (:class:`kenner.heads.EmbeddingClassifier`) on the cached
embeddings, with every long-tail knob of the ``head`` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
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
        head.fit(
            train.features(),
            y_train,
            X_val=val.features() if has_val else None,
            y_val=y_val if has_val else None,
            classes=np.arange(data.n_classes),
        )
        return HeadPredictor(head, data.class_names)
