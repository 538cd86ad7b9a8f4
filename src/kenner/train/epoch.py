"""One fine-tuning epoch: augmented training batches with mixed precision and gradient accumulation (the
EMA updated after every optimizer step), then the validation metrics, and the console line."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from kenner.evaluate.binary import choose_threshold
from kenner.evaluate.metrics import macro_f1_rows
from kenner.evaluate.neighbours import recall_at_1
from kenner.heads.feature_aug import mixup as mix
from kenner.progress import progress_bar
from kenner.train.model import FinetuneNet
from kenner.train.precision import TrainSettings


def autocast(settings: TrainSettings) -> contextlib.AbstractContextManager:
    """Mixed precision of ``settings`` (nothing for fp32)."""
    dtype = settings.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(settings.device).type, dtype=dtype)


def train_one_epoch(
    model: FinetuneNet,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    ema: nn.Module | None,
    settings: TrainSettings,
    *,
    frozen: bool,
    n_classes: int,
    mixup: float = 0.0,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    supcon: nn.Module | None = None,
    desc: str = "training",
    forward: nn.Module | None = None,
) -> dict[str, float]:
    """One pass over the training loader (the backbone frozen, in eval mode, when ``frozen``); returns the
    mean loss, accuracy and images per second. ``forward`` computes the logits in place of ``model`` (the same
    model wrapped in ``DistributedDataParallel``, which averages gradients across processes). ``supcon``: the
    backbone learns from this loss on the head's projection of the features instead; the head's classifier
    learns on the detached features beside it (one process only)."""
    model.train()
    if frozen:
        model.backbone.eval()  # keep BatchNorm statistics of the frozen backbone
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    device, accum = torch.device(settings.device), settings.accum_steps
    total_loss, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(loader, desc=desc, unit="batch", leave=False)
    for step, (pixels, labels) in enumerate(bar):
        pixels, labels = pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets: torch.Tensor = labels
        if mixup > 0:
            pixels, targets = mix(pixels, F.one_hot(labels, n_classes).float(), mixup)
        with autocast(settings):
            if supcon is None:
                logits = (forward or model)(pixels, labels)
            else:
                features = model.features(pixels)
                logits = model.head.classify(features.detach(), labels)
                projected = model.head.projection(features)
        loss = F.cross_entropy(logits.float(), targets, weight=weight, label_smoothing=label_smoothing)
        if supcon is not None:
            loss = loss + supcon(projected.float(), labels)
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
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    seconds = time.perf_counter() - started
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "images_per_s": seen / max(seconds, 1e-9),
    }


@torch.no_grad()
def predict_logits(
    model: FinetuneNet, loader: DataLoader, settings: TrainSettings, desc: str = "evaluating"
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and the head's penultimate features of every item of ``loader`` (eval mode, no margin)."""
    model.eval()
    device = torch.device(settings.device)
    logits, features = [], []
    for pixels, _ in progress_bar(loader, desc=desc, unit="batch", leave=False):
        with autocast(settings):
            feats = model.features(pixels.to(device, non_blocking=True))
            logits.append(model.head.classify(feats).float().cpu())
        features.append(feats.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()


def validation_metrics(
    logits: np.ndarray, features: np.ndarray, y: np.ndarray, *, pos_index: int | None, recall: bool
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of validation predictions; leave-one-out Recall@1 of the features
    (``recall``) and the binary AUROC, best-F1 threshold and orientation (``pos_index``)."""
    predicted = logits.argmax(axis=1)
    metrics = {
        "loss": float(F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y))),
        "accuracy": float((predicted == y).mean()),
        "macro_f1": float(macro_f1_rows(y, predicted[None], logits.shape[1])[0]),
    }
    if recall:
        metrics["recall_at_1"] = recall_at_1(features, y)
    if pos_index is not None:
        binary = choose_threshold(y, softmax(logits), pos_index)
        metrics.update(
            auroc=binary.auroc, threshold=binary.threshold, f1_pos=binary.f1, score_flipped=float(binary.flipped)
        )
    return metrics


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The one-line console summary of an epoch."""
    parts = [
        f"Epoch {record['epoch']}/{epochs}{' (frozen)' if record['phase'] == 'frozen' else ''}",
        f"Train loss {record['train_loss']:.4f}",
        f"Train acc {record['train_accuracy']:.2%}",
    ]
    if record["val_loss"] is not None:
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
                text += (
                    f" posF1 {record[prefix + 'f1_pos']:.3f} AUROC {record[prefix + 'auroc']:.3f}"
                    f" th {record[prefix + 'threshold']:.2f} flip={bool(record[prefix + 'score_flipped'])}"
                )
            parts.append(text)
    if "ema_gap" in record:
        parts.append(f"EMA_gap {record['ema_gap']:.1e}")
    parts += [f"LR {record['lr']:.6f}", f"{record['seconds']:.1f}s"]
    return " | ".join(parts)
