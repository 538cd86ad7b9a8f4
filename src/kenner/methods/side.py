"""``side``: the coin side classifier. Which order are two photos in, or which side does one photo show?

Two tasks on two-view data (views ``(a, b)``, e.g. obverse and reverse):

- ``pair``: each sample gives two rows, ``(a, b) -> "a|b"`` and ``(b, a) -> "b|a"``; a head on the concatenated
  features of the two photos tells the order.
- ``single``: each photo alone, ``a -> "a"`` and ``b -> "b"``, for sorting unlabelled photos before pairing.

Both rows of a sample stay in its split, so a coin never leaks between train and test. Features are the
cached pooled embeddings, or, for ViT encoders, patch tokens pooled with foreground weights
(:func:`kenner.encoders.tokens.pooled_tokens`; ``--disable-mask-pooling`` turns that off).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.data.manifest import FOLDER_VIEW
from kenner.encoders.tokens import has_patch_tokens, pooled_tokens
from kenner.errors import KennerError
from kenner.heads import EmbeddingClassifier, head_params
from kenner.io import atomic_write_json, read_json
from kenner.methods.base import Extras, FitContext, Method, Prediction, Predictor, Samples, TaskData

log = logging.getLogger(__name__)

SETTINGS_FILE = "side.json"


def side_class_names(views: list[str], task: str) -> list[str]:
    """``["a|b", "b|a"]`` (pair order) or ``["a", "b"]`` (single photo)."""
    if len(views) != 2:
        raise KennerError(
            f"the side classifier needs a two-view manifest (e.g. obverse_path and reverse_path "
            f"columns); this dataset has {len(views)} view(s): {', '.join(views)}"
        )
    first, second = views
    return [f"{first}|{second}", f"{second}|{first}"] if task == "pair" else [first, second]


class SidePredictor(Predictor):
    """A head on the features of one photo (single) or of two photos in a given order (pair)."""

    def __init__(
        self, head: EmbeddingClassifier, class_names: list[str], *, task: str, views: list[str], mask_pooling: bool
    ) -> None:
        self.head = head
        self.class_names = list(class_names)
        self.task = task
        self.views = list(views)
        self.mask_pooling = mask_pooling
        self.history = getattr(head, "history_", [])  # a head is fitted after the predictor picks its features
        self._last: tuple[Samples, np.ndarray] | None = None

    def input_views(self, view_names: list[str], views: str) -> list[str]:
        return [FOLDER_VIEW] if self.task == "single" else list(self.views)

    def features(self, samples: Samples) -> np.ndarray:
        """Per photo: pooled patch tokens or cached embeddings; pairs concatenated in their order. The last
        samples' features are kept (tokens are not cached, and a run scores the rows it was fitted on)."""
        if self._last is not None and self._last[0] is samples:
            return self._last[1]
        if self.mask_pooling:
            encoder, background = samples.embedder.encoder, samples.embedder.background
            X = np.hstack(
                [
                    pooled_tokens(encoder, [paths[view] for paths in samples.paths], background=background)
                    for view in samples.view_names
                ]
            )
        else:
            X = np.hstack([samples.per_view()[view] for view in samples.view_names])
        self._last = (samples, X)
        return X

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        return Prediction.from_proba(self.head.predict_proba(self.features(samples)))

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "features": "patch tokens, mask-weighted pooling" if self.mask_pooling else "pooled embeddings (cached)",
            "best epoch": self.head.best_epoch_,
        }

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        atomic_write_json(
            out_dir / "label_mapping.json",
            {
                "task": self.task,
                "views": self.views,
                "classes": dict(enumerate(self.class_names)),
                "class_to_idx": {name: i for i, name in enumerate(self.class_names)},
            },
        )
        rows = "both view orders" if self.task == "pair" else "one per photo"
        return Extras(
            sections=[
                (
                    "Side classifier",
                    f"Classes: {', '.join(self.class_names)}. Each sample gives "
                    f"two rows ({rows}); both stay in the sample's split.",
                )
            ]
        )

    def save(self, directory: Path) -> None:
        self.head.save(directory)
        atomic_write_json(
            directory / SETTINGS_FILE, {"task": self.task, "views": self.views, "mask_pooling": self.mask_pooling}
        )

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> SidePredictor:
        settings = read_json(directory / SETTINGS_FILE)
        return cls(
            EmbeddingClassifier.load(directory),
            class_names,
            task=settings["task"],
            views=settings["views"],
            mask_pooling=settings["mask_pooling"],
        )


class SideMethod(Method):
    predictor = SidePredictor

    def task(self, data: TaskData, cfg: RunConfig) -> TaskData:
        """Two rows per sample: both orders of its two photos (pair) or each photo alone (single)."""
        views = data.samples.view_names
        task = cfg.side.side_task
        names = side_class_names(views, task)
        first, second = views
        ids, paths, labels, source = [], [], [], []
        for label, (one, other) in enumerate(((first, second), (second, first))):
            for i, (sample_id, item) in enumerate(zip(data.samples.ids, data.samples.paths, strict=True)):
                ids.append(f"{sample_id}:{names[label]}")
                paths.append({first: item[one], second: item[other]} if task == "pair" else {FOLDER_VIEW: item[one]})
                labels.append(label)
                source.append(i)
        source_rows = np.asarray(source)
        samples = Samples(ids, paths, embedder=data.samples.embedder, views="concat" if task == "pair" else FOLDER_VIEW)
        return TaskData(
            samples=samples,
            y=np.asarray(labels),
            split=data.split[source_rows],
            class_names=names,
            groups=[data.groups[i] for i in source_rows],
        )

    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> SidePredictor:
        embedder = data.samples.embedder
        mask_pooling = not cfg.side.disable_mask_pooling and has_patch_tokens(embedder.encoder)
        if not cfg.side.disable_mask_pooling and not mask_pooling:
            log.info("encoder %s has no patch tokens: the side classifier uses its pooled embeddings", embedder.spec)
        views = data.samples.view_names if cfg.side.side_task == "pair" else data.class_names
        predictor = SidePredictor(
            EmbeddingClassifier(**head_params(cfg)),
            data.class_names,
            task=cfg.side.side_task,
            views=views,
            mask_pooling=mask_pooling,
        )
        train, val = data.mask("train"), data.mask("val")
        X = predictor.features(data.samples)
        predictor.head.fit(
            X[train],
            data.y[train],
            X_val=X[val] if val.any() else None,
            y_val=data.y[val] if val.any() else None,
            classes=np.arange(data.n_classes),
        )
        predictor.history = predictor.head.history_
        return predictor
