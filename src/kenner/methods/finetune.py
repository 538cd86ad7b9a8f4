"""``finetune``: the encoder's backbone trained with a head on the images (:mod:`kenner.train`).

The only method that reads pixels every epoch: it checkpoints every epoch into ``RUN/checkpoints/`` and a
rerun resumes from there. Its predictions go through the same driver as every other method.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.heads.probe import linear_probe
from kenner.methods.base import FitContext, Method, Prediction, Predictor, Samples, TaskData
from kenner.methods.head import zero_shot_init
from kenner.train.finetune import FinetunedModel, fit_finetune

log = logging.getLogger(__name__)


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
            head_init=head_start(data, cfg),
        )
        return FinetunePredictor(model, data.class_names)


def head_start(data: TaskData, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The fine-tuned head's starting ``(weight, bias)`` on the raw embeddings: a linear probe fitted on the
    cached embeddings (LP-FT, Kumar et al. 2022: seconds, instead of frozen epochs over the pixels), the
    zero-shot classifier, or None (random)."""
    if cfg["init"] == "random":
        return None
    if cfg["head_type"] != "linear":
        raise KennerError(f"--init {cfg['init']} starts a linear head; use --head-type linear")
    native = data.samples.embedder.encoder.preprocessing.size if data.samples.embedder is not None else None
    if cfg["img_size"] is not None and native is not None and cfg["img_size"] != native:
        log.warning(
            "--init %s: the head starts from embeddings at the encoder's %d px, fine-tuning runs at %d px "
            "(--img-size): the start fits less well",
            cfg["init"],
            native,
            cfg["img_size"],
        )
    train, y_train = data.part("train")
    features = train.features()
    if cfg["init"] == "zeroshot":
        return zero_shot_init(data, cfg, features)
    val, y_val = data.part("val")
    has_val = len(val) > 0
    return linear_probe(
        features,
        y_train,
        data.n_classes,
        X_val=val.features() if has_val else None,
        y_val=y_val if has_val else None,
        seed=cfg["seed"],
        device=cfg["device"],
    )
