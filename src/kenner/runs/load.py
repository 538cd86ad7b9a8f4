"""Load any finished run: ``load_predictor(run_dir)`` is the one way predict, evaluate, search and the server
get a run's predictor, its decision rules and the encoder that embeds new images the way the run did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.sections import ComputeConfig, EncoderConfig
from kenner.encoders.embedder import AnyEmbedder, make_embedder
from kenner.methods import METHODS
from kenner.methods.base import Prediction, Predictor, Samples
from kenner.methods.fusion import load_model_predictor
from kenner.methods.registry import MethodSpec
from kenner.runs.decide import Decider
from kenner.runs.folder import MODEL_DIR, read_model_info


@dataclass
class Answers:
    """A prediction with the run's decisions applied."""

    prediction: Prediction
    predicted: np.ndarray
    accepted: np.ndarray


@dataclass
class RunModel:
    """A trained run: its predictor, decision rules and embedder (None when the method reads pixels)."""

    run_dir: Path
    info: dict[str, Any]
    spec: MethodSpec
    predictor: Predictor
    decider: Decider
    embedder: AnyEmbedder | None

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def input_views(self) -> list[str]:
        """The views each query item needs."""
        return list(self.info["input_views"])

    def samples(self, ids: list[str], paths: list[dict[str, Path]]) -> Samples:
        """Query items as samples, embedded (when needed) exactly as the run embedded its data."""
        return Samples(ids, paths, embedder=self.embedder, views=self.info["views"])

    def answer(self, samples: Samples, *, leave_one_out: bool = False) -> Answers:
        """Scores and the run's decisions (binary threshold, reject rule) for ``samples``."""
        prediction = self.predictor.predict(samples, leave_one_out=leave_one_out)
        return Answers(prediction, self.decider.predicted(prediction), self.decider.accepted(prediction))


def load_predictor(run_dir: str | Path, *, cache_dir: str | None = None, device: str = "auto") -> RunModel:
    """The run in ``run_dir`` (a finished run folder, or one ``fold_i`` of a k-fold run)."""
    run_dir = Path(run_dir)
    info = read_model_info(run_dir)
    spec = METHODS.get(info["method"])
    predictor = load_model_predictor(spec.name, run_dir / MODEL_DIR, class_names=info["class_names"], device=device)
    embedder = None
    if info.get("fingerprint"):
        encoder = EncoderConfig(
            encoder=info["encoder"],
            weights=info["weights"],
            pooling=info["pooling"],
            views=info["views"],
            cache_dir=cache_dir,
            backend=info["backend"],
        )
        embedder = make_embedder(
            encoder, ComputeConfig(device=device), background=info["background_color"], fingerprint=info["fingerprint"]
        )
    return RunModel(run_dir, info, spec, predictor, Decider.from_dict(info["decision"], info["class_names"]), embedder)
