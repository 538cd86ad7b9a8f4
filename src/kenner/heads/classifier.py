"""EmbeddingClassifier: a scikit-learn classifier that trains a head (linear, MLP, ArcFace) on embeddings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from kenner.config.sections import (
    ArcFaceConfig,
    ComputeConfig,
    EarlyStoppingConfig,
    HeadConfig,
    LossConfig,
    OptimConfig,
    ScheduleConfig,
)
from kenner.config.tree import RunConfig, build_config, to_nested
from kenner.device import resolve_device
from kenner.errors import InvalidInput, KennerError
from kenner.heads.calibration import fit_temperature
from kenner.heads.modules import HeadNet, build_head_net
from kenner.heads.training import inference_logits, resolve_monitor, train_head
from kenner.loop.epochs import batched, make_generator
from kenner.losses.logit_adjustment import log_prior

# The config sections whose fields are an EmbeddingClassifier's parameters (plus ``device``).
HEAD_SECTIONS = ("head", "optim", "schedule", "early_stopping", "arcface", "loss")

T = TypeVar("T")

log = logging.getLogger(__name__)


def head_params(cfg: RunConfig) -> dict[str, Any]:
    """The keyword arguments of an :class:`EmbeddingClassifier` from a run's config."""
    params = {**cfg.fields(*HEAD_SECTIONS), "device": cfg["device"]}
    if params.pop("loss") != "ce":
        raise KennerError("--loss supcon fine-tunes an encoder (method finetune); a head's SupCon is --supcon-weight")
    return params


