"""Early stopping and the best epoch: one helper for every training loop, vectorised over H heads.

A head's epoch is *better* than its best so far when the monitored validation metric is higher (``loss``:
lower), or equal with a lower validation loss: on easy data macro-F1 reaches 1.0 in an early epoch, and the
better-trained later epoch should win the tie. A head stops ``patience`` epochs after its best epoch, never
before ``min_epochs``; ``patience=0`` trains every epoch and keeps the last (every epoch is the best).
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIGHER_IS_BETTER = ("macro_f1", "accuracy", "recall_at_1", "auroc")
MONITORS = (*HIGHER_IS_BETTER, "loss")


class EarlyStopping:
    """The best epoch (1-based) and stopping state of ``n_heads`` heads; a single loop uses one head."""

    def __init__(self, monitor: str, patience: int, min_epochs: int = 0, *, n_heads: int = 1) -> None:
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {', '.join(MONITORS)}, not {monitor!r}")
        self.monitor, self.patience, self.min_epochs = monitor, patience, min_epochs
        worst = np.inf if monitor == "loss" else -np.inf
        self.best_value = np.full(n_heads, worst)
        self.best_loss = np.full(n_heads, np.inf)
        self.best_epoch = np.zeros(n_heads, dtype=np.int64)
        self.last_epoch = np.zeros(n_heads, dtype=np.int64)

    @property
    def keeps_last(self) -> bool:
        """True when every epoch is the best (``patience=0``): a loop need not keep copies of weights."""
        return self.patience == 0

    @property
    def stopped(self) -> np.ndarray:
        """Per head: no better epoch for ``patience`` epochs and at least ``min_epochs`` trained."""
        waited = self.last_epoch - self.best_epoch >= self.patience
        return (self.patience > 0) & (self.last_epoch >= self.min_epochs) & waited

    def is_better(self, value: Any, loss: Any, than_value: Any, than_loss: Any) -> np.ndarray:
        """Elementwise: ``value`` (with validation ``loss``) beats ``than_value`` (with ``than_loss``).
        NaN never beats anything."""
        value, than_value = np.asarray(value, dtype=float), np.asarray(than_value, dtype=float)
        loss, than_loss = _floats(loss, value.shape), _floats(than_loss, value.shape)
        if self.monitor == "loss":
            value, than_value = -value, -than_value
        return (value > than_value) | ((value == than_value) & (loss < than_loss))

    def step(self, epoch: int, value: Any, loss: Any = None, *, heads: Any = None) -> np.ndarray:
        """Record the monitored ``value`` and validation ``loss`` (scalars or one per head; None without
        validation) after 1-based ``epoch`` for ``heads`` (indices; all when None). Returns which improved."""
        index = np.arange(len(self.best_epoch)) if heads is None else np.asarray(heads, dtype=np.int64)
        value, loss = _floats(value, index.shape), _floats(loss, index.shape)
        if self.keeps_last:
            improved = np.ones(index.shape, dtype=bool)
        else:
            improved = self.is_better(value, loss, self.best_value[index], self.best_loss[index])
        better = index[improved]
        self.best_value[better], self.best_loss[better] = value[improved], loss[improved]
        self.best_epoch[better] = epoch
        self.last_epoch[index] = epoch
        return improved

    def state_dict(self) -> dict[str, list]:
        """Plain lists (a checkpoint loaded with ``weights_only=True`` can hold them)."""
        return {name: getattr(self, name).tolist() for name in ("best_value", "best_loss", "best_epoch", "last_epoch")}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.best_value = np.asarray(state["best_value"], dtype=float)
        self.best_loss = np.asarray(state["best_loss"], dtype=float)
        self.best_epoch = np.asarray(state["best_epoch"], dtype=np.int64)
        self.last_epoch = np.asarray(state["last_epoch"], dtype=np.int64)


def _floats(values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as a float array of ``shape`` (None -> NaN)."""
    if values is None:
        return np.full(shape, np.nan)
    return np.broadcast_to(np.asarray(values, dtype=float), shape).copy()
