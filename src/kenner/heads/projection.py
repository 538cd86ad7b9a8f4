"""Metric-learning projection: frozen embeddings -> L2-normalised retrieval embeddings.

A scikit-learn style transformer. ``fit(X, y, X_val=..., y_val=...)`` trains it with the one loop of
:mod:`kenner.loop.epochs` on P x K batches (P classes x K rows, pytorch-metric-learning's
``MPerClassSampler``): ArcFace (:class:`~kenner.heads.arcface.ArcFace`, margin 0 for
``margin_warmup_epochs`` epochs, then ramped by :func:`~kenner.heads.arcface.margin_at`) plus
``triplet_weight`` x a triplet margin loss on the pairs a semi-hard miner finds. Each epoch the validation
rows are searched among the projected training rows; the best epoch by validation Recall@1 (the warm-up
epochs do not use up patience) is restored. ``transform(X)`` gives unit vectors for a Faiss gallery.

Advice: s=64, m=0.5 suit hundreds of classes; with few classes (< ~50) lower them (s=16-30, m=0.2-0.3),
or ArcFace saturates and the triplet term does all the work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from kenner.config.fields import flag_name
from kenner.config.sections import (
    ArcFaceConfig,
    ComputeConfig,
    EarlyStoppingConfig,
    MetricConfig,
    OptimConfig,
    SamplerConfig,
    ScheduleConfig,
)
from kenner.config.tree import RunConfig, build_config, to_nested
from kenner.device import resolve_device
from kenner.errors import InvalidInput, KennerError
from kenner.evaluate.neighbours import recall_at_1
from kenner.heads.arcface import ArcFace, margin_at
from kenner.heads.classifier import as_embeddings
from kenner.heads.modules import reset_classifier_
from kenner.heads.training import schedule_of
from kenner.io import atomic_write_bytes, atomic_write_json, read_json
from kenner.loop.early_stopping import EarlyStopping
from kenner.loop.epochs import INFERENCE_CHUNK, batched, make_generator, make_optimizer, pk_order, run_epochs
from kenner.loop.schedulers import build_scheduler

log = logging.getLogger(__name__)

PROJECTION_MONITORS = ("recall_at_1", "loss")
WEIGHTS_FILE = "projection.safetensors"
CONFIG_FILE = "projection.json"
FORMAT = "kenner-projection"
FORMAT_VERSION = 2


def projection_params(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of a :class:`ProjectionHead` from a run's config (P x K sets the batch, so
    ``batch_size`` is not one of them)."""
    optim = {name: value for name, value in cfg.fields("optim").items() if name != "batch_size"}
    return {
        **cfg.fields("metric"),
        **optim,
        **cfg.fields("schedule", "early_stopping", "arcface"),
        "pk_p": cfg["pk_p"],
        "pk_k": cfg["pk_k"],
        "device": cfg["device"],
    }


class ProjectionNet(nn.Module):
    """``linear``: one matrix; ``mlp``: Linear -> GELU -> Linear. The output is L2-normalised."""

    def __init__(self, in_dim: int, embedding_dim: int, proj_type: str, hidden_dim: int) -> None:
        super().__init__()
        if proj_type == "linear":
            self.body: nn.Module = nn.Linear(in_dim, embedding_dim)
        else:
            self.body = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=-1)


