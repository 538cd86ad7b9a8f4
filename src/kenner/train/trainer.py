"""The fine-tuning trainer: the model and everything that changes while it trains (optimizer, schedule,
grad scaler, EMA, early stopping, history), one epoch at a time, and all of it in every checkpoint.

Each epoch the model and its EMA are validated; the better of the two (by the monitored metric, ties to the
lower validation loss) is the epoch's candidate for :class:`~kenner.loop.early_stopping.EarlyStopping`. A
run resumed from a checkpoint continues exactly where it stopped (weights, optimizer, schedule, RNG states,
best epoch): with the same seed it ends where an uninterrupted run ends.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.losses import SupConLoss
from torch import nn
from torch.utils.data import DataLoader

from kenner import __version__
from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.heads.arcface import ArcFace, margin_at
from kenner.io import atomic_write_bytes
from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.epochs import make_optimizer
from kenner.loop.history import epoch_record
from kenner.loop.schedulers import Scheduler, build_scheduler, reapply_schedule, step_scheduler
from kenner.train.checkpoint import BEST, LATEST, fp32_state_dict, load_checkpoint, rng_state, set_rng_state
from kenner.train.ema import create_ema, ema_gap
from kenner.train.epoch import predict_logits, train_one_epoch, validation_metrics
from kenner.train.model import FinetuneNet
from kenner.train.precision import TrainSettings

log = logging.getLogger(__name__)


def resolve_monitor(cfg: RunConfig) -> str:
    """The monitored validation metric (``auto``: Recall@1 for an arcface head, else macro-F1)."""
    if cfg["monitor"] != "auto":
        return cfg["monitor"]
    return "recall_at_1" if cfg["head_type"] == "arcface" else "macro_f1"


@dataclass
class TrainState:
    """The epoch count, which weights scored best, and the history (kept in every checkpoint)."""

    epoch: int = 0  # completed epochs
    best_source: str = "model"  # "model" or "ema"
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Trainer:
    """One fine-tuning run in progress."""

    cfg: RunConfig
    settings: TrainSettings
    model: FinetuneNet
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    weight: torch.Tensor | None = None
    supcon: nn.Module | None = None
    state: TrainState = field(default_factory=TrainState)

    @classmethod
    def create(
        cls,
        cfg: RunConfig,
        settings: TrainSettings,
        model: FinetuneNet,
        *,
        validated: bool,
        weight: torch.Tensor | None = None,
    ) -> Trainer:
        """The head and the backbone as two parameter groups (``--lr``, ``--backbone-lr``). Early stopping
        counts patience from the end of the frozen phase; without validation every epoch is the best."""
        backbone_lr = cfg["backbone_lr"] if cfg["backbone_lr"] is not None else cfg["lr"]
        groups = [
            {"params": list(model.head.parameters()), "lr": cfg["lr"]},
            {"params": list(model.backbone.parameters()), "lr": backbone_lr},
        ]
        optimizer = make_optimizer(groups, optimizer=cfg["optimizer"], lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        monitor = resolve_monitor(cfg)
        scheduler = build_scheduler(optimizer, epochs=cfg["epochs"], monitor=monitor, **cfg.fields("schedule"))
        scaler = torch.amp.GradScaler(torch.device(settings.device).type, enabled=settings.use_grad_scaler)
        patience = cfg["patience"] if validated else 0
        min_epochs = max(cfg["min_epochs"], cfg["freeze_epochs"] + patience) if patience else cfg["min_epochs"]
        return cls(
            cfg,
            settings,
            model,
            create_ema(model, cfg["ema_decay"]),
            optimizer,
            scheduler,
            scaler,
            EarlyStopping(monitor, patience, min_epochs),
            weight,
            SupConLoss(temperature=cfg["supcon_temperature"]) if cfg["loss"] == "supcon" else None,
        )

    @property
    def done(self) -> bool:
        return bool(self.stopper.stopped[0]) or self.state.epoch >= self.cfg["epochs"]

    def epoch(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        y_val: np.ndarray,
        pos_index: int | None,
        *,
        forward: nn.Module | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Train and validate one epoch, step the schedule and early stopping; returns the epoch's history
        record and whether it is the new best. ``forward``: the model as training calls it (DDP-wrapped)."""
        cfg, state, monitor = self.cfg, self.state, self.stopper.monitor
        epoch, started = state.epoch, time.perf_counter()
        frozen = epoch < cfg["freeze_epochs"]
        extra: dict[str, Any] = {}
        if isinstance(self.model.head.classifier, ArcFace):
            self.model.head.classifier.margin = margin_at(
                epoch,
                margin=cfg["arcface_margin"],
                warmup_epochs=max(cfg["freeze_epochs"], cfg["margin_warmup_epochs"]),
                ramp_epochs=cfg["margin_ramp_epochs"],
            )
            extra["margin"] = self.model.head.classifier.margin
        lr = self.optimizer.param_groups[0]["lr"]
        train = train_one_epoch(
            self.model,
            train_loader,
            self.optimizer,
            self.scaler,
            self.ema,
            self.settings,
            frozen=frozen,
            n_classes=self.model.head.classifier.weight.shape[0],
            mixup=cfg["mixup"],
            label_smoothing=cfg["label_smoothing"],
            weight=self.weight,
            supcon=self.supcon,
            desc=f"epoch {epoch + 1}/{cfg['epochs']}",
            forward=forward,
        )
        values: dict[str, dict[str, float]] = {}
        nets = {"model": self.model, "ema": self.ema.module if self.ema is not None else None}
        for source, net in nets.items():
            if net is not None and val_loader is not None:
                logits, features = predict_logits(net, val_loader, self.settings, desc="validating")
                values[source] = validation_metrics(
                    logits,
                    features,
                    y_val,
                    pos_index=pos_index,
                    recall=monitor == "recall_at_1" or cfg["head_type"] == "arcface",
                )
        source = "model"
        if "ema" in values:
            ema, model = values["ema"], values["model"]
            if self.stopper.is_better(ema[monitor], ema["loss"], model[monitor], model["loss"]):
                source = "ema"
        chosen = values.get(source, {})
        step_scheduler(self.scheduler, values["model"][monitor] if values else None)
        improved = bool(self.stopper.step(epoch + 1, chosen.get(monitor), chosen.get("loss"))[0])
        if improved:
            state.best_source = source
        extra.update({f"ema_val_{k}": float(v) for k, v in values.get("ema", {}).items()})
        if self.ema is not None:
            extra["ema_gap"] = ema_gap(self.model, self.ema)
        record = epoch_record(
            "frozen" if frozen else "train",
            epoch + 1,
            train_loss=train["loss"],
            lr=lr,
            seconds=time.perf_counter() - started,
            val=values.get("model"),
            train_accuracy=train["accuracy"],
            train_images_per_s=train["images_per_s"],
            **extra,
        )
        state.epoch = epoch + 1
        state.history.append(record)
        if self.stopper.stopped[0]:
            log.info(
                "early stopping: no better val %s for %d epochs (best %.4f at epoch %d, %s weights)",
                monitor,
                self.stopper.patience,
                self.stopper.best_value[0],
                self.stopper.best_epoch[0],
                state.best_source,
            )
        return record, improved

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly here; weights in fp32, RNG states as they are now."""
        return {
            "model": fp32_state_dict(self.model),
            "ema": fp32_state_dict(self.ema) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "train_state": dataclasses.asdict(self.state),
            "early_stopping": self.stopper.state_dict(),
            "rng": rng_state(),
            "run_config": self.cfg.to_dict(),
            "kenner_version": __version__,
        }

    def restore(self, path: Path, checkpoint_dir: Path) -> None:
        """Continue from the checkpoint at ``path`` (weights, optimizer, schedule, RNG, epoch, best).

        ``checkpoint_dir`` is this run's: its ``best_model.pt`` is made to hold the resumed state's best
        epoch. A larger ``--epochs`` or ``--patience`` than the checkpoint's run had continues training.
        """
        checkpoint = load_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint["model"])
            if self.ema is not None:
                self.ema.load_state_dict(
                    checkpoint["ema"] or {f"module.{k}": v for k, v in checkpoint["model"].items()}
                )
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.scheduler is not None and checkpoint["scheduler"] is not None:
                self.scheduler.load_state_dict(checkpoint["scheduler"])
                reapply_schedule(self.scheduler)
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(**checkpoint["train_state"])
            self.stopper.load_state_dict(checkpoint["early_stopping"])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise KennerError(
                f"checkpoint {path} does not fit this run ({str(error).splitlines()[0]}); "
                "pass --fresh to start again, or the run's own settings"
            ) from error
        set_rng_state(checkpoint["rng"])
        log.info("resuming from %s after epoch %d", path, self.state.epoch)
        self._adopt_best(path, checkpoint_dir)

    def _adopt_best(self, path: Path, checkpoint_dir: Path) -> None:
        """Put the checkpoint of the resumed state's best epoch in this run's ``best_model.pt``: the resumed
        checkpoint itself or the ``best_model.pt`` beside it. Without one (``--resume`` of a file from
        elsewhere, or a best epoch the resumed run later overwrote), the best is chosen afresh from here."""
        best_epoch, own = int(self.stopper.best_epoch[0]), checkpoint_dir / BEST
        if not best_epoch:
            return
        for candidate in (path, path.parent / BEST):
            if candidate.is_file() and load_checkpoint(candidate)["train_state"]["epoch"] == best_epoch:
                if not (own.is_file() and os.path.samefile(candidate, own)):
                    atomic_write_bytes(own, candidate.read_bytes())
                return
        log.warning(
            "the checkpoint of best epoch %d of %s is not at hand; the best model is chosen among the "
            "epochs trained from here",
            best_epoch,
            path,
        )
        fresh = EarlyStopping(self.stopper.monitor, self.stopper.patience, self.stopper.min_epochs)
        fresh.best_epoch[:] = fresh.last_epoch[:] = self.state.epoch
        self.stopper, self.state.best_source = fresh, "model"

    def best_weights(self, checkpoint_dir: Path) -> dict[str, torch.Tensor]:
        """Model or EMA weights (whichever scored best on validation) of ``best_model.pt``."""
        best = load_checkpoint(checkpoint_dir / (BEST if (checkpoint_dir / BEST).is_file() else LATEST))
        if self.state.best_source == "ema":
            return {key.removeprefix("module."): value for key, value in best["ema"].items()}
        return best["model"]
