"""Classification by retrieval: (optional projection) -> Faiss gallery -> kNN vote. Shared by ``knn`` and
``metric``.

Saved in a run's ``model/`` folder as ``gallery/`` (Faiss index, labels, ids, paths), ``projection/`` (when
metric learning trained one) and ``retrieval.json`` (the vote). Run rows that are in the gallery are scored
leave-one-out (each searched without itself), so train figures are not trivially perfect. Extras:
``knn_metrics.json`` (Recall@K, P@1, mAP@R, every vote's kNN scores), ``embeddings_val.npy`` /
``labels_val.npy`` and, with ``--eval-method hdbscan``, ``hdbscan_metrics.json`` / ``hdbscan_labels.npy``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kenner.config.tree import RunConfig
from kenner.errors import KennerError
from kenner.evaluate.report import format_number, markdown_table
from kenner.heads.projection import ProjectionHead
from kenner.io import atomic_write_json, read_json
from kenner.methods.base import SPLITS, Extras, Prediction, Predictor, Samples, TaskData
from kenner.retrieval.clustering import hdbscan_eval
from kenner.retrieval.index import Gallery, Neighbours, l2_normalize, save_npy
from kenner.retrieval.metrics import knn_classification, retrieval_metrics
from kenner.retrieval.vote import VOTE_METHODS, retrieval_confidence, vote

log = logging.getLogger(__name__)

SETTINGS_FILE = "retrieval.json"
MAX_EVAL_K = 1000  # neighbours searched for mAP@R; larger classes make mAP@R a lower bound


class GalleryPredictor(Predictor):
    """A Faiss gallery of (projected) training embeddings and a kNN vote over it."""

    def __init__(
        self,
        gallery: Gallery,
        class_names: list[str],
        *,
        projection: ProjectionHead | None = None,
        vote: str = "temperature",
        k: int = 20,
        temperature: float = 0.07,
        gallery_split: str = "train",
        eval_method: str = "knn",
        hdbscan_min_cluster_size: int = 5,
    ) -> None:
        self.gallery = gallery
        self.class_names = list(class_names)
        self.projection = projection
        self.vote = vote
        self.k = k
        self.temperature = temperature
        self.gallery_split = gallery_split
        self.eval_method = eval_method
        self.hdbscan_min_cluster_size = hdbscan_min_cluster_size
        self.history = projection.history_ if projection is not None else []

    @classmethod
    def build(cls, data: TaskData, cfg: RunConfig, projection: ProjectionHead | None) -> GalleryPredictor:
        """The gallery of ``data``'s train rows (and val rows with ``--gallery train+val``)."""
        r = cfg.retrieval
        rows = np.flatnonzero(data.mask("train") | (data.mask("val") if r.gallery == "train+val" else False))
        if len(rows) == 0:
            raise KennerError("the split has no training samples to build the gallery from; check --split-ratios")
        samples = data.samples.subset(rows)
        X = samples.features()
        Z = projection.transform(X) if projection is not None else l2_normalize(X)
        gallery = Gallery.build(
            Z,
            data.y[rows],
            factory=r.index_factory,
            search_params=r.search_params,
            class_names=data.class_names,
            ids=samples.ids,
            paths=[" | ".join(str(path) for path in paths.values()) for paths in samples.paths],
        )
        return cls(
            gallery,
            data.class_names,
            projection=projection,
            vote=r.vote,
            k=r.knn_k,
            temperature=r.knn_temperature,
            gallery_split=r.gallery,
            eval_method=r.eval_method,
            hdbscan_min_cluster_size=r.hdbscan_min_cluster_size,
        )

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Gallery-space vectors of encoder embeddings: the projection's output, or the normalised input."""
        return self.projection.transform(X) if self.projection is not None else l2_normalize(X)

    def search(self, samples: Samples, k: int, *, leave_one_out: bool = False) -> tuple[np.ndarray, Neighbours]:
        """Gallery-space vectors of ``samples`` and their ``k`` nearest gallery items (leave-one-out: a sample
        that is itself in the gallery, by id, is not its own neighbour)."""
        Z = self.embed(samples.features())
        exclude = None
        if leave_one_out and self.gallery.ids is not None:
            row_of = {sample_id: row for row, sample_id in enumerate(self.gallery.ids)}
            exclude = np.asarray([row_of.get(sample_id, -1) for sample_id in samples.ids], dtype=np.int64)
        return Z, self.gallery.search(Z, k, exclude=exclude)

    def predict(self, samples: Samples, *, leave_one_out: bool = False) -> Prediction:
        Z, neighbours = self.search(samples, self.k, leave_one_out=leave_one_out)
        return self.classify(neighbours, Z)

    def classify(self, neighbours: Neighbours, Z: np.ndarray | None = None) -> Prediction:
        """The vote over (at least ``k``) neighbours."""
        result = vote(neighbours, len(self.class_names), method=self.vote, k=self.k, temperature=self.temperature)
        distance, margin = retrieval_confidence(neighbours, result)
        return Prediction(
            scores=result.scores.astype(np.float64),
            distance=distance,
            margin=margin,
            neighbours=neighbours,
            embeddings=Z,
            distance_name="top-1 cosine distance",
        )

    def summary(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "gallery": f"{len(self.gallery)} {self.gallery_split} rows, Faiss {self.gallery.factory}",
            "vote": f"{self.vote}, k={self.k}",
        }
        if self.projection is not None:
            facts.update(
                {
                    "best epoch (val Recall@1)": self.projection.best_epoch_,
                    "fit s": round(self.projection.fit_seconds_, 2),
                }
            )
        return facts

    def extras(self, data: TaskData, prediction: Prediction, out_dir: Path) -> Extras:
        if prediction.embeddings is None:
            return Extras()
        Z, y, split = prediction.embeddings, data.y, data.split
        val = split == "val"
        save_npy(out_dir / "embeddings_val.npy", Z[val])
        save_npy(out_dir / "labels_val.npy", y[val])
        largest_class = int(np.bincount(self.gallery.labels).max())
        eval_k = max(1, min(len(self.gallery) - 1, max(self.k, 10, largest_class), MAX_EVAL_K))
        knn: dict[str, dict[str, Any]] = {}
        if self.eval_method != "none":
            _, neighbours = self.search(data.samples, eval_k, leave_one_out=True)
            in_gallery = np.isin(data.samples.ids, self.gallery.ids or [])
            knn = self._knn_report(neighbours, y, split, in_gallery)
            atomic_write_json(out_dir / "knn_metrics.json", knn)
        sections = [("Retrieval", self._markdown(knn, eval_k))]
        if self.eval_method == "hdbscan":
            sections.append(("HDBSCAN on val embeddings", self._hdbscan(Z[val], y[val], out_dir)))
        return Extras(metrics=knn, sections=sections)

    def _knn_report(
        self, neighbours: Neighbours, y: np.ndarray, split: np.ndarray, in_gallery: np.ndarray
    ) -> dict[str, dict[str, Any]]:
        """Per split: Recall@1/5/10, P@1, mAP@R and kNN accuracy / macro-F1 of every vote method."""
        report: dict[str, dict[str, Any]] = {}
        for name in SPLITS:
            mask = split == name
            if not mask.any():
                continue
            part = Neighbours(neighbours.indices[mask], neighbours.similarities[mask], neighbours.labels[mask])
            entry: dict[str, Any] = retrieval_metrics(
                part.labels, y[mask], self.gallery.labels, query_in_gallery=in_gallery[mask]
            )
            entry["leave_one_out"] = bool(in_gallery[mask].any())
            for method in VOTE_METHODS:
                voted = vote(part, len(self.class_names), method=method, k=self.k, temperature=self.temperature)
                scores = knn_classification(y[mask], voted.predictions)
                if method == self.vote:
                    entry.update(scores)
                entry.update({f"{method}_{key}": value for key, value in scores.items()})
            report[name] = entry
        return report

    def _markdown(self, knn: dict[str, dict[str, Any]], eval_k: int) -> str:
        lines = [
            f"Gallery: {len(self.gallery)} {self.gallery_split} rows in a Faiss `{self.gallery.factory}` "
            f"index (cosine similarity; distance = 1 − cosine). Vote: {self.vote} over k={self.k}; mAP@R "
            f"searched to {eval_k} neighbours. Gallery rows are scored leave-one-out.",
            "",
        ]
        if not knn:
            return "\n".join(lines)
        keys = [
            "recall_at_1",
            "recall_at_5",
            "recall_at_10",
            "map_at_r",
            "knn_accuracy",
            "knn_macro_f1",
            *(f"{m}_knn_macro_f1" for m in VOTE_METHODS),
        ]
        rows = [[name, *(format_number(values.get(key)) for key in keys)] for name, values in knn.items()]
        return "\n".join([*lines, markdown_table(["split", *keys], rows)])

    def _hdbscan(self, Z: np.ndarray, y: np.ndarray, out_dir: Path) -> str:
        if len(Z) < max(2, self.hdbscan_min_cluster_size):
            log.warning("HDBSCAN skipped: %d val embeddings, fewer than --hdbscan-min-cluster-size", len(Z))
            return "Skipped: too few validation embeddings."
        metrics, clusters = hdbscan_eval(Z, y, min_cluster_size=self.hdbscan_min_cluster_size)
        atomic_write_json(out_dir / "hdbscan_metrics.json", metrics)
        save_npy(out_dir / "hdbscan_labels.npy", clusters)
        return markdown_table(["metric", "value"], [[key, format_number(value)] for key, value in metrics.items()])

    def save(self, directory: Path) -> None:
        self.gallery.save(directory / "gallery")
        if self.projection is not None:
            self.projection.save(directory / "projection")
        atomic_write_json(
            directory / SETTINGS_FILE,
            {
                "projection": self.projection is not None,
                "vote": self.vote,
                "k": self.k,
                "temperature": self.temperature,
                "gallery_split": self.gallery_split,
                "eval_method": self.eval_method,
                "hdbscan_min_cluster_size": self.hdbscan_min_cluster_size,
                "distance": "1 - cosine similarity of L2-normalised vectors",
            },
        )

    @classmethod
    def load(cls, directory: Path, *, class_names: list[str], device: str = "auto") -> GalleryPredictor:
        if not (directory / SETTINGS_FILE).is_file():
            raise KennerError(f"{directory}: no {SETTINGS_FILE}; the run did not finish saving its model")
        settings = read_json(directory / SETTINGS_FILE)
        gallery = Gallery.load(directory / "gallery")
        projection = ProjectionHead.load(directory / "projection") if settings["projection"] else None
        return cls(
            gallery,
            class_names,
            projection=projection,
            vote=settings["vote"],
            k=settings["k"],
            temperature=settings["temperature"],
            gallery_split=settings["gallery_split"],
            eval_method=settings["eval_method"],
            hdbscan_min_cluster_size=settings["hdbscan_min_cluster_size"],
        )
