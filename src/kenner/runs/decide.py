"""How a run turns scores into answers, identically for every method: a binary threshold (``--pos-class``)
and the reject option ("unclassifiable"), both chosen on val, measured on every split, saved with the run and
applied again by ``predict``, ``evaluate``, ``search`` and the server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.sections import DecisionConfig
from kenner.errors import KennerError
from kenner.evaluate.binary import BinaryResult, binary_metrics, binary_predictions, choose_threshold
from kenner.evaluate.reject import RejectRule, evaluate_rule
from kenner.evaluate.reject_report import reject_markdown, rule_text, tune_reject
from kenner.evaluate.report import format_number, markdown_table
from kenner.methods.base import SPLITS, Prediction


@dataclass
class Decider:
    """The decision rules of a run: an optional binary threshold and an optional reject rule."""

    class_names: list[str]
    pos_class: str | None = None
    binary: BinaryResult | None = None
    reject: RejectRule | None = None

    @property
    def pos_index(self) -> int | None:
        return None if self.pos_class is None else self.class_names.index(self.pos_class)

    def predicted(self, prediction: Prediction) -> np.ndarray:
        """Class index per row: the top score, or the binary threshold's side."""
        if self.binary is None:
            return prediction.top1
        return binary_predictions(prediction.scores, self.pos_index, self.binary)

    def accepted(self, prediction: Prediction) -> np.ndarray:
        """Rows the reject rule accepts (all without a rule)."""
        if self.reject is None:
            return np.ones(len(prediction.scores), dtype=bool)
        return self.reject.accept(prediction.distance, prediction.margin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pos_class": self.pos_class,
            "threshold": None if self.binary is None else self.binary.threshold,
            "score_flipped": None if self.binary is None else self.binary.flipped,
            "reject": None if self.reject is None else self.reject.to_dict(),
        }

    @classmethod
    def from_dict(cls, info: dict[str, Any], class_names: list[str]) -> Decider:
        binary = None
        if info.get("threshold") is not None:
            binary = BinaryResult(
                auroc=math.nan, threshold=info["threshold"], f1=math.nan, flipped=bool(info["score_flipped"])
            )
        reject = RejectRule.from_dict(info["reject"]) if info.get("reject") else None
        return cls(class_names, pos_class=info.get("pos_class"), binary=binary, reject=reject)


@dataclass
class Decisions:
    """What tuning the decision rules on a run's own rows produced."""

    decider: Decider
    predicted: np.ndarray
    accepted: np.ndarray | None
    metrics: dict[str, dict[str, float]]
    sections: list[tuple[str, str]]


def tune_decisions(
    prediction: Prediction, y: np.ndarray, split: np.ndarray, class_names: list[str], cfg: DecisionConfig, out_dir: Path
) -> Decisions:
    """Choose the binary threshold and the reject rule on val; write reject.json and coverage_accuracy.png."""
    decider = Decider(class_names, pos_class=cfg.pos_class)
    metrics: dict[str, dict[str, float]] = {}
    if cfg.pos_class is not None:
        if cfg.pos_class not in class_names:
            raise KennerError(
                f"--pos-class {cfg.pos_class!r} is not a class of the run; classes: {', '.join(class_names[:20])}"
            )
        val = split == "val"
        decider.binary = (
            choose_threshold(y[val], prediction.scores[val], decider.pos_index)
            if val.any()
            else BinaryResult(auroc=math.nan, threshold=0.5, f1=math.nan, flipped=False)
        )
        metrics = {
            name: binary_metrics(y[split == name], prediction.scores[split == name], decider.pos_index, decider.binary)
            for name in SPLITS
            if (split == name).any()
        }
    predicted = decider.predicted(prediction)
    summary, decider.reject = tune_reject(
        prediction.distance,
        prediction.margin,
        predicted == y,
        split,
        by=cfg.reject_by,
        target_precision=cfg.target_precision,
        target_coverage=cfg.target_coverage,
        out_dir=out_dir,
        signal_name=prediction.distance_name,
    )
    accepted = decider.accepted(prediction) if decider.reject is not None else None
    for name, figures in summary.get("splits", {}).items():
        metrics.setdefault(name, {}).update(reject_coverage=figures["coverage"], reject_precision=figures["precision"])
    return Decisions(decider, predicted, accepted, metrics, [("Reject option", reject_markdown(summary))])


def measured_reject(
    decider: Decider, prediction: Prediction, predicted: np.ndarray, y: np.ndarray, split: np.ndarray
) -> tuple[dict[str, dict[str, float]], str]:
    """What the run's reject rule achieves on other rows (``kenner evaluate``): per split figures and a
    report section."""
    if decider.reject is None:
        return {}, "The run has no reject rule: every prediction is accepted."
    figures = {
        name: evaluate_rule(
            decider.reject,
            prediction.distance[split == name],
            prediction.margin[split == name],
            (predicted == y)[split == name],
        )
        for name in SPLITS
        if (split == name).any()
    }
    header = ["split", "coverage", "precision (accepted)", "accuracy (all)", "accepted", "n"]
    rows = [
        [name, *(format_number(v[key]) for key in ("coverage", "precision", "accuracy_all")), v["n_accepted"], v["n"]]
        for name, v in figures.items()
    ]
    text = f'The run\'s rule "{rule_text(decider.reject.to_dict(), prediction.distance_name)}", measured here:'
    return figures, f"{text}\n\n{markdown_table(header, rows)}"
