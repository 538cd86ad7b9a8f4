"""``kenner search``: the nearest gallery items of new images in a run with a gallery (knn, metric)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kenner.data.queries import collect_inputs
from kenner.errors import KennerError
from kenner.evaluate.reject import UNCLASSIFIABLE
from kenner.methods.gallery import GalleryPredictor
from kenner.runs.load import load_predictor


def search_run(
    run_dir: str | Path, items: Sequence[str], *, k: int = 10, cache_dir: str | None = None, device: str = "auto"
) -> list[dict[str, Any]]:
    """Per query: its id, paths, the run's answer ("unclassifiable" if rejected) and its ``k`` nearest
    gallery items (rank, label, cosine similarity and distance, id, path)."""
    if k < 1:
        raise KennerError("-k/--top-k must be at least 1")
    model = load_predictor(run_dir, cache_dir=cache_dir, device=device)
    predictor = model.predictor
    if not isinstance(predictor, GalleryPredictor):
        raise KennerError(
            f"{run_dir}: a {model.info['method']!r} run has no gallery; search needs a run of a "
            "method with one (knn, metric)"
        )
    inputs = collect_inputs(items, model.input_views)
    Z, neighbours = predictor.search(model.samples(inputs.ids, inputs.paths), max(k, predictor.k))
    prediction = predictor.classify(neighbours, Z)
    predicted, accepted = model.decider.predicted(prediction), model.decider.accepted(prediction)
    gallery, names = predictor.gallery, model.class_names
    results = []
    for q, (item_id, item_paths) in enumerate(zip(inputs.ids, inputs.paths, strict=True)):
        rows = [
            {
                "rank": rank + 1,
                "label": names[neighbours.labels[q, rank]],
                "similarity": float(neighbours.similarities[q, rank]),
                "distance": float(neighbours.distances[q, rank]),
                "id": gallery.ids[index] if gallery.ids else str(index),
                "path": gallery.paths[index] if gallery.paths else "",
            }
            for rank, index in enumerate(neighbours.indices[q, :k])
            if index >= 0
        ]
        results.append(
            {
                "id": item_id,
                "paths": {view: str(path) for view, path in item_paths.items()},
                "predicted": names[predicted[q]] if accepted[q] else UNCLASSIFIABLE,
                "neighbours": rows,
            }
        )
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    """A table per query, columns aligned."""
    lines = []
    for result in results:
        lines.append(f"{result['id']}  ->  {result['predicted']}")
        rows = [
            (str(n["rank"]), f"{n['distance']:.4f}", f"{n['similarity']:.4f}", n["label"], n["id"], n["path"])
            for n in result["neighbours"]
        ]
        header = ("rank", "distance", "cosine", "label", "id", "path")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append(
                "  ".join(
                    cell.rjust(w) if i < 3 else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
        lines.append("")
    return "\n".join(lines)
