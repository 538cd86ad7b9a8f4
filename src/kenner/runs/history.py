"""history.json in a report: one table row per epoch, the columns the records have."""

from __future__ import annotations

from typing import Any

from kenner.evaluate.report import markdown_table

PREFERRED = (
    "phase",
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "val_recall_at_1",
    "val_auroc",
    "ema_val_accuracy",
    "ema_val_macro_f1",
    "lr",
    "seconds",
)
MAX_ROWS = 60


def history_markdown(history: list[dict[str, Any]]) -> str:
    """The per-epoch records as a table (the first and last epochs when there are many)."""
    columns = [key for key in PREFERRED if any(key in record for record in history)]
    shown = history if len(history) <= MAX_ROWS else [*history[: MAX_ROWS // 2], *history[-MAX_ROWS // 2 :]]
    rows = [[_cell(record.get(key)) for key in columns] for record in shown]
    note = (
        ""
        if len(shown) == len(history)
        else f"\n\n({len(history) - len(shown)} middle epochs left out; all are in history.json)"
    )
    return markdown_table(columns, rows) + note


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
