"""report.md: a human summary of one run folder, built from a plain ``context`` dict."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kenner.io import atomic_write_text

SPLIT_ORDER = ("train", "val", "test")
MAIN_METRICS = (
    "n",
    "accuracy",
    "top3_accuracy",
    "top5_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "ece",
    "prediction_cv",
    "accuracy_fg",
    "macro_f1_fg",
    "weighted_f1_fg",
)
LINKED_FILES = {
    "confusion_matrix.png": "confusion matrix",
    "per_class.csv": "per-class precision, recall and F1",
    "predictions.parquet": "predictions (sample id, split, true, predicted, top-k, scores)",
    "metrics.json": "all metrics",
    "run_config.json": "run configuration (repeat with `--config`)",
    "excluded.csv": "excluded samples and files, and why",
    "duplicates.csv": "identical images found in more than one group (their groups were merged)",
    "split_warnings.txt": "every split warning (classes too small for every split)",
}
WORST_CLASSES = 10


def write_report(run_dir: str | Path, context: Mapping[str, Any]) -> Path:
    """Render ``run_dir/report.md`` and return its path. Every context key is optional:

    - ``title`` (str): heading; default "kenner run <folder name>".
    - ``dataset`` (dict): ``source``, ``samples``, ``classes``, ``views`` (list), ``excluded`` (int).
    - ``splits`` (dict split -> dict): e.g. ``data.splits.split_summary`` (groups, samples, classes).
    - ``warnings`` (list[str]): e.g. split warnings about classes too small for every split.
    - ``encoder``, ``head``, ``config`` (dict): highlights shown as key/value tables.
    - ``metrics`` (dict split -> metrics dict): headline table, one row per split.
    - ``per_class`` (DataFrame from ``metrics.per_class_table`` on test): the worst classes by F1.
    - ``sections`` (list of (title, markdown)): extra sections appended in order (calibration,
      reject option, sweeps, ...).

    Files of the run folder listed in ``LINKED_FILES`` are linked when they exist.
    """
    run_dir = Path(run_dir)
    parts = [f"# {context.get('title') or f'kenner run {run_dir.name}'}"]
    if context.get("dataset"):
        parts.append(_section("Dataset", _key_values(context["dataset"])))
    if context.get("splits"):
        parts.append(_section("Splits", _splits_table(context["splits"])))
    if context.get("warnings"):
        parts.append(_section("Warnings", "\n".join(f"- {line}" for line in context["warnings"])))
    for key, title in (("encoder", "Encoder"), ("head", "Method"), ("config", "Configuration highlights")):
        if context.get(key):
            parts.append(_section(title, _key_values(context[key])))
    if context.get("metrics"):
        parts.append(_section("Metrics", metrics_markdown_table(context["metrics"])))
    links = [f"- [{name}]({name}): {what}" for name, what in LINKED_FILES.items() if (run_dir / name).is_file()]
    if links:
        body = "\n".join(links)
        if (run_dir / "confusion_matrix.png").is_file():
            body += "\n\n![confusion matrix](confusion_matrix.png)"
        parts.append(_section("Files", body))
    per_class = context.get("per_class")
    if per_class is not None and len(per_class):
        parts.append(_section(f"Worst {WORST_CLASSES} classes by F1 (test)", _worst_classes(per_class)))
    ranked = next((m for m in reversed(list(context.get("metrics", {}).values())) if "best_classes" in m), None)
    if ranked:
        parts.append(_section("Best and worst classes by F1", _ranked(ranked)))
    for title, markdown in context.get("sections", ()):
        parts.append(_section(title, markdown.strip()))
    return atomic_write_text(run_dir / "report.md", "\n\n".join(parts) + "\n")


def metrics_markdown_table(metrics_by_split: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table: one row per split (train, val, test first), the main metric keys as columns."""
    splits = [s for s in SPLIT_ORDER if s in metrics_by_split]
    splits += [s for s in metrics_by_split if s not in SPLIT_ORDER]
    columns = [key for key in MAIN_METRICS if any(key in metrics_by_split[s] for s in splits)]
    rows = [[split] + [format_number(metrics_by_split[split].get(key)) for key in columns] for split in splits]
    return markdown_table(["split", *columns], rows)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body}"


def _splits_table(splits: Mapping[str, Mapping[str, int]]) -> str:
    columns = list(dict.fromkeys(key for counts in splits.values() for key in counts))
    return markdown_table(
        ["split", *columns],
        [[name] + [format_number(counts.get(c)) for c in columns] for name, counts in splits.items()],
    )


def _key_values(values: Mapping[str, Any]) -> str:
    return markdown_table(["item", "value"], [[str(key), _value(value)] for key, value in values.items()])


def _worst_classes(per_class: pd.DataFrame) -> str:
    present = per_class[per_class["support"] > 0]
    worst = present.sort_values(["f1", "support", "class"], ascending=[True, False, True]).head(WORST_CLASSES)
    columns = ["class", "support", "precision", "recall", "f1"]
    return markdown_table(columns, [[format_number(row[c]) for c in columns] for _, row in worst.iterrows()])


def _ranked(metrics: Mapping[str, Any]) -> str:
    """The 5 best and 5 worst classes side by side, with the prediction CV (how evenly classes are predicted)."""
    best, worst = metrics["best_classes"], metrics["worst_classes"]
    rows = [
        [f"{b[0]} ({b[1]:.3f})" if b else "", f"{w[0]} ({w[1]:.3f})" if w else ""]
        for b, w in zip(
            best + [None] * (len(worst) - len(best)), worst + [None] * (len(best) - len(worst)), strict=True
        )
    ]
    cv = metrics.get("prediction_cv")
    note = f"\n\nPrediction CV (std / mean of how often each class is predicted): {cv:.3f}." if cv is not None else ""
    return markdown_table(["best", "worst"], rows) + note


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_number(value: Any) -> str:
    """Metrics and counts: integers as they are, other numbers with 4 decimals."""
    if value is None:
        return "–"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{float(value):.4f}"
    return _value(value)


def _value(value: Any) -> str:
    """Configuration values: numbers with 4 significant digits, lists comma-separated."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | list | tuple):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return ", ".join(_value(v) for v in value)