class EmbeddingClassifier(ClassifierMixin, BaseEstimator):
    """A head on float32 embeddings; every parameter is a config field of the same name (see ``--help``).

    Learned state: ``classes_``, ``n_features_in_``, ``model_``, ``mean_``/``scale_`` (standardisation,
    train rows only), ``log_prior_`` (train class prior), ``temperature_``, ``history_`` (the schema of
    :mod:`kenner.loop.history`), ``best_epoch_``, ``fit_seconds_``.
    """

    def __init__(
        self,
        head_type: str = HeadConfig.head_type,
        *,
        hidden_sizes: tuple[int, ...] = HeadConfig.hidden_sizes,
        gelu_ln: bool = HeadConfig.gelu_ln,
        dropout: float = HeadConfig.dropout,
        standardize: str = HeadConfig.standardize,
        logit_adjust: str = HeadConfig.logit_adjust,
        logit_tau: float = HeadConfig.logit_tau,
        balanced_softmax: bool = HeadConfig.balanced_softmax,
        hardmine_epochs: int = HeadConfig.hardmine_epochs,
        crt_epochs: int = HeadConfig.crt_epochs,
        calibrate: bool = HeadConfig.calibrate,
        manifold_mixup: float = HeadConfig.manifold_mixup,
        feature_noise: float = HeadConfig.feature_noise,
        feature_scale: float = HeadConfig.feature_scale,
        feature_aug_p: float = HeadConfig.feature_aug_p,
        supcon_weight: float = HeadConfig.supcon_weight,
        supcon_temperature: float = HeadConfig.supcon_temperature,
        supcon_dim: int = HeadConfig.supcon_dim,
        center_loss_weight: float = HeadConfig.center_loss_weight,
        epochs: int = OptimConfig.epochs,
        batch_size: int = OptimConfig.batch_size,
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
        label_smoothing: float = LossConfig.label_smoothing,
        class_weight: str = LossConfig.class_weight,
        effective_beta: float = LossConfig.effective_beta,
        mixup: float = LossConfig.mixup,
        device: str = ComputeConfig.device,
    ) -> None:
        self.head_type = head_type
        self.hidden_sizes = hidden_sizes
        self.gelu_ln = gelu_ln
        self.dropout = dropout
        self.standardize = standardize
        self.logit_adjust = logit_adjust
        self.logit_tau = logit_tau
        self.balanced_softmax = balanced_softmax
        self.hardmine_epochs = hardmine_epochs
        self.crt_epochs = crt_epochs
        self.calibrate = calibrate
        self.manifold_mixup = manifold_mixup
        self.feature_noise = feature_noise
        self.feature_scale = feature_scale
        self.feature_aug_p = feature_aug_p
        self.supcon_weight = supcon_weight
        self.supcon_temperature = supcon_temperature
        self.supcon_dim = supcon_dim
        self.center_loss_weight = center_loss_weight
        self.epochs = epochs
        self.batch_size = batch_size
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
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.effective_beta = effective_beta
        self.mixup = mixup
        self.device = device

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        X_val: Any = None,
        y_val: Any = None,
        classes: Any = None,
        init: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> EmbeddingClassifier:
        """Train on ``X`` [N, D] with labels ``y`` (any hashable labels). ``classes`` fixes the class list
        and its order (some classes may be absent from ``y``); validation rows (same label space) drive
        early stopping and temperature calibration. ``init``: a linear head's starting ``(weight [C, D],
        bias [C])`` on the raw embeddings (e.g. zero-shot weights), carried through the standardisation."""
        start = time.perf_counter()
        params = self.settings()
        resolve_monitor(params["monitor"])  # a KennerError now rather than after the first epoch
        X, y = _checked("training data", lambda: validate_data(self, X, y, dtype=np.float32, ensure_all_finite=False))
        _check_finite(X, "training embeddings")
        _checked("training labels", lambda: check_classification_targets(y))
        if classes is None:
            self.classes_, y_index = np.unique(y, return_inverse=True)
        else:
            self.classes_ = np.asarray(classes)
            y_index = encode_labels(y, self.classes_, "training labels")
        if len(self.classes_) < 2:
            raise InvalidInput(
                f"training labels: one class only ({self.classes_[0]!r}); a classifier needs at least two"
            )
        has_val = X_val is not None and y_val is not None and len(X_val) > 0
        if has_val:
            X_val = self._check_X(X_val, "validation embeddings")
            y_val_index = encode_labels(y_val, self.classes_, "validation labels", rows=len(X_val))
        if params["calibrate"] and not has_val:
            log.info("no validation rows: the head's probabilities are not calibrated (temperature 1)")
        device = resolve_device(params["device"])
        n_classes = len(self.classes_)
        self.mean_, self.scale_ = fit_standardizer(X, params["standardize"])
        self.log_prior_ = log_prior(np.bincount(y_index, minlength=n_classes)).numpy()
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(params["seed"])
            generator = make_generator(params["seed"])
            model = build_head_net(params, X.shape[1], n_classes, generator)
            if init is not None:
                self._start_from(model, *init)
            model = model.to(device)
            X_val_t = self._tensor(X_val, device) if has_val else None
            y_val_t = torch.as_tensor(y_val_index, device=device) if has_val else None
            self.history_, self.best_epoch_ = train_head(
                model,
                self._tensor(X, device),
                torch.as_tensor(y_index, device=device),
                params,
                n_classes=n_classes,
                generator=generator,
                X_val=X_val_t,
                y_val=y_val_t,
            )
        self.model_ = model.eval()
        self.temperature_ = 1.0
        if params["calibrate"] and has_val:
            self.temperature_ = fit_temperature(self._logits(X_val), y_val_index)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _start_from(self, model: HeadNet, weight: np.ndarray, bias: np.ndarray) -> None:
        """Set a linear head so that its logits on standardised rows equal ``X @ weight.T + bias`` on raw ones."""
        layer = model.classifier
        if self.head_type != "linear" or not isinstance(layer, torch.nn.Linear) or layer.weight.shape != weight.shape:
            raise InvalidInput(f"a starting weight of shape {weight.shape} fits only a linear head of that shape")
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(weight * self.scale_[None, :], dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(bias + weight @ self.mean_, dtype=torch.float32))

    def settings(self) -> dict[str, Any]:
        """The parameters, coerced and checked like the command line's flags (a KennerError names the flag)."""
        return head_params(build_config([to_nested(self.get_params())]))

    def logits(self, X: Any) -> np.ndarray:
        """The logits predictions come from, [N, n_classes] float32: with the inference-time logit adjustment
        (``logit_adjust`` infer/both), without the temperature."""
        check_is_fitted(self)
        return self._logits(self._check_X(X, "embeddings")).cpu().numpy()

    def decision_function(self, X: Any) -> np.ndarray:
        """scikit-learn's scores: :meth:`logits` ([N, n_classes]); for two classes the logit difference of
        ``classes_[1]`` over ``classes_[0]`` ([N]). Their argmax (sign) is :meth:`predict`."""
        logits = self.logits(X).astype(np.float64)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """``softmax(logits / temperature_)`` [N, n_classes] float64, columns in ``classes_`` order."""
        logits = torch.as_tensor(self.logits(X)).double() / self.temperature_
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        index = self.logits(X).argmax(axis=1)
        return self.classes_[index]

    def embed(self, X: Any) -> np.ndarray:
        """Penultimate features [N, F] (the standardised input for a linear head)."""
        check_is_fitted(self)
        model: HeadNet = self.model_
        return batched(model.features, self._tensor(self._check_X(X, "embeddings"))).cpu().numpy()

    def save(self, directory: str | Path) -> Path:
        """Write ``head.safetensors`` + ``head.json`` (see :func:`kenner.heads.persist.save_head`)."""
        from kenner.heads.persist import save_head

        return save_head(self, directory)

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto") -> EmbeddingClassifier:
        from kenner.heads.persist import load_head

        return load_head(directory, device=device)

    def _check_X(self, X: Any, what: str) -> np.ndarray:
        """Rows of the fitted width, finite, float32 (an InvalidInput names what is wrong)."""
        X = _checked(what, lambda: validate_data(self, X, dtype=np.float32, ensure_all_finite=False, reset=False))
        _check_finite(X, what)
        return X

    def _tensor(self, X: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """Standardised float32 tensor on the model's (or the given) device."""
        device = device or next(self.model_.parameters()).device
        return torch.as_tensor((X - self.mean_) / self.scale_, dtype=torch.float32, device=device)

    def _logits(self, X: np.ndarray) -> torch.Tensor:
        model: HeadNet = self.model_
        raw = batched(model, self._tensor(X))
        prior = torch.as_tensor(self.log_prior_, device=raw.device)
        return inference_logits(raw, prior, self.get_params())


def fit_standardizer(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` from the training rows; identity for ``none``, unit scale for ``center``."""
    dim = X.shape[1]
    mean = X.mean(axis=0, dtype=np.float64) if mode != "none" else np.zeros(dim)
    scale = X.std(axis=0, dtype=np.float64) if mode == "standardize" else np.ones(dim)
    scale[scale < 1e-6] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def encode_labels(labels: Any, classes: np.ndarray, what: str, *, rows: int | None = None) -> np.ndarray:
    """Indices of ``labels`` (one per embedding row when ``rows`` is given) in ``classes``; an InvalidInput
    names the first row with an unknown label."""
    lookup = {label: index for index, label in enumerate(np.asarray(classes).tolist())}
    if len(lookup) != len(classes):
        raise InvalidInput(f"classes: {len(classes)} given, but only {len(lookup)} distinct")
    values = np.asarray(labels).ravel().tolist()
    if rows is not None and len(values) != rows:
        raise InvalidInput(f"{what}: {len(values)} labels for {rows} rows of embeddings")
    index = np.fromiter((lookup.get(value, -1) for value in values), dtype=np.int64, count=len(values))
    bad = np.flatnonzero(index < 0)
    if len(bad):
        shown = ", ".join(map(repr, np.asarray(classes).tolist()[:10]))
        raise InvalidInput(
            f"{what}: row {bad[0]} (0-based) has label {values[bad[0]]!r}, not one of the "
            f"{len(classes)} classes ({shown}{', ...' if len(classes) > 10 else ''})"
        )
    return index


def as_embeddings(X: Any, what: str, dim: int | None = None) -> np.ndarray:
    """``X`` as a finite float32 matrix [N, D] (``D == dim`` when given); an InvalidInput says what is wrong."""
    X = _checked(what, lambda: check_array(X, dtype=np.float32, ensure_all_finite=False))
    if dim is not None and X.shape[1] != dim:
        raise InvalidInput(
            f"{what}: {X.shape[1]} columns, but the head was built for {dim}; use embeddings "
            "from the same encoder and view mode"
        )
    _check_finite(X, what)
    return X


def _checked(what: str, check: Callable[[], T]) -> T:
    """Run a scikit-learn validation; its ValueError becomes an InvalidInput saying what was checked."""
    try:
        return check()
    except ValueError as error:
        if isinstance(error, KennerError):
            raise
        raise InvalidInput(f"{what}: {error}") from None


def _check_finite(X: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise InvalidInput(
            f"{what}: row {bad[0]} (0-based) contains NaN or infinity ({len(bad)} such rows); re-extract the embeddings"
        )
