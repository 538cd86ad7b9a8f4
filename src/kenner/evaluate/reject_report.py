"""The reject option in a run folder: tune on val, measure on every split, plot, and report.

Shared by classifier heads (signals from probabilities) and retrieval runs (signals from the gallery),
so every run can say "I don't know" and shows the coverage–accuracy curve it would trade along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kenner.errors import KennerError
from kenner.evaluate.plots import plot_curve
from kenner.evaluate.reject import RejectRule, coverage_accuracy_curve, evaluate_rule, tune_reject_rule
from kenner.evaluate.report import format_number, markdown_table
from kenner.io import atomic_write_json

SPLITS = ("train", "val", "test")


def tune_reject(
    distance: np.ndarray,
    margin: np.ndarray,
    correct: np.ndarray,
    split: np.ndarray,
    *,
    by: str,
    target_precision: float | None,
    target_coverage: float | None,
    out_dir: Path,
    signal_name: str = "distance",
) -> tuple[dict[str, Any], RejectRule | None]:
    """Tune a reject rule on val when a target is set; write reject.json and coverage_accuracy.png.

    ``distance`` (lower = surer) and ``margin`` (higher = surer) are per-row confidence signals;
    ``correct`` says whether each row's prediction is right; ``signal_name`` says what the distance is (the
    top-1 cosine distance, 1 − max probability). Returns the summary and the rule (or None).
    """
    signal = margin if by == "margin" else -distance  # "both": the curve of the distance
    tune_on = "val" if (split == "val").any() else None
    curve_split = tune_on or ("test" if (split == "test").any() else "train")
    curve = coverage_accuracy_curve(signal[split == curve_split], correct[split == curve_split])
    summary: dict[str, Any] = {"by": by, "curve_split": curve_split, "distance": signal_name}
    rule, marker = None, None
    if target_precision is not None or target_coverage is not None:
        if tune_on is None:
            raise KennerError("--target-precision/--target-coverage are tuned on val, and val is empty")
        mask = split == "val"
        rule, point = tune_reject_rule(
            distance[mask],
            margin[mask],
            correct[mask],
            by=by,
            target_precision=target_precision,
            target_coverage=target_coverage,
        )
        summary.update(
            rule=rule.to_dict(),
            target_precision=target_precision,
            target_coverage=target_coverage,
            val_operating_point=point.to_dict(),
        )
        summary["splits"] = {
            name: evaluate_rule(rule, distance[split == name], margin[split == name], correct[split == name])
            for name in SPLITS
            if (split == name).any()
        }
        marker = (point.coverage, point.precision)
    plot_curve(
        curve["coverage"],
        curve["accuracy"],
        out_dir / "coverage_accuracy.png",
        xlabel="coverage",
        ylabel="accuracy of accepted",
        title=f"Coverage–accuracy ({curve_split}, by {by})",
        marker_point=marker,
    )
    atomic_write_json(out_dir / "reject.json", summary)
    return summary, rule


def reject_markdown(summary: dict[str, Any]) -> str:
    """The report section: the curve, the tuned rule, and what it achieves on each split."""
    marked = "; the marked point is the tuned operating point" if "rule" in summary else ""
    text = [
        f"Coverage–accuracy curve on {summary['curve_split']} (signal: {summary['by']}{marked}):",
        "![coverage–accuracy](coverage_accuracy.png)",
    ]
    if "rule" not in summary:
        text.append("No target (`--target-precision` / `--target-coverage`): every prediction is accepted.")
        return "\n\n".join(text)
    point = summary["val_operating_point"]
    missed = "" if point["target_met"] else " (**target not reached on val**)"
    target = (
        f"target precision {summary['target_precision']}"
        if summary.get("target_precision") is not None
        else f"target coverage {summary['target_coverage']}"
    )
    rule = rule_text(summary["rule"], summary.get("distance", "distance"))
    text.append(
        f'Rule "{rule}" tuned on val for {target}: coverage '
        f"{point['coverage']:.3f}, precision {point['precision']:.3f}{missed}. "
        "Measured on each split with the same rule:"
    )
    header = ["split", "coverage", "precision (accepted)", "accuracy (all)", "accepted", "n"]
    rows = [
        [name, *(format_number(v[key]) for key in ("coverage", "precision", "accuracy_all")), v["n_accepted"], v["n"]]
        for name, v in summary["splits"].items()
    ]
    text.append(markdown_table(header, rows))
    return "\n\n".join(text)


def rule_text(rule: dict[str, float | None], distance_name: str = "distance") -> str:
    """A reject rule in words, e.g. ``unclassifiable when top-1 cosine distance > 0.1234``."""
    parts = []
    if rule.get("max_distance") is not None:
        parts.append(f"{distance_name} > {rule['max_distance']:.4g}")
    if rule.get("min_margin") is not None:
        parts.append(f"margin < {rule['min_margin']:.4g}")
    return "unclassifiable when " + " or ".join(parts) if parts else "accept everything"
