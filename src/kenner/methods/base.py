"""The contracts between the run driver and the methods: Samples, TaskData, Prediction, Predictor, Method.

The driver hands a method a :class:`TaskData` (rows, labels, split) and gets back a :class:`Predictor`;
whatever the method, a predictor turns :class:`Samples` into a :class:`Prediction` (class scores and the two
confidence signals the reject option reads) and saves itself into, and loads itself from, a run's
``model/`` folder. The driver never asks which method it holds.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kenner.encoders.views import combine_views, resolve_mode

if TYPE_CHECKING:
    from kenner.config.tree import RunConfig
    from kenner.encoders.embedder import AnyEmbedder
    from kenner.retrieval.index import Neighbours

SPLITS = ("train", "val", "test")


class Samples:
    """Rows to fit or predict on: an id and one image path per view each, and their embeddings on demand.

    Embeddings are computed (through the cache) the first time a method asks, for all rows at once, and
    shared with every subset taken afterwards; a method that reads pixels never triggers them.
    """

    def __init__(
        self, ids: Sequence[str], paths: Sequence[dict[str, Path]], *, embedder: AnyEmbedder | None, views: str
    ) -> None:
        if len(ids) != len(paths):
            raise ValueError(f"{len(ids)} ids but {len(paths)} path entries")
        self.ids = list(ids)
        self.paths = list(paths)
        self.embedder = embedder
        self.views = views
        self._per_view: dict[str, np.ndarray] | None = None
        self._parent: tuple[Samples, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def view_names(self) -> list[str]:
        return list(self.paths[0]) if self.paths else []

    def per_view(self) -> dict[str, np.ndarray]:
        """Embeddings per view, float32 [N, dim] each."""
        if self._per_view is None:
            if self._parent is not None:
                parent, index = self._parent
                self._per_view = {view: matrix[index] for view, matrix in parent.per_view().items()}
            elif self.embedder is None:
                raise RuntimeError("these samples have no encoder to embed them with")
            elif not self.ids:
                self._per_view = {}
            else:
                self._per_view = self.embedder.per_view(self.paths, self.view_names)
        return self._per_view

    def features(self) -> np.ndarray:
        """The views combined as ``views`` says (a view, ``avg`` or ``concat``): float32 [N, D]."""
        return combine_views(self.per_view(), self.views).astype(np.float32, copy=False)

    def subset(self, index: np.ndarray | Sequence[int]) -> Samples:
        """The rows ``index`` (integer positions or a boolean mask); embeddings are shared, not recomputed."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=np.int64)
        part = Samples(
            [self.ids[i] for i in index], [self.paths[i] for i in index], embedder=self.embedder, views=self.views
        )
        if self._per_view is not None:
            part._per_view = {view: matrix[index] for view, matrix in self._per_view.items()}
        else:
            part._parent = (self, index)
        return part

    def with_embeddings(self, per_view: dict[str, np.ndarray]) -> Samples:
        """These samples with embeddings already computed (tests, background rows)."""
        self._per_view = per_view
        return self


def concat_samples(first: Samples, second: Samples) -> Samples:
    """``first``'s rows, then ``second``'s (embeddings joined when both have them)."""
    joined = Samples(
        [*first.ids, *second.ids], [*first.paths, *second.paths], embedder=first.embedder, views=first.views
    )
    if first._per_view is not None and second._per_view is not None:
        joined._per_view = {
            view: np.concatenate([first._per_view[view], second._per_view[view]]) for view in first._per_view
        }
    return joined


@dataclass
class TaskData:
    """What a method is fitted on: samples, their class indices and split, the class names."""

    samples: Samples
    y: np.ndarray
    split: np.ndarray
    class_names: list[str]
    groups: list[str]
    background_class: str | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        self.split = np.asarray(self.split)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def mask(self, name: str) -> np.ndarray:
        return self.split == name

    def part(self, name: str) -> tuple[Samples, np.ndarray]:
        """The samples and labels of split ``name``."""
        mask = self.mask(name)
        return self.samples.subset(mask), self.y[mask]

    def with_split(self, split: np.ndarray) -> TaskData:
        return dataclasses.replace(self, split=np.asarray(split))


@dataclass
class Prediction:
    """Scores of every sample for every class, and the confidence signals of the reject option.

    ``distance``: lower is surer (the top-1 cosine distance for retrieval, ``1 - max probability`` for
    probabilities); ``margin``: higher is surer (top-1 minus top-2 score). ``neighbours`` and
    ``embeddings`` are there for methods with a gallery.
    """

    scores: np.ndarray
    distance: np.ndarray
    margin: np.ndarray
    neighbours: Neighbours | None = None
    embeddings: np.ndarray | None = None
    distance_name: str = "1 − max probability"

    @classmethod
    def from_proba(cls, proba: np.ndarray, **extra: Any) -> Prediction:
        """A prediction from class probabilities: distance ``1 - max p``, margin ``p1 - p2``."""
        proba = np.asarray(proba, dtype=np.float64)
        ordered = np.sort(proba, axis=1)
        second = ordered[:, -2] if proba.shape[1] > 1 else np.zeros(len(proba))
        return cls(scores=proba, distance=1.0 - ordered[:, -1], margin=ordered[:, -1] - second, **extra)

    @property
    def top1(self) -> np.ndarray:
        return self.scores.argmax(axis=1)


@dataclass
class Extras:
    """What a predictor adds to a run folder: metrics per split (joined into metrics.json) and report
    sections ``(title, markdown)``."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FitContext:
    """What a fit may need from the run besides its data and config."""

    out_dir: Path
    on_epoch: Callable[[dict[str, Any]], None] = lambda record: None
    resume: str | None = None
    fresh: bool = False


class Predictor(ABC):
    """A fitted method. Subclasses set ``class_names`` and ``history`` (per-epoch records, may be empty)."""

    class_names: list[str]
    history: list[dict[str, Any]]

    @abstractmethod
    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        """Scores for ``samples``. ``leave_one_out``: these are the run's own rows, so a gallery must not
        let a row vote for itself."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write what :meth:`load` needs into ``directory`` (a run's ``model/`` folder)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> Predictor:
        """The predictor saved in ``directory`` (``class_names``: the run's, from model_info.json)."""

    def input_views(self, view_names: list[str], views: str) -> list[str]:
        """The views a query item needs: the one view ``views`` picks, else every view."""
        mode = resolve_mode(view_names, views)
        return [mode] if mode in view_names else list(view_names)

    def summary(self) -> dict[str, Any]:
        """Facts for the report and model_info.json (best epoch, fit seconds, ...)."""
        return {}

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        """Method-specific artifacts and metrics for a run folder."""
        return Extras()


class Method(ABC):
    """A way to classify: turns task data and a config into a :class:`Predictor`."""

    predictor: type[Predictor]

    def task(self, data: TaskData, cfg: RunConfig) -> TaskData:
        """The rows and classes this method learns (most methods: the data as it is)."""
        return data

    @abstractmethod
    def fit(self, data: TaskData, cfg: RunConfig, context: FitContext) -> Predictor:
        """Train on ``data``'s train rows (validating on its val rows); test rows are never read."""
