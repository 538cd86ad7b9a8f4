"""``finetune``: the encoder's backbone trained with a head on the images (:mod:`kenner.train`).

The only method that reads pixels every epoch: it checkpoints every epoch into ``RUN/checkpoints/`` and a
rerun resumes from there. Its predictions go through the same driver as every other method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kenner.config.tree import RunConfig
from kenner.methods.base import FitContext, Method, Prediction, Predictor, Samples, TaskData
from kenner.train.finetune import FinetunedModel, fit_finetune


class FinetunePredictor(Predictor):
    """The fine-tuned network (best epoch's weights, model or EMA)."""

    def __init__(self, model: FinetunedModel, class_names: list[str]) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.history = model.history

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        return Prediction.from_proba(self.model.predict_proba(samples.paths))

    def summary(self) -> dict[str, Any]:
        return self.model.summary()

    def save(self, directory: Path) -> None:
        self.model.save(directory)

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> FinetunePredictor:
        return cls(FinetunedModel.load(directory, device=device), class_names)


class FinetuneMethod(Method):
    predictor = FinetunePredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> FinetunePredictor:
        model = fit_finetune(
            data.samples.paths,
            data.y,
            data.split,
            data.class_names,
            cfg,
            out_dir=context.out_dir,
            resume=context.resume,
            fresh=context.fresh,
            on_epoch=context.on_epoch,
        )
        return FinetunePredictor(model, data.class_names)
