"""Late and learned fusion of an encoder ensemble (``--encoder a,b,c --fusion late|learned``).

The ensemble's embeddings are its members' L2-normalised embeddings side by side
(:class:`kenner.encoders.embedder.EnsembleEmbedder`). ``concat`` fits the method on all of them at once and
needs nothing here; ``late`` fits the method once per encoder, on that encoder's block, and averages the class
probabilities; ``learned`` weights them instead, the weights (on the simplex) minimising the log-loss of the
validation rows. Saved in a run's ``model/`` folder as ``member_<i>/`` (each member's own files) and
``fusion.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.evaluate.report import format_number, markdown_table
from kenner.io import atomic_write_json, read_json
from kenner.methods.base import SPLITS, Extras, FitContext, Method, Prediction, Predictor, Samples, TaskData
from kenner.methods.registry import METHODS

FUSIONS = ("concat", "late", "learned")
FUSION_FILE = "fusion.json"


def block_samples(samples: Samples, start: int, stop: int) -> Samples:
    """``samples`` with only columns ``start:stop`` of every view's embeddings (one encoder's block)."""
    per_view = {view: matrix[:, start:stop] for view, matrix in samples.per_view().items()}
    return Samples(samples.ids, samples.paths, embedder=None, views=samples.views).with_embeddings(per_view)


def ensemble_blocks(data: TaskData) -> list[TaskData]:
    """``data`` once per encoder of its ensemble, each with only that encoder's block of the embeddings."""
    ends = np.cumsum(data.samples.embedder.dims)
    return [
        dataclasses.replace(data, samples=block_samples(data.samples, int(end - dim), int(end)))
        for end, dim in zip(ends, data.samples.embedder.dims, strict=True)
    ]


def fit_fusion_weights(scores: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Weights on the simplex for averaging the members' class probabilities that minimise the log-loss of
    ``y`` (equal weights when there is nothing to fit on)."""
    if len(y) == 0:
        return np.full(len(scores), 1.0 / len(scores))
    picked = np.stack([member[np.arange(len(y)), y] for member in scores])  # [members, rows]

    def loss(theta: np.ndarray) -> float:
        return float(-np.mean(np.log(np.clip(softmax(theta) @ picked, 1e-12, None))))

    result = minimize(loss, np.zeros(len(scores)), method="L-BFGS-B")
    return softmax(result.x)


class FusedPredictor(Predictor):
    """One predictor per encoder of the ensemble; class probabilities averaged with ``weights``."""

    def __init__(
        self,
        members: list[Predictor],
        *,
        method: str,
        fusion: str,
        encoders: list[str],
        dims: list[int],
        weights: np.ndarray,
        class_names: list[str],
    ) -> None:
        self.members = members
        self.method = method
        self.fusion = fusion
        self.encoders = list(encoders)
        self.dims = [int(d) for d in dims]
        self.weights = np.asarray(weights, dtype=np.float64)
        self.class_names = list(class_names)
        self.history = []

    @property
    def bounds(self) -> list[tuple[int, int]]:
        ends = np.cumsum(self.dims)
        return [(int(end - dim), int(end)) for end, dim in zip(ends, self.dims, strict=True)]

    def member_scores(self, samples: Samples, *, leave_one_out: bool = False) -> list[np.ndarray]:
        """Each member's class scores for ``samples`` (from its own encoder's block)."""
        return [
            member.predict(block_samples(samples, start, stop), leave_one_out=leave_one_out).scores
            for member, (start, stop) in zip(self.members, self.bounds, strict=True)
        ]

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        scores = self.member_scores(samples, leave_one_out=leave_one_out)
        return Prediction.from_proba(np.tensordot(self.weights, np.stack(scores), axes=1))

    def summary(self) -> dict[str, Any]:
        return {
            "fusion": self.fusion,
            "fusion weights": ", ".join(
                f"{encoder} {w:.3f}" for encoder, w in zip(self.encoders, self.weights, strict=True)
            ),
        }

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        """Each encoder's own accuracy per split beside its fusion weight."""
        scores = self.member_scores(data.samples, leave_one_out=True)
        rows, metrics = [], {}
        for encoder, weight, member in zip(self.encoders, self.weights, scores, strict=True):
            accuracy = {
                name: float((member[data.mask(name)].argmax(1) == data.y[data.mask(name)]).mean())
                for name in SPLITS
                if data.mask(name).any()
            }
            for name, value in accuracy.items():
                metrics.setdefault(name, {})[f"accuracy@{encoder}"] = value
            rows.append([encoder, format_number(weight), *(format_number(accuracy.get(s)) for s in SPLITS)])
        text = (
            f"{self.fusion} fusion of {len(self.encoders)} encoders, one {self.method} model each on its "
            "L2-normalised embeddings; class probabilities averaged with these weights"
            + (" (fitted on val)" if self.fusion == "learned" else "")
            + ". Accuracy of each encoder alone:\n\n"
            + markdown_table(["encoder", "weight", *(f"{s} accuracy" for s in SPLITS)], rows)
        )
        return Extras(metrics=metrics, sections=[("Encoder ensemble", text)])

    def save(self, directory: Path) -> None:
        for index, member in enumerate(self.members):
            member.save(directory / f"member_{index}")
        atomic_write_json(
            directory / FUSION_FILE,
            {
                "method": self.method,
                "fusion": self.fusion,
                "encoders": self.encoders,
                "dims": self.dims,
                "weights": self.weights.tolist(),
            },
        )

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> FusedPredictor:
        settings = read_json(directory / FUSION_FILE)
        member_type = METHODS.get(settings["method"]).load().predictor
        members = [
            member_type.load(directory / f"member_{i}", class_names=class_names, device=device)
            for i in range(len(settings["encoders"]))
        ]
        return cls(
            members,
            method=settings["method"],
            fusion=settings["fusion"],
            encoders=settings["encoders"],
            dims=settings["dims"],
            weights=np.asarray(settings["weights"]),
            class_names=class_names,
        )


