"""k-fold summaries: every metric's mean ± std over the ``fold_i/`` runs of a ``--folds K`` run."""

from __future__ import annotations

import numpy as np


def aggregate_folds(per_fold: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {metric: {mean, std, values}}}`` over folds (population std, ddof=0); numeric metrics only."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for split in per_fold[0]:
        keys = sorted(
            {
                key
                for fold in per_fold
                for key, value in fold.get(split, {}).items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            }
        )
        summary[split] = {}
        for key in keys:
            values = np.asarray(
                [fold[split][key] for fold in per_fold if fold.get(split, {}).get(key) is not None], float
            )
            summary[split][key] = {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}
    return summary


def folds_markdown(summary: dict[str, dict[str, dict[str, float]]], k: int) -> str:
    lines = [f"# {k}-fold summary (mean ± std over folds)", ""]
    for split, metrics in summary.items():
        lines += [f"## {split}", "", "| metric | mean ± std |", "|---|---|"]
        lines += [f"| {key} | {value['mean']:.4f} ± {value['std']:.4f} |" for key, value in metrics.items()]
        lines.append("")
    return "\n".join(lines)


def means(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The mean of every metric per split."""
    return {split: {key: value["mean"] for key, value in metrics.items()} for split, metrics in summary.items()}
