"""``kenner predict``: top-k labels for new images with any run, its reject rule and binary threshold applied."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kenner.data.images import inspect_image
from kenner.data.queries import collect_inputs
from kenner.errors import ImageError, KennerError
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
    on_bad_image: str = "fail",
    model: RunModel | None = None,
) -> list[dict[str, Any]]:
    """Per query item: ``{"id", "paths", "predicted", "predictions": [{label, probability}]}``.

    ``predicted`` is the run's answer (top label, or the binary threshold's side), or ``unclassifiable`` where
    its reject rule refuses the item. ``on_bad_image="skip"``: an item with an image that cannot be used is
    answered with ``"predicted": None`` and ``"error"`` (the reason) instead of stopping everything.
    """
    if k < 1:
        raise KennerError("-k/--top-k must be at least 1")
    model = model or load_predictor(run_dir, cache_dir=cache_dir, device=device)
    inputs = collect_inputs(items, model.input_views)
    errors = _bad_images(inputs.paths) if on_bad_image == "skip" else {}
    good = [i for i in range(len(inputs.ids)) if i not in errors]
    results: list[dict[str, Any]] = [
        {
            "id": item_id,
            "paths": {view: str(path) for view, path in item_paths.items()},
            "predicted": None,
            "predictions": [],
            "error": errors.get(i),
        }
        for i, (item_id, item_paths) in enumerate(zip(inputs.ids, inputs.paths, strict=True))
    ]
    if good:
        answers = model.answer(model.samples([inputs.ids[i] for i in good], [inputs.paths[i] for i in good]))
        order, scores = top_k(answers.prediction.scores, k)
        names = model.class_names
        for row, i in enumerate(good):
            results[i]["predicted"] = names[answers.predicted[row]] if answers.accepted[row] else UNCLASSIFIABLE
            results[i]["predictions"] = [
                {"label": names[c], "probability": float(p)} for c, p in zip(order[row], scores[row], strict=True)
            ]
    if not errors:
        for result in results:
            del result["error"]
    return results


def _bad_images(paths: list[dict[str, Path]]) -> dict[int, str]:
    """Item index -> why one of its images cannot be used (each image fully decoded once)."""
    errors = {}
    for i, item in enumerate(paths):
        for path in item.values():
            try:
                inspect_image(path)
            except ImageError as error:
                errors[i] = str(error)
                break
    return errors


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
    errors = any("error" in result for result in results)
    header = ["id", *(f"{v}_path" for v in views), "predicted", *(["error"] if errors else [])]
    for rank in range(1, k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    writer.writerow(header)
    for result in results:
        row = [result["id"], *(result["paths"][v] for v in views), result["predicted"] or ""]
        row += [result.get("error") or ""] if errors else []
        for prediction in result["predictions"]:
            row += [prediction["label"], f"{prediction['probability']:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()