class FusedMethod(Method):
    """``method`` fitted once per encoder of the ensemble, fused late (equal weights) or learned (on val)."""

    predictor = FusedPredictor

    def __init__(self, method: Method, *, name: str, fusion: str) -> None:
        if fusion not in FUSIONS[1:]:
            raise KennerError(f"unknown fusion {fusion!r} for one model per encoder; use late or learned")
        self.method = method
        self.name = name
        self.fusion = fusion

    def task(self, data: TaskData, cfg: RunConfig) -> TaskData:
        return self.method.task(data, cfg)

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> FusedPredictor:
        embedder = data.samples.embedder
        if embedder is None or len(embedder.dims) < 2:
            raise KennerError(f"--fusion {self.fusion} fuses an encoder ensemble; pass --encoder a,b[,c...]")
        predictor = FusedPredictor(
            [],
            method=self.name,
            fusion=self.fusion,
            encoders=embedder.specs,
            dims=embedder.dims,
            weights=np.full(len(embedder.dims), 1.0 / len(embedder.dims)),
            class_names=data.class_names,
        )
        for start, stop in predictor.bounds:
            part = dataclasses.replace(data, samples=block_samples(data.samples, start, stop))
            predictor.members.append(self.method.fit(part, cfg, context))
        val, y_val = data.part("val")
        if self.fusion == "learned" and len(val):
            predictor.weights = fit_fusion_weights(predictor.member_scores(val), y_val)
        return predictor


def fused_method(method: Method, *, name: str, encoder: str, fusion: str) -> Method:
    """``method`` as the run fits it: itself for one encoder or ``concat`` fusion, else a :class:`FusedMethod`."""
    if "," not in encoder or fusion == "concat":
        return method
    return FusedMethod(method, name=name, fusion=fusion)


def load_model_predictor(method: str, directory: Path, *, class_names: list[str], device: str = "auto") -> Predictor:
    """The predictor saved in ``directory`` (a run's ``model/``): a fused one when ``fusion.json`` is there."""
    kind = FusedPredictor if (directory / FUSION_FILE).is_file() else METHODS.get(method).load().predictor
    return kind.load(directory, class_names=class_names, device=device)
