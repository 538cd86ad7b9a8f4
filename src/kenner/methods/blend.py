"""``blend``: a head's class probabilities blended with a kNN vote, ``α·head + (1 − α)·kNN``, α chosen on val.

After Tip-Adapter (Zhang et al. 2022) and Jia et al. 2021: a linear probe and a cache of the training
embeddings make different mistakes, and a mix of the two is often better than either. The head is the one
``linear``/``mlp``/``arcface`` fit (:mod:`kenner.methods.head`), the vote the one ``knn`` casts over a Faiss
gallery of the training rows (:mod:`kenner.methods.gallery`). α runs over 0, 0.1, …, 1; the one with the
best validation accuracy wins (ties: the lower validation log-loss). Saved in a run's ``model/`` folder as
``head/``, ``knn/`` and ``blend.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.evaluate.report import format_number, markdown_table
from kenner.io import atomic_write_json, read_json
from kenner.methods.base import Extras, FitContext, Method, Prediction, Predictor, Samples, TaskData
from kenner.methods.gallery import GalleryPredictor
from kenner.methods.head import HeadMethod, HeadPredictor

ALPHAS = tuple(round(0.1 * step, 1) for step in range(11))
BLEND_FILE = "blend.json"


def choose_alpha(head: np.ndarray, knn: np.ndarray, y: np.ndarray) -> tuple[float, list[dict[str, float]]]:
    """The α of :data:`ALPHAS` whose blend has the best accuracy on ``y`` (ties: lowest log-loss), and every
    α's figures; α = 0.5 without rows to choose on."""
    if len(y) == 0:
        return 0.5, []
    table = []
    for alpha in ALPHAS:
        proba = alpha * head + (1 - alpha) * knn
        accuracy = float((proba.argmax(1) == y).mean())
        log_loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
        table.append({"alpha": alpha, "accuracy": accuracy, "log_loss": log_loss})
    best = max(table, key=lambda row: (row["accuracy"], -row["log_loss"]))
    return best["alpha"], table


class BlendPredictor(Predictor):
    """A head and a kNN gallery; scores ``alpha · head + (1 − alpha) · kNN vote``."""

    def __init__(
        self,
        head: HeadPredictor,
        knn: GalleryPredictor,
        alpha: float,
        class_names: list[str],
        table: list[dict[str, float]] | None = None,
    ) -> None:
        self.head = head
        self.knn = knn
        self.alpha = float(alpha)
        self.class_names = list(class_names)
        self.table = table or []
        self.history = head.history

    def parts(self, samples: Samples, *, leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The head's probabilities and the kNN vote for ``samples``."""
        return self.head.predict(samples).scores, self.knn.predict(samples, leave_one_out=leave_one_out).scores

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        head, knn = self.parts(samples, leave_one_out=leave_one_out)
        return Prediction.from_proba(self.alpha * head + (1 - self.alpha) * knn)

    def summary(self) -> dict[str, Any]:
        return {"alpha (head share)": self.alpha, **self.head.summary(), **self.knn.summary()}

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        extras = self.head.extras(data, prediction, out_dir)
        if self.table:
            rows = [
                [format_number(r["alpha"]), format_number(r["accuracy"]), format_number(r["log_loss"])]
                for r in self.table
            ]
            text = (
                f"Scores are α·head + (1 − α)·kNN vote; α = {self.alpha:g} has the best validation accuracy "
                "(ties: lowest log-loss).\n\n" + markdown_table(["α", "val accuracy", "val log-loss"], rows)
            )
            extras.sections.append(("Blend of head and kNN", text))
        return extras

    def save(self, directory: Path) -> None:
        self.head.save(directory / "head")
        self.knn.save(directory / "knn")
        atomic_write_json(directory / BLEND_FILE, {"alpha": self.alpha, "validation": self.table})

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> BlendPredictor:
        settings = read_json(directory / BLEND_FILE)
        head = HeadPredictor.load(directory / "head", class_names=class_names, device=device)
        knn = GalleryPredictor.load(directory / "knn", class_names=class_names, device=device)
        return cls(head, knn, settings["alpha"], class_names, settings["validation"])


class BlendMethod(Method):
    """Fit the head, build the gallery, choose α on the validation rows."""

    predictor = BlendPredictor

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> BlendPredictor:
        head = HeadMethod().fit(data, cfg, context)
        knn = GalleryPredictor.build(data, cfg, projection=None)
        val, y_val = data.part("val")
        predictor = BlendPredictor(head, knn, 0.5, data.class_names)
        if len(val):
            predictor.alpha, predictor.table = choose_alpha(*predictor.parts(val, leave_one_out=True), y_val)
        return predictor
