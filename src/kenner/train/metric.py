"""Metric-mode training loop on cached embeddings: ArcFace + mined triplets over P×K batches.

Each batch holds P classes × K samples (pytorch-metric-learning's ``MPerClassSampler``). The loss is
ArcFace (additive angular margin) plus ``triplet_weight`` × a triplet margin loss on the pairs a
semi-hard ``TripletMarginMiner`` finds. The ArcFace margin is 0 for ``warmup_epochs`` epochs, then
``arcface_margin``. After every epoch the validation queries are searched against the projected
training set; training stops after ``patience`` epochs without a better Recall@1 and the best
epoch's weights are restored.

Advice: s=64, m=0.5 suit hundreds of classes; with few classes (< ~50) lower them (s=16-30, m=0.2-0.3),
or ArcFace saturates and the triplet term does all the work.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.utils import common_functions as pml_common
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from kenner.errors import KennerError
from kenner.retrieval.index import Gallery
from kenner.retrieval.metrics import recall_at_k

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricTrainConfig:
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    p: int = 16  # classes per batch
    k: int = 4  # samples per class per batch
    arcface_scale: float = 64.0
    arcface_margin: float = 0.5  # radians
    warmup_epochs: int = 2  # epochs with ArcFace margin 0
    triplet_weight: float = 1.0
    triplet_margin: float = 0.1
    patience: int = 10  # epochs without a better val Recall@1 (0 = never stop early)
    seed: int = 0
    device: str = "cpu"


def margin_at(epoch: int, config: MetricTrainConfig) -> float:
    """ArcFace margin (radians) for a 0-based epoch: 0 during warm-up, then the target."""
    return 0.0 if epoch < config.warmup_epochs else config.arcface_margin


@torch.inference_mode()
def project(net: nn.Module, X: np.ndarray, *, device: str = "cpu", batch_size: int = 4096) -> np.ndarray:
    """Run ``net`` (in eval mode) over the rows of ``X``; float32 numpy output."""
    net.eval()
    outputs = [
        net(torch.from_numpy(np.ascontiguousarray(X[i : i + batch_size], dtype=np.float32)).to(device)).cpu()
        for i in range(0, len(X), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def val_recall_at_1(net: nn.Module, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                    device: str = "cpu") -> float:
    """Class-level Recall@1 of validation queries against the projected training set (exact search)."""
    gallery = Gallery.build(project(net, X, device=device), y)
    return recall_at_k(gallery.search(project(net, X_val, device=device), k=1).labels, y_val, 1)


@contextlib.contextmanager
def _seeded_sampler(seed: int) -> Iterator[None]:
    """MPerClassSampler draws from pml's module-level NumPy RNG; seed it for this run only."""
    saved = pml_common.NUMPY_RANDOM
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        yield
    finally:
        pml_common.NUMPY_RANDOM = saved


def train_metric(
    net: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    embedding_dim: int,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: MetricTrainConfig = MetricTrainConfig(),
) -> list[dict[str, float]]:
    """Train ``net`` (embeddings -> L2-normalised ``embedding_dim`` vectors) in place; returns the history."""
    y = np.asarray(y, dtype=np.int64)
    present = len(np.unique(y))
    if present < 2:
        raise KennerError("metric learning needs at least two classes in the training split")
    p = min(config.p, present)
    if p < config.p:
        log.info("only %d classes in the training split: using P=%d classes per batch", present, p)
    batch_size = p * config.k
    torch.manual_seed(config.seed)
    device = config.device
    net.to(device)
    arcface = losses.ArcFaceLoss(n_classes, embedding_dim, margin=math.degrees(config.arcface_margin),
                                 scale=config.arcface_scale).to(device)
    triplet = losses.TripletMarginLoss(margin=config.triplet_margin)
    miner = miners.TripletMarginMiner(margin=config.triplet_margin, type_of_triplets="semihard")
    optimizer = torch.optim.AdamW([*net.parameters(), *arcface.parameters()], lr=config.lr,
                                  weight_decay=config.weight_decay)
    sampler = samplers.MPerClassSampler(y, m=config.k, batch_size=batch_size,
                                        length_before_new_iter=max(len(y), batch_size))
    loader = DataLoader(TensorDataset(torch.from_numpy(np.asarray(X, dtype=np.float32)), torch.from_numpy(y)),
                        batch_size=batch_size, sampler=sampler, drop_last=True)
    validate = X_val is not None and y_val is not None and len(y_val) > 0
    history: list[dict[str, float]] = []
    best_recall, best_state, stale = -1.0, None, 0
    progress = tqdm(range(config.epochs), desc="metric learning", unit="epoch", disable=None)
    with _seeded_sampler(config.seed):
        for epoch in progress:
            started = time.perf_counter()
            arcface.margin = margin_at(epoch, config)  # pml keeps the margin in radians after init
            net.train()
            total, steps = 0.0, 0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                embeddings = net(xb)
                loss = arcface(embeddings, yb)
                if config.triplet_weight > 0:
                    loss = loss + config.triplet_weight * triplet(embeddings, yb, miner(embeddings, yb))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            record = {"epoch": epoch + 1, "loss": total / max(steps, 1), "margin": arcface.margin,
                      "seconds": time.perf_counter() - started}
            if validate:
                record["val_recall_at_1"] = val_recall_at_1(net, X, y, X_val, y_val, device)
                if record["val_recall_at_1"] > best_recall:
                    best_recall, stale = record["val_recall_at_1"], 0
                    best_state = copy.deepcopy(net.state_dict())
                elif epoch >= config.warmup_epochs:
                    stale += 1
            history.append(record)
            progress.set_postfix({k: round(record[k], 4) for k in ("loss", "val_recall_at_1") if k in record})
            if validate and config.patience and stale >= config.patience:
                log.info("early stop after epoch %d: no better val Recall@1 for %d epochs", epoch + 1, stale)
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history