class ProjectionHead(TransformerMixin, BaseEstimator):
    """A projection trained by metric learning; every parameter is a config field of the same name.

    Learned state: ``net_``, ``classes_``, ``n_features_in_``, ``history_`` (:mod:`kenner.loop.history`),
    ``best_epoch_``, ``fit_seconds_``.
    """

    def __init__(
        self,
        proj_type: str = MetricConfig.proj_type,
        *,
        embedding_dim: int = MetricConfig.embedding_dim,
        proj_hidden_dim: int = MetricConfig.proj_hidden_dim,
        triplet_weight: float = MetricConfig.triplet_weight,
        triplet_margin: float = MetricConfig.triplet_margin,
        epochs: int = OptimConfig.epochs,
        lr: float = OptimConfig.lr,
        weight_decay: float = OptimConfig.weight_decay,
        optimizer: str = OptimConfig.optimizer,
        seed: int = OptimConfig.seed,
        scheduler: str = ScheduleConfig.scheduler,
        warmup_epochs: int = ScheduleConfig.warmup_epochs,
        min_lr: float = ScheduleConfig.min_lr,
        t0: int = ScheduleConfig.t0,
        t_mult: int = ScheduleConfig.t_mult,
        plateau_factor: float = ScheduleConfig.plateau_factor,
        plateau_patience: int = ScheduleConfig.plateau_patience,
        patience: int = EarlyStoppingConfig.patience,
        monitor: str = EarlyStoppingConfig.monitor,
        min_epochs: int = EarlyStoppingConfig.min_epochs,
        arcface_scale: float = ArcFaceConfig.arcface_scale,
        arcface_margin: float = ArcFaceConfig.arcface_margin,
        margin_warmup_epochs: int = ArcFaceConfig.margin_warmup_epochs,
        margin_ramp_epochs: int = ArcFaceConfig.margin_ramp_epochs,
        pk_p: int = SamplerConfig.pk_p,
        pk_k: int = SamplerConfig.pk_k,
        device: str = ComputeConfig.device,
    ) -> None:
        self.proj_type = proj_type
        self.embedding_dim = embedding_dim
        self.proj_hidden_dim = proj_hidden_dim
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.seed = seed
        self.scheduler = scheduler
        self.warmup_epochs = warmup_epochs
        self.min_lr = min_lr
        self.t0 = t0
        self.t_mult = t_mult
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience
        self.patience = patience
        self.monitor = monitor
        self.min_epochs = min_epochs
        self.arcface_scale = arcface_scale
        self.arcface_margin = arcface_margin
        self.margin_warmup_epochs = margin_warmup_epochs
        self.margin_ramp_epochs = margin_ramp_epochs
        self.pk_p = pk_p
        self.pk_k = pk_k
        self.device = device

    def settings(self) -> dict[str, Any]:
        """The parameters, coerced and checked like the command line's flags (a KennerError names the flag)."""
        return projection_params(build_config([to_nested(self.get_params())]))

    def fit(self, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None) -> ProjectionHead:
        """Train on embeddings ``X`` [N, D] with labels ``y``; validation rows (labels of the same kind;
        classes unseen in training count as misses) pick the best epoch."""
        started = time.perf_counter()
        p = self.settings()
        monitor = "recall_at_1" if p["monitor"] == "auto" else p["monitor"]
        if monitor not in PROJECTION_MONITORS:
            raise KennerError(
                f"{flag_name('monitor')} {monitor} is not measured for metric learning; use "
                f"{', '.join(PROJECTION_MONITORS)} or auto"
            )
        try:
            X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite=False)
        except ValueError as error:
            raise InvalidInput(f"training data: {error}") from None
        X = as_embeddings(X, "training embeddings")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InvalidInput("metric learning needs at least two classes in the training split")
        has_val = X_val is not None and y_val is not None and len(X_val) > 0
        device = resolve_device(p["device"])
        n_classes = len(self.classes_)
        classes_per_batch = min(p["pk_p"], n_classes)
        if classes_per_batch < p["pk_p"]:
            log.info("only %d classes in the training split: using P=%d classes per batch", n_classes, n_classes)
        Xt = torch.as_tensor(X, device=device)
        yt = torch.as_tensor(y_index, device=device)
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(p["seed"])
            generator = make_generator(p["seed"])
            net = ProjectionNet(X.shape[1], p["embedding_dim"], p["proj_type"], p["proj_hidden_dim"])
            arcface = ArcFace(p["embedding_dim"], n_classes, p["arcface_scale"], p["arcface_margin"])
            reset_classifier_(arcface, generator)
            model = nn.ModuleDict({"net": net, "arcface": arcface}).to(device)
            triplet = losses.TripletMarginLoss(margin=p["triplet_margin"])
            miner = miners.TripletMarginMiner(margin=p["triplet_margin"], type_of_triplets="semihard")

            def step_loss(rows: torch.Tensor) -> torch.Tensor:
                embeddings, labels = net(Xt[rows]), yt[rows]
                loss = F.cross_entropy(arcface(embeddings, labels), labels)
                if p["triplet_weight"] > 0:
                    loss = loss + p["triplet_weight"] * triplet(embeddings, labels, miner(embeddings, labels))
                return loss

            def before_epoch(epoch: int) -> dict[str, Any]:
                arcface.margin = margin_at(
                    epoch,
                    margin=p["arcface_margin"],
                    warmup_epochs=p["margin_warmup_epochs"],
                    ramp_epochs=p["margin_ramp_epochs"],
                )
                return {"margin": arcface.margin}

            optimizer = make_optimizer(
                model.parameters(), optimizer=p["optimizer"], lr=p["lr"], weight_decay=p["weight_decay"]
            )
            scheduler = build_scheduler(optimizer, epochs=p["epochs"], monitor=monitor, **schedule_of(p))
            patience = p["patience"] if has_val else 0
            min_epochs = max(p["min_epochs"], p["margin_warmup_epochs"] + patience) if patience else p["min_epochs"]
            stopper = EarlyStopping(monitor, patience, min_epochs)
            self.history_ = run_epochs(
                "train",
                model,
                optimizer,
                step_loss,
                lambda _epoch: pk_order(y_index, classes_per_batch, p["pk_k"], generator),
                epochs=p["epochs"],
                stopper=stopper,
                scheduler=scheduler,
                before_epoch=before_epoch,
                evaluate=self._evaluator(model, Xt, y_index, X_val, y_val) if has_val else None,
            )
        self.net_ = net.cpu().eval()
        self.best_epoch_ = int(stopper.best_epoch[0])
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def transform(self, X: Any) -> np.ndarray:
        """L2-normalised projections [N, embedding_dim] float32."""
        check_is_fitted(self)
        try:
            X = validate_data(self, X, dtype=np.float32, ensure_all_finite=False, reset=False)
        except ValueError as error:
            raise InvalidInput(f"embeddings: {error}") from None
        return _project(self.net_, as_embeddings(X, "embeddings"))

    def save(self, directory: str | Path) -> Path:
        """Write ``projection.safetensors`` (the net) and ``projection.json`` (the rest)."""
        check_is_fitted(self)
        directory = Path(directory)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.net_.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, dump_tensors(state))
        atomic_write_json(
            directory / CONFIG_FILE,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "params": self.get_params(),
                "classes": self.classes_.tolist(),
                "input_dim": int(self.n_features_in_),
                "best_epoch": self.best_epoch_,
                "fit_seconds": self.fit_seconds_,
                "history": self.history_,
            },
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ProjectionHead:
        """A projection saved by :meth:`save`; it transforms exactly as before."""
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise KennerError(f"{directory}: no saved projection head ({CONFIG_FILE} + {WEIGHTS_FILE})")
        meta = read_json(directory / CONFIG_FILE)
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise KennerError(f"{directory / CONFIG_FILE}: not a projection of this kenner version; re-train it")
        head = cls(**meta["params"])
        p = head.settings()
        head.classes_, head.n_features_in_ = np.asarray(meta["classes"]), int(meta["input_dim"])
        head.best_epoch_, head.fit_seconds_, head.history_ = meta["best_epoch"], meta["fit_seconds"], meta["history"]
        head.net_ = ProjectionNet(head.n_features_in_, p["embedding_dim"], p["proj_type"], p["proj_hidden_dim"])
        head.net_.load_state_dict(load_tensors((directory / WEIGHTS_FILE).read_bytes()))
        head.net_.eval()
        return head

    def _evaluator(
        self, model: nn.ModuleDict, Xt: torch.Tensor, y_index: np.ndarray, X_val: Any, y_val: Any
    ) -> Callable[[], dict[str, float]]:
        """``() -> {recall_at_1, loss}`` on the validation rows: Recall@1 among the projected training rows,
        and the ArcFace cross-entropy (no margin) of the rows whose class was seen in training."""
        X_val = as_embeddings(X_val, "validation embeddings", self.n_features_in_)
        lookup = {label: index for index, label in enumerate(self.classes_.tolist())}
        yv_index = np.array([lookup.get(label, -1) for label in np.asarray(y_val).tolist()], dtype=np.int64)
        known = torch.as_tensor(yv_index >= 0, device=Xt.device)
        Xv = torch.as_tensor(X_val, device=Xt.device)
        yv = torch.as_tensor(yv_index, device=Xt.device)
        net, arcface = model["net"], model["arcface"]

        def evaluate() -> dict[str, float]:
            train, val = batched(net, Xt), batched(net, Xv)
            loss = F.cross_entropy(arcface(val[known]), yv[known]).item() if bool(known.any()) else float("nan")
            recall = recall_at_1(val.cpu().numpy(), yv_index, train.cpu().numpy(), y_index)
            return {"loss": loss, "recall_at_1": recall}

        return evaluate


@torch.inference_mode()
def _project(net: nn.Module, X: np.ndarray) -> np.ndarray:
    """``net`` (eval mode, CPU) over the rows of ``X`` in chunks; float32 numpy output."""
    return torch.cat([net(chunk) for chunk in torch.from_numpy(X).split(INFERENCE_CHUNK)]).numpy()
