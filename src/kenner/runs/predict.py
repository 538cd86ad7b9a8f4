"""``kenner predict``: top-k labels for new images with any run, its reject rule and binary threshold applied."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kenner.data.queries import collect_inputs
from kenner.errors import KennerError
from kenner.evaluate.outputs import top_k
from kenner.evaluate.reject import UNCLASSIFIABLE
from kenner.runs.load import RunModel, load_predictor


def predict_run(
    run_dir: str | Path,
    items: Sequence[str],
    *,
    k: int = 5,
    cache_dir: str | None = None,
    device: str = "auto",
    model: RunModel | None = None,
) -> list[dict[str, Any]]:
    """Per query item: ``{"id", "paths", "predicted", "predictions": [{label, probability}]}``.

    ``predicted`` is the run's answer (top label, or the binary threshold's side), or ``unclassifiable`` where
    its reject rule refuses the item.
    """
    if k < 1:
        raise KennerError("-k/--top-k must be at least 1")
    model = model or load_predictor(run_dir, cache_dir=cache_dir, device=device)
    inputs = collect_inputs(items, model.input_views)
    answers = model.answer(model.samples(inputs.ids, inputs.paths))
    order, scores = top_k(answers.prediction.scores, k)
    names = model.class_names
    return [
        {
            "id": item_id,
            "paths": {view: str(path) for view, path in item_paths.items()},
            "predicted": names[label] if ok else UNCLASSIFIABLE,
            "predictions": [{"label": names[c], "probability": float(s)} for c, s in zip(row, row_scores, strict=True)],
        }
        for item_id, item_paths, label, ok, row, row_scores in zip(
            inputs.ids, inputs.paths, answers.predicted, answers.accepted, order, scores, strict=True
        )
    ]


def format_predictions(results: list[dict[str, Any]], fmt: str) -> str:
    """CSV (one row per item: id, paths, predicted, label_1, probability_1, ...) or JSON."""
    if fmt == "json":
        return json.dumps(results, indent=2) + "\n"
    if fmt != "csv":
        raise KennerError(f"unknown output format {fmt!r}; use csv or json")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    k = max((len(r["predictions"]) for r in results), default=0)
    views = list(results[0]["paths"]) if results else []
    header = ["id", *(f"{v}_path" for v in views), "predicted"]
    for rank in range(1, k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    writer.writerow(header)
    for result in results:
        row = [result["id"], *(result["paths"][v] for v in views), result["predicted"]]
        for prediction in result["predictions"]:
            row += [prediction["label"], f"{prediction['probability']:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()
