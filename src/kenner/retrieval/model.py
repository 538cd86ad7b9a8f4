"""Classification by retrieval: optional projection -> Faiss gallery -> kNN vote -> reject option.

Saved in a run's ``model/`` folder as ``gallery/`` (Faiss index, labels, ids, paths), ``projection/``
(when metric learning trained one) and ``retrieval.json`` (vote settings and the reject rule), so
``kenner predict`` and ``kenner search`` answer exactly as the run was evaluated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kenner.errors import KennerError
from kenner.heads.projection import ProjectionHead
from kenner.io import atomic_write_json, read_json
from kenner.retrieval.index import Gallery, Neighbours, l2_normalize
from kenner.evaluate.reject import RejectRule
from kenner.retrieval.vote import retrieval_confidence, vote

SETTINGS_FILE = "retrieval.json"


@dataclass(frozen=True)
class RetrievalPrediction:
    scores: np.ndarray  # [Q, C] normalised vote scores
    predicted: np.ndarray  # [Q] class index; -1 where the reject rule says "unclassifiable"
    voted: np.ndarray  # [Q] class index before the reject rule
    distance: np.ndarray  # [Q] top-1 cosine distance
    margin: np.ndarray  # [Q] vote margin (top-1 minus top-2 score)
    neighbours: Neighbours


@dataclass
class RetrievalModel:
    gallery: Gallery
    n_classes: int
    projection: ProjectionHead | None = None
    vote: str = "temperature"
    k: int = 20
    temperature: float = 0.07
    reject: RejectRule | None = None

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Gallery-space vectors for encoder embeddings: the projection's output, or the normalised input."""
        return self.projection.transform(X) if self.projection is not None else l2_normalize(X)

    def search(self, X: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> Neighbours:
        """Nearest gallery items of encoder embeddings ``X``."""
        return self.gallery.search(self.embed(X), k, exclude=exclude)

    def classify_neighbours(self, neighbours: Neighbours) -> RetrievalPrediction:
        """Vote over (at least ``k``) precomputed neighbours and apply the reject rule."""
        result = vote(neighbours, self.n_classes, method=self.vote, k=self.k, temperature=self.temperature)
        distance, margin = retrieval_confidence(neighbours, result)
        predicted = result.predictions
        if self.reject is not None:
            predicted = np.where(self.reject.accept(distance, margin), predicted, -1)
        return RetrievalPrediction(scores=result.scores, predicted=predicted, voted=result.predictions,
                                   distance=distance, margin=margin, neighbours=neighbours)

    def classify(self, X: np.ndarray, *, exclude: np.ndarray | None = None) -> RetrievalPrediction:
        """Predict classes of encoder embeddings ``X`` by retrieval (``-1`` = unclassifiable)."""
        return self.classify_neighbours(self.search(X, self.k, exclude=exclude))

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        self.gallery.save(directory / "gallery")
        if self.projection is not None:
            self.projection.save(directory / "projection")
        atomic_write_json(directory / SETTINGS_FILE, self.settings())
        return directory

    def settings(self) -> dict:
        """The JSON-friendly description saved as ``retrieval.json``."""
        return {
            "n_classes": self.n_classes,
            "projection": self.projection is not None,
            "vote": self.vote,
            "k": self.k,
            "temperature": self.temperature,
            "reject": self.reject.to_dict() if self.reject is not None else None,
            "distance": "1 - cosine similarity of L2-normalised vectors",
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RetrievalModel:
        directory = Path(directory)
        if not (directory / SETTINGS_FILE).is_file():
            raise KennerError(f"{directory}: no {SETTINGS_FILE}; is this the model/ folder of a metric run?")
        settings = read_json(directory / SETTINGS_FILE)
        return cls(
            gallery=Gallery.load(directory / "gallery"),
            n_classes=settings["n_classes"],
            projection=ProjectionHead.load(directory / "projection") if settings["projection"] else None,
            vote=settings["vote"],
            k=settings["k"],
            temperature=settings["temperature"],
            reject=RejectRule.from_dict(settings["reject"]) if settings["reject"] else None,
        )
