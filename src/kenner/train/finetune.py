"""``kenner finetune``: full fine-tuning of an encoder's backbone with a classifier head, from pixels.

One epoch: (frozen phase: head only, backbone in eval mode) -> augmented training batches with
mixed precision and gradient accumulation -> EMA update after every optimizer step -> validation of
the model and of its EMA -> console summary, tracking, schedule step -> ``latest_model.pt`` (plus
``best_model.pt`` when the monitored metric improved, ``checkpoint_epoch_N.pt`` every N epochs).
A rerun continues from ``latest_model.pt``; with the same seed the result equals an uninterrupted run.

At the end the best checkpoint (model or EMA weights, whichever scored better on validation) is
evaluated once on every split and written like a frozen-embedding run: ``metrics.json``,
``predictions.parquet``, ``per_class.csv``, ``confusion_matrix.png``, ``report.md`` and ``model/``
(fp32 safetensors + ``model_info.json``, which ``kenner predict`` reads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.samplers import MPerClassSampler
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Sampler, WeightedRandomSampler
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from kenner import __version__
from kenner.config.legacy import absolute_paths
from kenner.data.images import load_image
from kenner.data.manifest import Dataset, Exclusion
from kenner.data.splits import split_of_samples, split_summary
from kenner.encoders import create_encoder
from kenner.encoders.base import Encoder, Preprocessing
from kenner.encoders.views import ALIASES, COMBINED_MODES, combine_views
from kenner.errors import KennerError
from kenner.evaluate.binary import BinaryResult, binary_metrics, binary_predictions, choose_threshold
from kenner.evaluate.metrics import classification_metrics
from kenner.evaluate.outputs import write_evaluation
from kenner.evaluate.reject import proba_confidence
from kenner.evaluate.reject_report import reject_markdown, tune_reject
from kenner.evaluate.report import write_report
from kenner.heads.modules import CosineMarginClassifier
from kenner.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from kenner.pipeline import load_data, resolve_folds, resolve_split
from kenner.retrieval.metrics import recall_at_k
from kenner.track import NullTracker, Tracker
from kenner.train.augment import Transform, eval_preprocessing, train_transform
from kenner.train.checkpoint import (
    BEST,
    LATEST,
    epoch_name,
    fp32_state_dict,
    load_checkpoint,
    resume_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kenner.train.ema import create_ema, ema_gap
from kenner.train.feature_aug import mixup
from kenner.train.finetune_config import FinetuneConfig, FinetuneRun
from kenner.train.loop import make_generator, reset_classifier_
from kenner.train.precision import TrainSettings, apply_backend_flags, auto_settings, detect_device
from kenner.train.run import aggregate_folds, folds_markdown, load_model_info, log_run
from kenner.train.schedulers import build_scheduler, reapply_schedule, step_scheduler

log = logging.getLogger(__name__)

WEIGHTS_FILE = "finetuned.safetensors"
CHECKPOINT_DIR = "checkpoints"
LOO_CHUNK = 2048


class ImageSamples(TorchDataset):
    """Decoded, transformed images of samples: item ``i`` is ``(pixels [V, 3, H, W], label)``."""

    def __init__(self, paths: list[dict[str, Path]], labels: np.ndarray, views: list[str],
                 transform: Transform, *, background: tuple[int, ...], max_side: int) -> None:
        self.paths, self.labels, self.views, self.transform = paths, labels, views, transform
        self.background, self.max_side = tuple(background), max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images = [load_image(self.paths[index][view], background=self.background, max_side=self.max_side)
                  for view in self.views]
        return torch.stack([self.transform(image) for image in images]), int(self.labels[index])


class FinetuneNet(nn.Module):
    """The trainable encoder over each used view, views averaged or concatenated, dropout, classifier."""

    def __init__(self, backbone: Encoder, classifier: nn.Module, *, combine: str, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.combine = combine
        self.dropout = nn.Dropout(dropout)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` [B, V, 3, H, W] -> features [B, D] (D = encoder dim, times V when concatenated)."""
        batch, views = pixels.shape[:2]
        per_view = self.backbone(pixels.flatten(0, 1)).reshape(batch, views, -1)
        return per_view.flatten(1) if self.combine == "concat" else per_view.mean(dim=1)

    def classify(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``labels`` switch on the ArcFace margin in training."""
        features = self.dropout(features)
        if isinstance(self.classifier, CosineMarginClassifier):
            return self.classifier(features, labels)
        return self.classifier(features)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.features(pixels), labels)


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch (and into every checkpoint)."""

    epoch: int = 0  # completed epochs
    best_metric: float | None = None
    best_epoch: int = 0
    best_source: str = "model"  # "model" or "ema": which weights scored best_metric
    stale: int = 0  # unfrozen epochs since the last improvement
    done: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def view_plan(views: list[str], mode: str) -> tuple[list[str], str]:
    """The views the model reads and how their features combine (``avg`` or ``concat``) for a
    ``--views`` mode (a view name, ``avg``, ``concat`` or a coin alias, as in ``combine_views``)."""
    resolved = ALIASES.get(mode, mode)
    if resolved in COMBINED_MODES:
        return list(views), resolved
    probe = {view: np.full((1, 1), index, dtype=np.float32) for index, view in enumerate(views)}
    return [views[int(combine_views(probe, mode)[0, 0])]], "avg"


def build_model(encoder: Encoder, *, n_views: int, combine: str, n_classes: int, head_type: str,
                arcface_scale: float, dropout: float, seed: int) -> FinetuneNet:
    """The encoder plus a freshly initialised classifier (``kenner.train.loop.linear_init`` from ``seed``)."""
    dim = encoder.dim * n_views if combine == "concat" else encoder.dim
    classifier: nn.Module = (CosineMarginClassifier(dim, n_classes, arcface_scale, 0.0)
                             if head_type == "arcface" else nn.Linear(dim, n_classes))
    reset_classifier_(classifier, make_generator(seed))
    return FinetuneNet(encoder, classifier, combine=combine, dropout=dropout)


def margin_at(epoch: int, cfg: FinetuneConfig) -> float:
    """ArcFace margin in 0-based ``epoch``: 0 while frozen, then a linear ramp to the target."""
    if epoch < cfg.freeze_epochs:
        return 0.0
    return cfg.arcface_margin * min(1.0, (epoch - cfg.freeze_epochs + 1) / (cfg.margin_ramp_epochs + 1))


def loo_recall_at_1(features: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out Recall@1 (cosine) within a labelled set: does each sample's nearest other sample
    share its class? NaN with fewer than two samples."""
    if len(y) < 2:
        return float("nan")
    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    nearest = np.empty(len(y), dtype=np.int64)
    for start in range(0, len(y), LOO_CHUNK):
        sim = z[start:start + LOO_CHUNK] @ z.T
        rows = np.arange(sim.shape[0])
        sim[rows, start + rows] = -np.inf
        nearest[start:start + LOO_CHUNK] = sim.argmax(axis=1)
    return recall_at_k(y[nearest][:, None], y, 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def determinism(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` inside the block when ``enabled``."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _autocast(settings: TrainSettings) -> contextlib.AbstractContextManager:
    dtype = settings.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(settings.device).type, dtype=dtype)


def _train_sampler(cfg: FinetuneConfig, y_train: np.ndarray, micro_batch: int) -> Sampler | None:
    """Shuffling, inverse-frequency ``WeightedRandomSampler`` or P x K (pytorch-metric-learning)."""
    if cfg.sampler == "weighted":
        counts = np.bincount(y_train)
        return WeightedRandomSampler(torch.as_tensor(1.0 / counts[y_train], dtype=torch.double),
                                     num_samples=len(y_train), replacement=True)
    if cfg.sampler == "pk":
        present = len(np.unique(y_train))
        if micro_batch % cfg.pk_k or micro_batch > present * cfg.pk_k:
            raise KennerError(
                f"--sampler pk: a micro-batch of {micro_batch} images (--batch-size / --accum-steps) must "
                f"be a multiple of --pk-k {cfg.pk_k} and at most {present} classes x {cfg.pk_k}"
            )
        return MPerClassSampler(y_train, m=cfg.pk_k, batch_size=micro_batch,
                                length_before_new_iter=len(y_train))
    return None


def _loader(dataset: TorchDataset, batch_size: int, settings: TrainSettings, *,
            sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=settings.num_workers,
                      pin_memory=settings.device.startswith("cuda"), drop_last=drop_last)


def train_one_epoch(model: FinetuneNet, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, ema: nn.Module | None, settings: TrainSettings,
                    cfg: FinetuneConfig, *, epoch: int, n_classes: int) -> dict[str, float]:
    """One pass over the training loader; returns mean loss, accuracy and images per second."""
    frozen = epoch < cfg.freeze_epochs
    model.train()
    if frozen:
        model.backbone.eval()  # keep BatchNorm statistics of the frozen backbone
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    if isinstance(model.classifier, CosineMarginClassifier):
        model.classifier.margin = margin_at(epoch, cfg)
    device, accum = torch.device(settings.device), settings.accum_steps
    total_loss, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=None)
    for step, (pixels, labels) in enumerate(progress):
        pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets = F.one_hot(labels, n_classes).float()
        if cfg.mixup > 0:
            pixels, targets = mixup(pixels, targets, cfg.mixup)
        with _autocast(settings):
            logits = model(pixels, labels)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
        scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == len(loader):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
        total_loss += float(loss.detach()) * len(labels)
        correct += int((logits.detach().argmax(dim=1) == labels).sum())
        seen += len(labels)
        progress.set_postfix(loss=f"{total_loss / seen:.4f}")
    seconds = time.perf_counter() - started
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "images_per_s": seen / max(seconds, 1e-9)}


@torch.no_grad()
def predict_logits(model: FinetuneNet, loader: DataLoader, settings: TrainSettings,
                   desc: str = "evaluating") -> tuple[np.ndarray, np.ndarray]:
    """Logits and features of every item of ``loader`` (model in eval mode, no margin)."""
    model.eval()
    device = torch.device(settings.device)
    logits, features = [], []
    for pixels, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=None):
        with _autocast(settings):
            feats = model.features(pixels.to(device, non_blocking=True))
            logits.append(model.classify(feats).float().cpu())
        features.append(feats.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()


def validation_metrics(logits: np.ndarray, features: np.ndarray, y: np.ndarray, class_names: list[str], *,
                       pos_index: int | None, recall: bool) -> dict[str, float]:
    """Loss, accuracy, macro-F1 (and Recall@1, binary AUROC/threshold) of validation predictions."""
    proba = softmax(logits)
    full = classification_metrics(y, proba.argmax(axis=1), proba, class_names, top_k=())
    metrics = {"loss": float(F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y))),
               "accuracy": full["accuracy"], "macro_f1": full["macro_f1"]}
    if recall:
        metrics["recall_at_1"] = loo_recall_at_1(features, y)
    if pos_index is not None:
        binary = choose_threshold(y, proba, pos_index)
        metrics.update(auroc=binary.auroc, threshold=binary.threshold, f1_pos=binary.f1,
                       score_flipped=float(binary.flipped))
    return metrics


def _better(value: float, best: float | None, metric: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value < best if metric == "loss" else value > best)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The one-line console summary of an epoch."""
    parts = [f"Epoch {record['epoch']}/{epochs}{' (frozen)' if record['frozen'] else ''}",
             f"Train loss {record['train_loss']:.4f}", f"Train acc {record['train_accuracy']:.2%}"]
    if "val_loss" in record:
        parts += [f"Val loss {record['val_loss']:.4f}", f"Val acc {record['val_accuracy']:.2%}"]
        if "ema_val_accuracy" in record:
            parts.append(f"EMA Val acc {record['ema_val_accuracy']:.2%}")
        for tag, prefix in (("BASE", "val_"), ("EMA", "ema_val_")):
            if f"{prefix}macro_f1" not in record:
                continue
            text = f"[{tag}] F1 {record[prefix + 'macro_f1']:.3f}"
            if f"{prefix}recall_at_1" in record:
                text += f" R@1 {record[prefix + 'recall_at_1']:.3f}"
            if f"{prefix}auroc" in record:
                text += (f" posF1 {record[prefix + 'f1_pos']:.3f} AUROC {record[prefix + 'auroc']:.3f}"
                         f" th {record[prefix + 'threshold']:.2f}"
                         f" flip={bool(record[prefix + 'score_flipped'])}")
            parts.append(text)
    if "ema_gap" in record:
        parts.append(f"EMA_gap {record['ema_gap']:.1e}")
    parts += [f"LR {record['lr']:.6f}", f"{record['seconds']:.1f}s"]
    return " | ".join(parts)


def _pos_index(pos_class: str | None, class_names: list[str]) -> int | None:
    if pos_class is None:
        return None
    if pos_class not in class_names:
        raise KennerError(f"--pos-class {pos_class!r} is not a class of the dataset; "
                          f"classes: {', '.join(class_names[:20])}")
    return class_names.index(pos_class)


@dataclass
class Trainer:
    """The model and everything that changes while it trains (all of it goes into each checkpoint)."""

    cfg: FinetuneConfig
    settings: TrainSettings
    model: FinetuneNet
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: TrainState = field(default_factory=TrainState)

    @classmethod
    def create(cls, cfg: FinetuneConfig, settings: TrainSettings, model: FinetuneNet) -> Trainer:
        """AdamW with the head and the backbone as two parameter groups (``--lr``, ``--backbone-lr``)."""
        backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr
        optimizer = torch.optim.AdamW([{"params": [*model.classifier.parameters()], "lr": cfg.lr},
                                       {"params": [*model.backbone.parameters()], "lr": backbone_lr}],
                                      weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler(torch.device(settings.device).type, enabled=settings.use_grad_scaler)
        return cls(cfg, settings, model, create_ema(model, cfg.ema_decay), optimizer,
                   build_scheduler(optimizer, cfg), scaler)

    def checkpoint(self, run: FinetuneRun) -> dict[str, Any]:
        """Everything needed to continue exactly here; weights in fp32, RNG states as they are now."""
        return {
            "model": fp32_state_dict(self.model),
            "ema": fp32_state_dict(self.ema) if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "train_state": dataclasses.asdict(self.state),
            "rng": rng_state(),
            "run_config": run.to_dict(),
            "kenner_version": __version__,
        }

    def restore(self, path: Path, checkpoint_dir: Path) -> None:
        """Continue from the checkpoint at ``path`` (weights, optimizer, schedule, RNG, epoch, best).

        ``checkpoint_dir`` is this run's: its ``best_model.pt`` is made to hold the resumed state's best
        epoch, and a larger ``--epochs`` or ``--patience`` than the checkpoint's run had continues training.
        """
        checkpoint = load_checkpoint(path)
        try:
            self.model.load_state_dict(checkpoint["model"])
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint["ema"] or {f"module.{k}": v
                                                               for k, v in checkpoint["model"].items()})
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.scheduler is not None and checkpoint["scheduler"] is not None:
                self.scheduler.load_state_dict(checkpoint["scheduler"])
                reapply_schedule(self.scheduler)
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.state = TrainState(**checkpoint["train_state"])
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise KennerError(f"checkpoint {path} does not fit this run ({str(error).splitlines()[0]}); "
                              "pass --fresh to start again, or the run's own settings") from error
        set_rng_state(checkpoint["rng"])
        log.info("resuming from %s after epoch %d", path, self.state.epoch)
        self._adopt_best(path, checkpoint_dir)
        state, cfg = self.state, self.cfg
        state.done = bool(cfg.patience and state.stale >= cfg.patience) or state.epoch >= cfg.epochs

    def _adopt_best(self, path: Path, checkpoint_dir: Path) -> None:
        """Put the checkpoint of the resumed state's best epoch in this run's ``best_model.pt``: the resumed
        checkpoint itself or the ``best_model.pt`` beside it. Without one (``--resume`` of a file from
        elsewhere, or a best epoch the resumed run later overwrote), the best is chosen afresh from here."""
        state, own = self.state, checkpoint_dir / BEST
        if not state.best_epoch:
            return
        for candidate in (path, path.parent / BEST):
            if candidate.is_file() and load_checkpoint(candidate)["train_state"]["epoch"] == state.best_epoch:
                if not (own.is_file() and os.path.samefile(candidate, own)):
                    atomic_write_bytes(own, candidate.read_bytes())
                return
        log.warning("the checkpoint of best epoch %d of %s is not at hand; the best model is chosen among "
                    "the epochs trained from here", state.best_epoch, path)
        state.best_metric, state.best_epoch, state.best_source, state.stale = None, 0, "model", 0

    def best_weights(self, checkpoint_dir: Path) -> dict[str, torch.Tensor]:
        """Model or EMA weights (whichever scored best on validation) of ``best_model.pt``."""
        best = load_checkpoint(checkpoint_dir / (BEST if (checkpoint_dir / BEST).is_file() else LATEST))
        if self.state.best_source == "ema":
            return {key.removeprefix("module."): value for key, value in best["ema"].items()}
        return best["model"]

    def epoch(self, train_loader: DataLoader, val_loader: DataLoader | None, y_val: np.ndarray,
              class_names: list[str], pos_index: int | None) -> tuple[dict[str, Any], bool]:
        """Train and validate one epoch, update best/patience/schedule; returns its record and whether
        the monitored metric improved."""
        cfg, state, metric = self.cfg, self.state, self.cfg.monitor_metric
        epoch, started = state.epoch, time.perf_counter()
        train = train_one_epoch(self.model, train_loader, self.optimizer, self.scaler, self.ema,
                                self.settings, cfg, epoch=epoch, n_classes=len(class_names))
        record: dict[str, Any] = {"epoch": epoch + 1, "frozen": epoch < cfg.freeze_epochs,
                                  "lr": self.optimizer.param_groups[0]["lr"],
                                  **{f"train_{key}": value for key, value in train.items()}}
        candidates: dict[str, float] = {}
        nets = {"model": self.model, "ema": self.ema.module if self.ema is not None else None}
        for source, net in nets.items():
            if net is None or val_loader is None:
                continue
            logits, features = predict_logits(net, val_loader, self.settings, desc="validating")
            values = validation_metrics(logits, features, y_val, class_names, pos_index=pos_index,
                                           recall=cfg.head_type == "arcface" or metric == "recall_at_1")
            record.update({f"{'' if source == 'model' else 'ema_'}val_{k}": v for k, v in values.items()})
            candidates[source] = values[metric]
        if self.ema is not None:
            record["ema_gap"] = ema_gap(self.model, self.ema)
        improved = not candidates
        for source, value in candidates.items():
            if _better(value, state.best_metric, metric):
                state.best_metric, state.best_source, improved = value, source, True
        if improved:
            state.best_epoch, state.stale = epoch + 1, 0
        elif epoch >= cfg.freeze_epochs:
            state.stale += 1
        step_scheduler(self.scheduler, candidates.get("model"))
        record["seconds"] = time.perf_counter() - started
        state.epoch = epoch + 1
        state.history.append(record)
        if cfg.patience and state.stale >= cfg.patience:
            log.info("early stopping: no better val %s for %d epochs (best %.4f at epoch %d, %s weights)",
                     metric, state.stale, state.best_metric, state.best_epoch, state.best_source)
            state.done = True
        state.done = state.done or state.epoch >= cfg.epochs
        return record, improved


def finetune(run: FinetuneRun, *, tracker: Tracker | None = None, resume: str | None = None,
             fresh: bool = False, loaded: tuple[Dataset, list[Exclusion]] | None = None,
             ) -> dict[str, dict[str, float]]:
    """Fine-tune, checkpoint every epoch, evaluate the best weights once and write the run folder.

    ``loaded``: the dataset and its exclusions when the caller already loaded them (k-fold).
    Returns ``{split: metrics}`` as written to ``metrics.json``.
    """
    cfg = run.finetune
    out_dir = Path(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    start_from = resume_path(checkpoint_dir, resume=resume, fresh=fresh)
    atomic_write_json(out_dir / "run_config.json", run.to_dict())
    dataset, exclusions = loaded or load_data(run.data, out_dir)
    split = resolve_split(dataset, run.split, out_dir)
    split_column = np.asarray(split_of_samples(split, dataset.groups))
    class_names = list(dataset.classes)
    atomic_write_json(out_dir / "class_to_idx.json", dataset.class_to_idx)
    y = np.asarray([dataset.class_to_idx[label] for label in dataset.labels], dtype=np.int64)
    pos_index = _pos_index(cfg.pos_class, class_names)
    views, combine = view_plan(dataset.views, run.encoder.views)
    train_idx, val_idx = np.flatnonzero(split_column == "train"), np.flatnonzero(split_column == "val")
    if len(train_idx) == 0:
        raise KennerError("the split has no training samples; check --split-ratios and the dataset size")
    settings = auto_settings(detect_device(cfg.device), precision=cfg.precision, num_workers=cfg.num_workers,
                             accum_steps=cfg.accum_steps)
    apply_backend_flags(settings, deterministic=cfg.deterministic)
    log.info("fine-tuning on %s", settings.describe())

    tags = {"kenner.mode": "finetune", "kenner.encoder": run.encoder.encoder}
    tracking = (tracker or NullTracker()).start_run(out_dir.name or "finetune", run.to_dict(), tags=tags)
    with determinism(cfg.deterministic), tracking as track:
        seed_everything(cfg.seed)
        encoder = create_encoder(run.encoder.encoder, weights=run.encoder.weights,
                                 pooling=run.encoder.pooling, device="cpu", backend="torch")
        pre = eval_preprocessing(encoder.preprocessing, cfg.img_size)
        model = build_model(encoder, n_views=len(views), combine=combine, n_classes=len(class_names),
                            head_type=cfg.head_type, arcface_scale=cfg.arcface_scale, dropout=cfg.dropout,
                            seed=cfg.seed).to(settings.device)
        paths = [sample.paths for sample in dataset.samples]

        def images(indices: np.ndarray, transform: Transform) -> ImageSamples:
            return ImageSamples([paths[i] for i in indices], y[indices], views, transform,
                                background=run.data.background_color, max_side=pre.resize)

        micro = math.ceil(cfg.batch_size / settings.accum_steps)
        train_set = images(train_idx, train_transform(pre, cfg.aug_preset, cfg.augmentation_backend))
        sampler = _train_sampler(cfg, y[train_idx], micro) or RandomSampler(train_set)
        train_loader = _loader(train_set, micro, settings, sampler=sampler, drop_last=len(train_idx) > micro)
        val_loader = _loader(images(val_idx, pre.transform()), micro, settings) if len(val_idx) else None
        trainer = Trainer.create(cfg, settings, model)
        if start_from is not None:
            trainer.restore(start_from, checkpoint_dir)
        fit_started = time.perf_counter()
        while not trainer.state.done:
            record, improved = trainer.epoch(train_loader, val_loader, y[val_idx], class_names, pos_index)
            log.info(epoch_line(record, cfg.epochs))
            track.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=record["epoch"])
            targets = [checkpoint_dir / LATEST, *([checkpoint_dir / BEST] if improved else [])]
            if cfg.checkpoint_every and record["epoch"] % cfg.checkpoint_every == 0:
                targets.append(checkpoint_dir / epoch_name(record["epoch"]))
            save_checkpoint(trainer.checkpoint(run), *targets)
        fit_seconds = time.perf_counter() - fit_started

        model.load_state_dict(trainer.best_weights(checkpoint_dir))
        all_samples = _loader(images(np.arange(len(y)), pre.transform()), micro, settings)
        proba = softmax(predict_logits(model, all_samples, settings)[0])
        binary, predicted = None, proba.argmax(axis=1)
        if pos_index is not None:
            binary = (choose_threshold(y[val_idx], proba[val_idx], pos_index) if len(val_idx)
                      else BinaryResult(auroc=float("nan"), threshold=0.5, f1=float("nan"), flipped=False))
            predicted = binary_predictions(proba, pos_index, binary)
        distance, margin = proba_confidence(proba)
        reject_summary, rule = tune_reject(distance, margin, predicted == y, split_column, by=cfg.reject_by,
                                           target_precision=cfg.target_precision,
                                           target_coverage=cfg.target_coverage, out_dir=out_dir)
        binary_extra = {name: binary_metrics(y[split_column == name], proba[split_column == name], pos_index,
                                             binary)
                        for name in ("train", "val", "test") if (split_column == name).any()} if binary else None
        evaluation = write_evaluation(out_dir, y=y, split=split_column, proba=proba, class_names=class_names,
                                      sample_ids=list(dataset.ids), predicted=predicted,
                                      background_class=run.data.background_class,
                                      accepted=rule.accept(distance, margin) if rule else None,
                                      extra_metrics=binary_extra)
        metrics = evaluation.metrics
        state = trainer.state
        atomic_write_json(out_dir / "history.json", state.history)
        model_dir = out_dir / "model"
        encoder_spec, weights_file = absolute_paths(run.encoder.encoder, run.encoder.weights)
        atomic_write_bytes(model_dir / WEIGHTS_FILE, save_safetensors(fp32_state_dict(model)))
        atomic_write_json(model_dir / "model_info.json", {
            "kenner_version": __version__, "mode": "finetune", "encoder": encoder_spec, "weights": weights_file,
            "pooling": run.encoder.pooling, "views": run.encoder.views,
            "view_names": views, "combine": combine, "class_names": class_names,
            "background_color": list(run.data.background_color), "head_type": cfg.head_type,
            "arcface_scale": cfg.arcface_scale, "preprocessing": pre.as_dict(), "weights_file": WEIGHTS_FILE,
            "best_epoch": state.best_epoch, "best_source": state.best_source, "monitor": cfg.monitor_metric,
            "pos_class": cfg.pos_class, "threshold": binary.threshold if binary else None,
            "score_flipped": binary.flipped if binary else None, "reject": rule.to_dict() if rule else None,
        })
        defaults = dataclasses.asdict(FinetuneConfig())
        changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != defaults[k] or k == "head_type"}
        write_report(out_dir, {
            "title": f"kenner fine-tuning run {out_dir.name}",
            "dataset": {"source": str(dataset.source), "samples": len(y), "classes": len(class_names),
                        "groups": len(set(dataset.groups)), "views": views, "excluded": len(exclusions)},
            "splits": split_summary(split, dataset.groups, dataset.labels),
            "encoder": {"spec": run.encoder.encoder, "weights": run.encoder.weights,
                        "views": run.encoder.views,
                        "input": f"{pre.size} px (resize {pre.resize}, {pre.crop})"},
            "head": changed,
            "config": {"hardware": settings.describe(), "best epoch": state.best_epoch,
                       "best weights": state.best_source, f"best val {cfg.monitor_metric}": state.best_metric,
                       "fit s (this session)": round(fit_seconds, 1),
                       "fit s (all epochs)": round(sum(r["seconds"] for r in state.history), 1)},
            "metrics": metrics,
            "per_class": evaluation.per_class if evaluation.report_split == "test" else None,
            "sections": [("Training history", history_markdown(state.history)),
                         ("Reject option", reject_markdown(reject_summary))],
        })
        log_run(track, out_dir, metrics, history=[])  # the epochs were logged as they ended
    return metrics


def history_markdown(history: list[dict[str, Any]]) -> str:
    """One table row per epoch: losses, accuracies, validation macro-F1 (model and EMA), learning rate."""
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1",
            "val_recall_at_1", "val_auroc", "ema_val_accuracy", "ema_val_macro_f1", "lr", "seconds")
    columns = [key for key in keys if any(key in record for record in history)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in history:
        cells = [f"{record[key]:.4g}" if isinstance(record.get(key), float) else str(record.get(key, ""))
                 for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finetune_folds(run: FinetuneRun, *, tracker: Tracker | None = None,
                   fresh: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """One fine-tuning run per saved group-aware fold (``fold_i/``), then mean ± std of every metric.

    Each fold's ``run_config.json`` names its own split folder, so it can be repeated as a single run.
    """
    out_dir = Path(run.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "run_config.json", run.to_dict())
    loaded = load_data(run.data, out_dir)
    folds = resolve_folds(loaded[0], run.split, out_dir)
    per_fold = []
    for index in range(len(folds)):
        log.info("fold %d/%d", index + 1, len(folds))
        fold_split = dataclasses.replace(run.split, folds=0, splits=str(out_dir / "splits" / f"fold_{index}"))
        fold_run = dataclasses.replace(run, out_dir=str(out_dir / f"fold_{index}"), split=fold_split)
        per_fold.append(finetune(fold_run, tracker=tracker, fresh=fresh, loaded=loaded))
    summary = aggregate_folds(per_fold)
    atomic_write_json(out_dir / "folds_metrics.json", summary)
    atomic_write_text(out_dir / "folds_summary.md", folds_markdown(summary, len(folds)))
    return summary


def load_finetuned(run_dir: Path, *, device: str = "auto",
                   ) -> tuple[FinetuneNet, Preprocessing, dict[str, Any]]:
    """The fine-tuned network of a run folder (eval mode on ``device``), its preprocessing and model info."""
    info = load_model_info(run_dir)
    weights_path = run_dir / "model" / info["weights_file"]
    if not weights_path.is_file():
        raise KennerError(f"{weights_path} is missing: the fine-tuning run did not finish; rerun it")
    encoder = create_encoder(info["encoder"], weights=info["weights"], pooling=info["pooling"], device="cpu",
                             backend="torch")
    model = build_model(encoder, n_views=len(info["view_names"]), combine=info["combine"],
                        n_classes=len(info["class_names"]), head_type=info["head_type"],
                        arcface_scale=info["arcface_scale"], dropout=0.0, seed=0)
    model.load_state_dict(load_safetensors(weights_path.read_bytes()))
    return model.to(detect_device(device).device).eval(), Preprocessing(**info["preprocessing"]), info


def predict_finetuned(run_dir: Path, paths: list[dict[str, Path]], *, device: str = "auto",
                      batch_size: int = 32) -> np.ndarray:
    """Class probabilities [len(paths), n_classes] of a fine-tuned run for images given per view."""
    model, pre, info = load_finetuned(run_dir, device=device)
    settings = auto_settings(detect_device(device), num_workers=0)
    samples = ImageSamples(paths, np.zeros(len(paths), dtype=np.int64), info["view_names"], pre.transform(),
                           background=tuple(info["background_color"]), max_side=pre.resize)
    logits, _ = predict_logits(model, _loader(samples, batch_size, settings), settings, desc="predicting")
    return softmax(logits)
