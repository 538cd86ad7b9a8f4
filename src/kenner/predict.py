"""``kenner predict RUN IMAGES...``: top-k labels and probabilities for new images.

Inputs are image files, folders (searched recursively) or a TSV/CSV manifest with the run's
``<view>_path`` columns (needed for multi-view runs). Images are embedded exactly as in training:
same encoder, same fingerprint, same view combination.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kenner.config.legacy import EncoderConfig
from kenner.data.manifest import FOLDER_VIEW, IMAGE_EXTENSIONS
from kenner.encoders.base import Encoder
from kenner.encoders.views import combine_views, resolve_mode
from kenner.errors import DataError, KennerError
from kenner.evaluate.outputs import top_k
from kenner.heads.persist import load_head
from kenner.pipeline import build_encoder, embed_views
from kenner.evaluate.reject import UNCLASSIFIABLE, RejectRule, proba_confidence
from kenner.train.run import load_model_info

MANIFEST_SUFFIXES = {".csv", ".tsv"}


@dataclass
class PredictionInputs:
    """Query items: an id and one path per view."""

    ids: list[str]
    paths: list[dict[str, Path]]


def collect_inputs(items: Sequence[str], view_names: list[str]) -> PredictionInputs:
    """Expand files, folders and manifests into query items for a run with ``view_names``."""
    ids: list[str] = []
    paths: list[dict[str, Path]] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise DataError("no such file or folder", path=str(path))
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            manifest = read_prediction_manifest(path, view_names)
            ids += manifest.ids
            paths += manifest.paths
            continue
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith(".")) if path.is_dir() else [path]
        if len(view_names) > 1:
            raise KennerError(
                f"this run uses {len(view_names)} views ({', '.join(view_names)}): pass a manifest with "
                f"{', '.join(v + '_path' for v in view_names)} columns instead of {path}"
            )
        ids += [str(f) for f in files]
        paths += [{view_names[0]: f.resolve()} for f in files]
    if not ids:
        raise KennerError(f"no images found in {', '.join(items)}")
    return PredictionInputs(ids, paths)


def read_prediction_manifest(path: Path, view_names: list[str]) -> PredictionInputs:
    """A manifest for prediction: ``<view>_path`` columns (a bare ``path`` is the view ``image``, as
    in training manifests), optional ``id``; labels are not needed."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the manifest ({error})", path=str(path)) from None
    table.columns = [str(name).strip().lower() for name in table.columns]
    if FOLDER_VIEW in view_names and f"{FOLDER_VIEW}_path" not in table.columns:
        table = table.rename(columns={"path": f"{FOLDER_VIEW}_path"})
    missing = [f"{view}_path" for view in view_names if f"{view}_path" not in table.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}",
                        path=str(path))
    ids = table["id"].tolist() if "id" in table.columns else [str(i + 1) for i in range(len(table))]
    paths = []
    for row, record in enumerate(table.to_dict("records"), start=1):
        entry = {}
        for view in view_names:
            cell = record[f"{view}_path"].strip()
            if not cell:
                raise DataError(f"empty {view}_path", path=str(path), row=row)
            entry[view] = (path.parent / cell).resolve()
            if not entry[view].is_file():
                raise DataError(f"{view} image {entry[view]}: file not found", path=str(path), row=row)
        paths.append(entry)
    return PredictionInputs([str(i) for i in ids], paths)


def query_views(info: dict) -> list[str]:
    """The views a query needs: the one view a run's ``--views`` picks, else all the run's views."""
    if info["mode"] == "side-classifier":
        from kenner.retrieval.side_predict import side_input_views

        return side_input_views(info)
    if info["mode"] in ("classifier", "metric"):
        mode = resolve_mode(info["view_names"], info["views"])
        if mode in info["view_names"]:
            return [mode]
    return list(info["view_names"])


