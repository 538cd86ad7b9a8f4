"""Learning-rate schedules of every loop (heads and fine-tuning), stepped once per epoch.

``constant``: the base rate, after an optional linear warm-up; ``cosine``: linear warm-up over
``warmup_epochs`` epochs, then a cosine from the base rate towards ``min_lr``; ``restarts``:
``CosineAnnealingWarmRestarts(T_0, T_mult)``; ``plateau``: ``ReduceLROnPlateau`` on the monitored
validation metric. Each parameter group follows its own base rate.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR, LRScheduler, ReduceLROnPlateau

from kenner.config.sections import ScheduleConfig

Scheduler = LRScheduler | ReduceLROnPlateau


def warmup_cosine_factor(epoch: int, *, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the base rate in 0-based ``epoch``: ``(epoch + 1) / (warmup + 1)`` while warming up,
    then ``floor + (1 - floor) * (1 + cos(pi * t)) / 2`` with ``t = (epoch - warmup) / (total - warmup)``
    (1 in the first epoch after warm-up; it would reach ``floor`` one epoch after the last)."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = min((epoch - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_factor(epoch: int, *, warmup: int) -> float:
    """Multiplier of the constant schedule: a linear warm-up over ``warmup`` epochs, then 1."""
    return min(1.0, (epoch + 1) / (warmup + 1))


def build_scheduler(
    optimizer: Optimizer,
    *,
    scheduler: str,
    epochs: int,
    warmup_epochs: int = ScheduleConfig.warmup_epochs,
    min_lr: float = ScheduleConfig.min_lr,
    t0: int = ScheduleConfig.t0,
    t_mult: int = ScheduleConfig.t_mult,
    plateau_factor: float = ScheduleConfig.plateau_factor,
    plateau_patience: int = ScheduleConfig.plateau_patience,
    monitor: str = "macro_f1",
) -> Scheduler | None:
    """The schedule named by ``scheduler`` (the ScheduleConfig fields, ``**cfg.fields("schedule")``) for
    ``optimizer``; None for a constant rate without warm-up. ``monitor`` orients ``plateau`` (``loss``:
    lower is better)."""
    if scheduler == "cosine":
        factors = [
            partial(warmup_cosine_factor, warmup=warmup_epochs, total=epochs, floor=min(1.0, min_lr / group["lr"]))
            for group in optimizer.param_groups
        ]
        return LambdaLR(optimizer, factors)
    if scheduler == "restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult, eta_min=min_lr)
    if scheduler == "plateau":
        return ReduceLROnPlateau(
            optimizer, mode="min" if monitor == "loss" else "max", factor=plateau_factor, patience=plateau_patience
        )
    if warmup_epochs > 0:
        return LambdaLR(optimizer, partial(warmup_factor, warmup=warmup_epochs))
    return None


def step_scheduler(scheduler: Scheduler | None, metric: float | None) -> None:
    """Advance one epoch; ``ReduceLROnPlateau`` needs the monitored metric (skipped without one)."""
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        if metric is not None and not math.isnan(metric):
            scheduler.step(metric)
        return
    scheduler.step()


def reapply_schedule(scheduler: Scheduler | None) -> None:
    """Set the rates of a restored lambda schedule from its own formula, so that a run resumed with another
    ``--epochs`` follows the schedule of its new length (an unchanged run gets the same rates)."""
    if isinstance(scheduler, LambdaLR):
        for group, base, factor in zip(
            scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(scheduler.last_epoch)
