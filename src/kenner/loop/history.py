"""The one history schema: a list of per-epoch records, the same for every loop.

Each record is a dict with ``phase`` (str: ``train``, ``crt``, ``frozen``), ``epoch`` (int, 1-based; a head
counts each phase from 1, fine-tuning counts its frozen and unfrozen epochs together), ``train_loss``
(float), ``val_loss`` (float, or None without validation), ``val_<metric>`` floats (``val_macro_f1``,
``val_recall_at_1``, ...; absent without validation), ``lr`` (float) and ``seconds`` (float). Extra keys are
allowed (``ema_val_accuracy``, ``margin``, ...) if they are JSON scalars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

REQUIRED = ("phase", "epoch", "train_loss", "val_loss", "lr", "seconds")


def epoch_record(
    phase: str,
    epoch: int,
    *,
    train_loss: float,
    lr: float,
    seconds: float,
    val: Mapping[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One record; ``val`` maps metric names (``loss``, ``macro_f1``, ...) to validation values."""
    record: dict[str, Any] = {"phase": phase, "epoch": int(epoch), "train_loss": float(train_loss), "val_loss": None}
    record.update({f"val_{name}": float(value) for name, value in (val or {}).items()})
    record.update(lr=float(lr), seconds=float(seconds), **extra)
    return record


def check_history(records: list[dict[str, Any]]) -> None:
    """Raise ValueError naming the first record and key that break the schema."""
    for i, record in enumerate(records):
        missing = [key for key in REQUIRED if key not in record]
        if missing:
            raise ValueError(f"history record {i}: missing {', '.join(missing)}")
        for key, value in record.items():
            if not _valid(key, value):
                raise ValueError(f"history record {i}: {key}={value!r} does not fit the schema")


def _valid(key: str, value: Any) -> bool:
    if key == "phase":
        return isinstance(value, str)
    if key == "epoch":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if key in ("train_loss", "lr", "seconds"):
        return isinstance(value, float)
    if key.startswith("val_"):
        return isinstance(value, float) or (key == "val_loss" and value is None)
    return value is None or isinstance(value, bool | int | float | str)