def run_encoder(info: dict, *, cache_dir: str | None = None, device: str = "auto") -> tuple[Encoder, EncoderConfig]:
    """The run's encoder, rebuilt, checked to have the fingerprint the run was trained with."""
    enc_cfg = EncoderConfig(encoder=info["encoder"], weights=info["weights"], pooling=info["pooling"],
                            views=info["views"], cache_dir=cache_dir, device=device)
    encoder = build_encoder(enc_cfg)
    if encoder.fingerprint != info["fingerprint"]:
        raise KennerError(
            f"the encoder {info['encoder']!r} now has fingerprint {encoder.fingerprint}, but the run was "
            f"trained with {info['fingerprint']}: its weights or preprocessing changed"
        )
    return encoder, enc_cfg


def embed_for_run(info: dict, inputs: PredictionInputs, *, cache_dir: str | None = None,
                  device: str = "auto") -> np.ndarray:
    """Embed query items exactly as the run embedded its data (same encoder fingerprint and views)."""
    encoder, enc_cfg = run_encoder(info, cache_dir=cache_dir, device=device)
    per_view = embed_views(inputs.paths, query_views(info), encoder, enc_cfg, tuple(info["background_color"]))
    return combine_views(per_view, info["views"]).astype(np.float32, copy=False)


def predict_run(run_dir: Path, items: Sequence[str], *, k: int = 5, cache_dir: str | None = None,
                device: str = "auto") -> list[dict]:
    """Per query item: ``{"id", "paths", "predicted", "predictions": [{label, probability}]}``.

    ``predicted`` is the top label, or ``unclassifiable`` where the run's reject rule refuses it.
    Classifier runs score with their head; metric runs vote over their Faiss gallery; finetune runs
    run their fine-tuned network on the pixels; side-classifier runs say which side (order) a photo
    (pair) shows.
    """
    info = load_model_info(run_dir)
    inputs = collect_inputs(items, query_views(info))
    rule = RejectRule.from_dict(info["reject"]) if info.get("reject") else RejectRule()
    predicted = None  # the top-1 class unless a binary threshold decides
    if info["mode"] == "side-classifier":
        from kenner.retrieval.side_predict import side_proba

        scores = side_proba(run_dir, info, inputs.paths, cache_dir=cache_dir, device=device)
        accepted = rule.accept(*proba_confidence(scores))
    elif info["mode"] == "finetune":
        from kenner.train.finetune import predict_finetuned

        scores = predict_finetuned(run_dir, inputs.paths, device=device)  # pixels, no embedding cache
        accepted = rule.accept(*proba_confidence(scores))
        if info.get("pos_class") is not None:  # binary: the threshold and orientation chosen on val
            from kenner.evaluate.binary import BinaryResult, binary_predictions

            chosen = BinaryResult(auroc=math.nan, threshold=info["threshold"], f1=math.nan,
                                  flipped=info["score_flipped"])
            predicted = binary_predictions(scores, info["class_names"].index(info["pos_class"]), chosen)
    elif info["mode"] == "metric":
        X = embed_for_run(info, inputs, cache_dir=cache_dir, device=device)
        from kenner.retrieval.model import RetrievalModel

        prediction = RetrievalModel.load(run_dir / "model").classify(X)
        scores, accepted = prediction.scores, prediction.predicted >= 0
    elif info["mode"] == "classifier":
        X = embed_for_run(info, inputs, cache_dir=cache_dir, device=device)
        scores = load_head(run_dir / "model").predict_proba(X)
        accepted = rule.accept(*proba_confidence(scores))
    else:
        raise KennerError(f"{run_dir}: predict does not know {info['mode']!r} runs")
    order, top_scores = top_k(scores, k)
    predicted = order[:, 0] if predicted is None else predicted
    names = info["class_names"]
    return [
        {"id": item_id, "paths": {v: str(p) for v, p in item_paths.items()},
         "predicted": names[label] if ok else UNCLASSIFIABLE,
         "predictions": [{"label": names[c], "probability": float(s)}
                         for c, s in zip(row, score_row, strict=True)]}
        for item_id, item_paths, label, row, score_row, ok in zip(inputs.ids, inputs.paths, predicted, order,
                                                                  top_scores, accepted, strict=True)
    ]


def format_predictions(results: list[dict], fmt: str) -> str:
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
