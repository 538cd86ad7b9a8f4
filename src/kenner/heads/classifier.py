"""EmbeddingClassifier: a scikit-learn estimator that trains a head (linear, MLP, ArcFace) on embeddings."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from kenner.device import resolve_device
from kenner.errors import KennerError
from kenner.heads.config import HeadConfig
from kenner.heads.modules import HeadNet, build_head_net
from kenner.losses.logit_adjustment import log_prior
from kenner.train.calibrate import fit_temperature
from kenner.train.loop import batched, inference_logits, make_generator, train_head


class EmbeddingClassifier(ClassifierMixin, BaseEstimator):
    """A head on float32 embeddings, configured by one :class:`HeadConfig`.

    ``EmbeddingClassifier(lr=0.01)`` is shorthand for ``EmbeddingClassifier(HeadConfig(lr=0.01))``;
    ``set_params`` accepts HeadConfig field names too (for GridSearchCV). Learned state: ``model_``,
    ``mean_``/``scale_`` (standardisation, train rows only), ``log_prior_`` (train class prior),
    ``temperature_``, ``history_``, ``best_epoch_``, ``fit_seconds_``, ``classes_``, ``n_features_in_``.
    """

    def __init__(self, config: HeadConfig | None = None, **overrides: Any) -> None:
        if overrides:
            config = _replace(config or HeadConfig(), overrides)
        self.config = config

    def set_params(self, **params: Any) -> EmbeddingClassifier:
        knobs = {k: params.pop(k) for k in list(params) if k != "config"}
        super().set_params(**params)
        if knobs:
            self.config = _replace(self._config(), knobs)
        return self

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        n_classes: int | None = None,
    ) -> EmbeddingClassifier:
        """Train on ``X`` [N, D] with labels ``y`` in ``0..n_classes-1``; validation rows drive early
        stopping and temperature calibration."""
        start = time.perf_counter()
        config = self._config()
        X = _check_embeddings(X, "training embeddings")
        y = _check_labels(y, len(X), n_classes, "training labels")
        n_classes = int(n_classes) if n_classes is not None else int(y.max()) + 1
        has_val = X_val is not None and y_val is not None and len(X_val) > 0
        if has_val:
            X_val = _check_embeddings(X_val, "validation embeddings", dim=X.shape[1])
            y_val = _check_labels(y_val, len(X_val), n_classes, "validation labels")
        if config.calibrate and not has_val:
            raise KennerError("--calibrate fits the temperature on validation data; pass X_val and y_val")
        device = resolve_device(config.device)
        self.classes_ = np.arange(n_classes)
        self.n_features_in_ = X.shape[1]
        self.mean_, self.scale_ = fit_standardizer(X, config.standardize)
        self.log_prior_ = log_prior(np.bincount(y, minlength=n_classes)).numpy()
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(config.seed)
            generator = make_generator(config.seed)
            model = build_head_net(config, X.shape[1], n_classes, generator).to(device)
            val = (self._tensor(X_val, device), torch.as_tensor(y_val, device=device)) if has_val else (None, None)
            result = train_head(
                model, self._tensor(X, device), torch.as_tensor(y, device=device), config,
                n_classes=n_classes, generator=generator, X_val=val[0], y_val=val[1],
            )
        self.model_ = model.eval()
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.temperature_ = 1.0
        if config.calibrate:
            self.temperature_ = fit_temperature(self._adjusted_logits(X_val), y_val)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Raw logits [N, C] (no logit adjustment, no temperature)."""
        return self._logits(X).cpu().numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``softmax((logits - tau * log_prior) / temperature_)``; the prior term only with
        ``logit_adjust`` infer/both."""
        logits = self._adjusted_logits(X).double() / self.temperature_
        return torch.softmax(logits, dim=1).cpu().numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self._adjusted_logits(X).argmax(dim=1).cpu().numpy()]

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Penultimate features [N, F] (the standardised input for a linear head)."""
        check_is_fitted(self, "model_")
        return batched(self.model_.features, self._tensor(X)).cpu().numpy()

    def save(self, directory: str | Path) -> Path:
        """Write ``head.safetensors`` + ``head.json`` (see :func:`kenner.heads.persist.save_head`)."""
        from kenner.heads.persist import save_head

        return save_head(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingClassifier:
        from kenner.heads.persist import load_head

        return load_head(directory)

    def _config(self) -> HeadConfig:
        """The effective configuration (defaults when ``config`` is None)."""
        return self.config or HeadConfig()

    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _tensor(self, X: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
        """Standardised float32 tensor on the model's device."""
        X = _check_embeddings(X, "embeddings", dim=self.n_features_in_)
        X = (X - self.mean_) / self.scale_
        return torch.as_tensor(X, dtype=torch.float32, device=device or self._device())

    def _logits(self, X: np.ndarray) -> torch.Tensor:
        check_is_fitted(self, "model_")
        model: HeadNet = self.model_
        return batched(model, self._tensor(X))

    def _adjusted_logits(self, X: np.ndarray) -> torch.Tensor:
        prior = torch.as_tensor(self.log_prior_, device=self._device())
        return inference_logits(self._logits(X), prior, self._config())


def _replace(config: HeadConfig, overrides: dict[str, Any]) -> HeadConfig:
    known = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise KennerError(f"unknown head option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(config, **overrides)


def fit_standardizer(X: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` from the training rows; identity for ``none``, unit scale for ``center``."""
    dim = X.shape[1]
    mean = X.mean(axis=0, dtype=np.float64) if mode != "none" else np.zeros(dim)
    scale = X.std(axis=0, dtype=np.float64) if mode == "standardize" else np.ones(dim)
    scale[scale < 1e-6] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def _check_embeddings(X: Any, what: str, dim: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise KennerError(f"{what}: expected a non-empty 2-D array [rows, dim], got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise KennerError(f"{what}: {X.shape[1]} columns, but the head was built for {dim}; "
                          "use embeddings from the same encoder and view mode")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise KennerError(f"{what}: row {bad[0]} (0-based) contains NaN or infinity ({len(bad)} such rows); "
                          "re-extract the embeddings")
    return X


def _check_labels(y: Any, n_rows: int, n_classes: int | None, what: str) -> np.ndarray:
    """Integer labels in ``0..n_classes-1`` (any non-negative integer when ``n_classes`` is None)."""
    y = np.asarray(y)
    if y.shape != (n_rows,) or not np.issubdtype(y.dtype, np.integer):
        raise KennerError(f"{what}: expected {n_rows} integer class indices, got {y.dtype} array of "
                          f"shape {y.shape}")
    n_classes = n_classes if n_classes is not None else int(y.max()) + 1
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        raise KennerError(f"{what}: row {bad[0]} (0-based) has class {y[bad[0]]}, outside 0..{n_classes - 1}")
    return y.astype(np.int64)
