"""Learning-rate schedules of fine-tuning, stepped once per epoch.

``cosine``: linear warm-up over ``warmup_epochs`` epochs, then a cosine from the base rate towards
``min_lr``; ``restarts``: ``CosineAnnealingWarmRestarts(T_0, T_mult)``; ``plateau``:
``ReduceLROnPlateau`` on the monitored validation metric; ``constant``: no schedule.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR, LRScheduler, ReduceLROnPlateau

from kenner.train.finetune_config import FinetuneConfig

Scheduler = LRScheduler | ReduceLROnPlateau


def warmup_cosine_factor(epoch: int, *, warmup: int, total: int, floor: float) -> float:
    """Multiplier of the base rate in 0-based ``epoch``: ``(epoch + 1) / (warmup + 1)`` while warming up,
    then ``floor + (1 - floor) * (1 + cos(pi * t)) / 2`` with ``t = (epoch - warmup) / (total - warmup)``
    (1 in the first epoch after warm-up; it would reach ``floor`` one epoch after the last)."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = min((epoch - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: Optimizer, cfg: FinetuneConfig) -> Scheduler | None:
    """The schedule named by ``cfg.scheduler`` for ``optimizer`` (None for ``constant``)."""
    if cfg.scheduler == "cosine":
        factors = [partial(warmup_cosine_factor, warmup=cfg.warmup_epochs, total=cfg.epochs,
                           floor=min(1.0, cfg.min_lr / group["lr"])) for group in optimizer.param_groups]
        return LambdaLR(optimizer, factors)
    if cfg.scheduler == "restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0, T_mult=cfg.t_mult, eta_min=cfg.min_lr)
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.monitor_metric == "loss" else "max"
        return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.plateau_factor,
                                 patience=cfg.plateau_patience)
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
    """Set the rates of a restored cosine schedule from its own formula, so that a run resumed with another
    ``--epochs`` follows the cosine of its new length (an unchanged run gets the same rates)."""
    if isinstance(scheduler, LambdaLR):
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(scheduler.last_epoch)
