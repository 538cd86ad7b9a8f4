"""The server's model: a run loaded once, answering batches of queries with the run's own predictor and decisions.

Images are decoded and preprocessed exactly as the run's extraction does (``load_image`` with JPEG draft mode,
the encoder's transform) and embedded in memory, one encoder batch for a whole micro-batch of queries; the
embeddings go into :class:`kenner.methods.base.Samples` and through the run's predictor and decision rules
(:meth:`kenner.runs.load.RunModel.answer`), as ``kenner predict`` does. Uploads never enter the embedding cache.
Methods that read pixels themselves (fine-tuning, side with token pooling) and encoder ensembles get the files'
paths (an ensemble embeds them through the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kenner.data.images import load_image
from kenner.encoders.base import Preprocessing
from kenner.encoders.embedder import Embedder
from kenner.evaluate.outputs import top_k
from kenner.evaluate.reject import UNCLASSIFIABLE
from kenner.evaluate.reject_report import rule_text
from kenner.io import read_json
from kenner.methods.base import Prediction
from kenner.methods.gallery import GalleryPredictor
from kenner.runs.load import RunModel, load_predictor
from kenner.runs.onnx import Runner


@dataclass
class Query:
    """One item to answer: an id and one image file per input view."""

    id: str
    paths: dict[str, Path]
    top_k: int = 5
    neighbours: int = 0


class Engine:
    """A run ready to answer queries. ``onnx``: a runner of the run's exported ONNX model (``--backend onnx``)."""

    def __init__(self, model: RunModel, *, onnx: Runner | None = None, preprocessing: Preprocessing | None = None):
        self.model = model
        self.onnx = onnx
        self.gallery = model.predictor if isinstance(model.predictor, GalleryPredictor) else None
        # one encoder: embedded here in memory; an ensemble (or a method reading files) embeds from the files
        pools_tokens = getattr(model.predictor, "mask_pooling", False)
        self.reads_embeddings = isinstance(model.embedder, Embedder) and not pools_tokens
        # the encoder's own transform (it may detect and align faces first), as extraction uses it
        self._transform, self._decode_side = None, 0
        if preprocessing is not None:
            self._transform, self._decode_side = preprocessing.transform(), preprocessing.resize
        elif self.reads_embeddings:
            encoder = model.embedder.encoder
            self._transform, self._decode_side = encoder.transform(), encoder.decode_side

    @property
    def backend(self) -> str:
        return "onnx" if self.onnx is not None else "torch"

    @property
    def input_views(self) -> list[str]:
        return self.model.input_views

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/info`` shows: classes, encoder, views, method, decision rules, headline metrics."""
        info = self.model.info
        metrics_path = self.model.run_dir / "metrics.json"
        metrics = read_json(metrics_path) if metrics_path.is_file() else {}
        reject = info["decision"].get("reject")
        return {
            "run": str(self.model.run_dir),
            "method": info["method"],
            "encoder": info["encoder"],
            "fingerprint": info.get("fingerprint"),
            "backend": self.backend,
            "classes": self.class_names,
            "views": info["views"],
            "input_views": self.input_views,
            "gallery": len(self.gallery.gallery) if self.gallery is not None else None,
            "reject_rule": rule_text(reject, self._distance_name()) if reject else None,
            "metrics": {split: _headline(values) for split, values in metrics.items() if isinstance(values, dict)},
        }

    def pixels(self, path: Path) -> torch.Tensor | None:
        """The encoder's input tensor [3, H, W] for one image (None when the method reads files itself).
        Raises ``ImageError`` for an image that cannot be decoded."""
        background = tuple(self.model.info["background_color"])
        if self._transform is None:
            load_image(path, background=background)  # decodable: the method reads the file itself
            return None
        return self._transform(load_image(path, background=background, max_side=self._decode_side))

    def answer(self, queries: list[Query], pixels: list[dict[str, torch.Tensor | None]]) -> list[dict[str, Any]]:
        """One result per query (``pixels``: each query's :meth:`pixels` per view), all in one batch."""
        model = self.model
        samples = model.samples([q.id for q in queries], [q.paths for q in queries])
        proba = None
        if self.reads_embeddings:
            batch = {view: torch.stack([p[view] for p in pixels]) for view in self.input_views}
            if self.onnx is not None:
                per_view, proba = self.onnx(batch)
            else:
                per_view = {view: model.embedder.encoder.embed(tensor).cpu().numpy() for view, tensor in batch.items()}
            samples.with_embeddings(per_view)
        n_neighbours = max(q.neighbours for q in queries)
        neighbours = None
        if proba is not None:
            prediction = Prediction.from_proba(proba)
        elif self.gallery is not None:
            Z, neighbours = self.gallery.search(samples, max(self.gallery.k, n_neighbours))
            prediction = self.gallery.classify(neighbours, Z)
        else:
            prediction = model.predictor.predict(samples)
        predicted, accepted = model.decider.predicted(prediction), model.decider.accepted(prediction)
        order, scores = top_k(prediction.scores, max(q.top_k for q in queries))
        names = self.class_names
        results = []
        for row, query in enumerate(queries):
            result: dict[str, Any] = {
                "id": query.id,
                "predicted": names[predicted[row]] if accepted[row] else UNCLASSIFIABLE,
                "accepted": bool(accepted[row]),
                "reject_reason": None if accepted[row] else self._reject_reason(prediction, row),
                "predictions": [
                    {"label": names[c], "probability": float(p)}
                    for c, p in zip(order[row, : query.top_k], scores[row, : query.top_k], strict=True)
                ],
                "neighbours": self._neighbours(neighbours, row, query.neighbours) if neighbours is not None else [],
                "run": str(model.run_dir),
                "encoder": model.info["encoder"],
            }
            results.append(result)
        return results

    def _neighbours(self, neighbours: Any, row: int, k: int) -> list[dict[str, Any]]:
        gallery = self.gallery.gallery
        return [
            {
                "rank": rank + 1,
                "id": gallery.ids[index] if gallery.ids else str(index),
                "label": self.class_names[neighbours.labels[row, rank]],
                "distance": float(neighbours.distances[row, rank]),
                "similarity": float(neighbours.similarities[row, rank]),
                "thumbnail_url": f"/v1/gallery/{int(index)}/thumbnail",
            }
            for rank, index in enumerate(neighbours.indices[row, :k])
            if index >= 0
        ]

    def gallery_image(self, index: int) -> Path | None:
        """The first image file of gallery item ``index`` (None when out of range or unknown)."""
        if self.gallery is None or not self.gallery.gallery.paths or not 0 <= index < len(self.gallery.gallery):
            return None
        return Path(self.gallery.gallery.paths[index].split(" | ")[0])

    def _distance_name(self) -> str:
        return "top-1 cosine distance" if self.gallery is not None else "1 − max probability"

    def _reject_reason(self, prediction: Prediction, row: int) -> str:
        rule = self.model.decider.reject
        parts = []
        if rule.max_distance is not None and prediction.distance[row] > rule.max_distance:
            parts.append(f"{prediction.distance_name} {prediction.distance[row]:.4g} > {rule.max_distance:.4g}")
        if rule.min_margin is not None and prediction.margin[row] < rule.min_margin:
            parts.append(f"margin {prediction.margin[row]:.4g} < {rule.min_margin:.4g}")
        return "; ".join(parts) or "rejected by the run's rule"


def load_engine(
    run_dir: str | Path, *, backend: str = "torch", cache_dir: str | None = None, device: str = "auto"
) -> Engine:
    """The run in ``run_dir`` ready to serve; ``backend="onnx"``: through its ONNX export (exported if missing)."""
    if backend == "onnx":
        from kenner.runs.onnx import onnx_engine_parts  # onnxruntime is loaded only for this backend

        model, runner, preprocessing = onnx_engine_parts(run_dir, cache_dir=cache_dir)
        return Engine(model, onnx=runner, preprocessing=preprocessing)
    return Engine(load_predictor(run_dir, cache_dir=cache_dir, device=device))


def _headline(values: dict[str, Any]) -> dict[str, float]:
    keys = ("accuracy", "macro_f1", "weighted_f1", "ece", "recall_at_1", "reject_coverage", "reject_precision")
    return {key: values[key] for key in keys if isinstance(values.get(key), int | float)}
