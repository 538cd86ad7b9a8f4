"""Run folders as the web UI shows them: the runs under a folder, a run's figures, its most confused class pairs
and the misclassified images of a pair (read from the run's predictions and its dataset)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from kenner.config.tree import build_config, load_config_file
from kenner.errors import KennerError
from kenner.evaluate.outputs import report_split
from kenner.io import read_json
from kenner.runs.data import load_data
from kenner.runs.folder import MODEL_DIR

MODEL_INFO = "model_info.json"
TABLE_METRICS = ("accuracy", "macro_f1", "ece", "reject_coverage", "reject_precision")


def find_runs(root: Path, max_depth: int = 3) -> list[Path]:
    """Finished run folders under ``root`` (``root`` itself included), newest first."""
    root = Path(root)
    found = [
        info.parent.parent
        for depth in range(max_depth + 1)
        for info in root.glob("/".join(["*"] * depth + [MODEL_DIR, MODEL_INFO]))
    ]
    return sorted(set(found), key=lambda run: (run / MODEL_DIR / MODEL_INFO).stat().st_mtime, reverse=True)


def runs_table(root: Path, runs: list[Path] | None = None) -> pd.DataFrame:
    """One row per run: name (relative to ``root``), method, encoder, views and the report split's metrics."""
    rows = []
    for run in find_runs(root) if runs is None else runs:
        info = read_json(run / MODEL_DIR / MODEL_INFO)
        metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
        split = "test" if "test" in metrics else next(iter(metrics), None)
        values = metrics.get(split, {}) if split else {}
        row = {
            "run": _name(run, root),
            "method": info["method"],
            "encoder": info["encoder"],
            "views": info["views"],
            "split": split or "",
        }
        row.update(
            {key: round(values[key], 4) if isinstance(values.get(key), float) else None for key in TABLE_METRICS}
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", "method", "encoder", "views", "split", *TABLE_METRICS])


def _name(run: Path, root: Path) -> str:
    try:
        return str(run.relative_to(root)) if run != root else run.name
    except ValueError:
        return str(run)


def report_rows(run: Path) -> pd.DataFrame:
    """The rows of the run's report split (test when there is one) from ``predictions.parquet``."""
    predictions = pd.read_parquet(run / "predictions.parquet")
    split = report_split(predictions["split"].to_numpy())
    return predictions[predictions["split"] == split]


def confused_pairs(run: Path, n: int = 10) -> list[tuple[str, str, int]]:
    """The ``n`` most frequent (true, predicted) pairs with true != predicted on the report split."""
    rows = report_rows(run)
    wrong = rows[(rows["true"] != rows["predicted"]) & (rows["predicted"] != "unclassifiable")]
    counts = wrong.groupby(["true", "predicted"]).size().sort_values(ascending=False)
    return [(true, predicted, int(count)) for (true, predicted), count in counts.head(n).items()]


def misclassified(run: Path, true: str, predicted: str) -> list[tuple[str, str]]:
    """(image path, caption) of the report split's items of class ``true`` predicted as ``predicted``."""
    rows = report_rows(run)
    rows = rows[(rows["true"] == true) & (rows["predicted"] == predicted)]
    paths = _sample_paths(run)
    return [
        (str(next(iter(paths[sample_id].values()))), f"{sample_id}: {true} → {predicted} ({score:.2f})")
        for sample_id, score in zip(rows["sample_id"], rows["score"], strict=True)
        if sample_id in paths
    ]


def _sample_paths(run: Path) -> dict[str, dict[str, Path]]:
    config = run / "run_config.json"
    return _dataset_paths(str(config), config.stat().st_mtime_ns)


@lru_cache(maxsize=8)
def _dataset_paths(config_path: str, mtime: int) -> dict[str, dict[str, Path]]:
    """Sample id -> image per view of the run's dataset (empty when it cannot be read any more)."""
    try:
        cfg = build_config([load_config_file(Path(config_path))])
        dataset, _ = load_data(cfg.data, min_classes=1)
    except (KennerError, OSError):
        return {}
    return {sample.id: sample.paths for sample in dataset.samples}
