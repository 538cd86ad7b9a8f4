"""Metric-learning projection head: frozen embeddings -> L2-normalised retrieval embeddings.

An sklearn-style transformer: ``fit(X, y, X_val=..., y_val=...)`` trains it with
:func:`kenner.train.metric.train_metric` (ArcFace + mined triplets, P×K batches, early stopping on
val Recall@1); ``transform(X)`` returns unit vectors for a Faiss gallery; ``save``/``load`` use
safetensors + JSON.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from kenner.errors import KennerError
from kenner.io import atomic_write_bytes, atomic_write_json, read_json
from kenner.train.metric import MetricTrainConfig, project, train_metric

PROJ_TYPES = ("linear", "mlp")
WEIGHTS_FILE = "projection.safetensors"
CONFIG_FILE = "projection.json"


class ProjectionNet(nn.Module):
    """``linear``: one matrix; ``mlp``: Linear -> GELU -> Linear. Output is L2-normalised."""

    def __init__(
        self, in_dim: int, embedding_dim: int, proj_type: str = "mlp", hidden_dim: int = 512
    ) -> None:
        super().__init__()
        if proj_type == "linear":
            self.body = nn.Linear(in_dim, embedding_dim)
        elif proj_type == "mlp":
            self.body = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embedding_dim)
            )
        else:
            raise KennerError(f"--proj-type must be one of {', '.join(PROJ_TYPES)}, not {proj_type!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=-1)


class ProjectionHead:
    """Projection trained by metric learning; see :class:`kenner.train.metric.MetricTrainConfig` for knobs."""

    def __init__(
        self,
        proj_type: str = "mlp",
        embedding_dim: int = 128,
        hidden_dim: int = 512,
        train_config: MetricTrainConfig | None = None,
    ) -> None:
        if proj_type not in PROJ_TYPES:
            raise KennerError(f"--proj-type must be one of {', '.join(PROJ_TYPES)}, not {proj_type!r}")
        if embedding_dim < 1 or hidden_dim < 1:
            raise KennerError("--embedding-dim and the hidden size must be at least 1")
        self.proj_type = proj_type
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.train_config = train_config or MetricTrainConfig()

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        n_classes: int | None = None,
    ) -> ProjectionHead:
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
            raise KennerError(f"fit needs a non-empty [N, D] matrix and N labels; got {X.shape}, {y.shape}")
        self.in_dim_ = X.shape[1]
        self.n_classes_ = int(n_classes if n_classes is not None else y.max() + 1)
        self.net_ = ProjectionNet(self.in_dim_, self.embedding_dim, self.proj_type, self.hidden_dim)
        started = time.perf_counter()
        self.history_ = train_metric(
            self.net_, X, y, n_classes=self.n_classes_, embedding_dim=self.embedding_dim,
            X_val=X_val, y_val=y_val, config=self.train_config,
        )
        self.fit_seconds_ = time.perf_counter() - started
        recalls = [record.get("val_recall_at_1", -1.0) for record in self.history_]
        validated = "val_recall_at_1" in self.history_[0]
        self.best_epoch_ = int(np.argmax(recalls)) + 1 if validated else len(recalls)
        self.net_.cpu()
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """L2-normalised projections ([N, embedding_dim], float32)."""
        if not hasattr(self, "net_"):
            raise KennerError("the projection head is not fitted yet")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.in_dim_:
            raise KennerError(f"expected embeddings of dimension {self.in_dim_}, got shape {X.shape}")
        return project(self.net_, X)

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.net_.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, safetensors_bytes(state))
        atomic_write_json(directory / CONFIG_FILE, {
            "head_type": "projection",
            "proj_type": self.proj_type,
            "embedding_dim": self.embedding_dim,
            "hidden_dim": self.hidden_dim,
            "in_dim": self.in_dim_,
            "n_classes": self.n_classes_,
            "best_epoch": self.best_epoch_,
            "train_config": dataclasses.asdict(self.train_config),
            "history": self.history_,
        })
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ProjectionHead:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise KennerError(f"{directory}: no saved projection head ({CONFIG_FILE} + {WEIGHTS_FILE})")
        meta = read_json(directory / CONFIG_FILE)
        head = cls(meta["proj_type"], meta["embedding_dim"], meta["hidden_dim"],
                   MetricTrainConfig(**meta["train_config"]))
        head.in_dim_, head.n_classes_ = meta["in_dim"], meta["n_classes"]
        head.best_epoch_, head.history_ = meta["best_epoch"], meta["history"]
        head.net_ = ProjectionNet(head.in_dim_, head.embedding_dim, head.proj_type, head.hidden_dim)
        head.net_.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        head.net_.eval()
        return head
