"""``kenner export RUN --format NAME``: a finished run in another layout. Formats are registered by name.

``arrays`` is the layout of the face-name track: ``predictions.npy`` (predicted class index per test row),
``true_labels.npy``, ``names.json`` (class names), ``results.csv`` (per-class precision, recall, F1),
``summary.json`` (accuracy, prediction CV, the 5 best and worst classes) and, for methods that read
embeddings, ``embeddings.npy`` (the encoder's embeddings of those rows, from the cache).

``onnx``: ``model.onnx`` (encoder + head in one model, dynamic batch) and ``onnx.json``; see :mod:`kenner.runs.onnx`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from kenner.config.tree import build_config, load_config_file
from kenner.data.splits import load_split, split_of_samples
from kenner.errors import KennerError
from kenner.evaluate.metrics import per_class_table, prediction_cv, ranked_classes
from kenner.evaluate.outputs import report_split
from kenner.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from kenner.registry import Registry
from kenner.runs.data import load_data, task_data, with_background
from kenner.runs.load import RunModel, load_predictor

EXPORTS: Registry[Callable[[RunModel, Path], list[Path]]] = Registry("export format")


def export_run(
    run_dir: str | Path, fmt: str, out_dir: str | Path | None = None, *, cache_dir: str | None = None
) -> list[Path]:
    """Write run ``run_dir`` in format ``fmt`` into ``out_dir`` (default ``RUN/export_<fmt>``); the files."""
    exporter = EXPORTS.get(fmt)
    run_dir = Path(run_dir)
    model = load_predictor(run_dir, cache_dir=cache_dir)
    return exporter(model, Path(out_dir) if out_dir else run_dir / f"export_{fmt}")


def _npy(path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return atomic_write_bytes(path, buffer.getvalue())


@EXPORTS.register("arrays")
def export_arrays(model: RunModel, out_dir: Path) -> list[Path]:
    """The face-name track's layout, for the run's report split (test when there is one)."""
    predictions = pd.read_parquet(model.run_dir / "predictions.parquet")
    split = report_split(predictions["split"].to_numpy())
    rows = predictions[predictions["split"] == split]
    names = model.class_names
    index = {name: i for i, name in enumerate(names)}
    true = np.asarray([index[label] for label in rows["true"]], dtype=np.int64)
    predicted = np.asarray([index[labels[0]] for labels in rows["topk_labels"]], dtype=np.int64)
    table = per_class_table(true, predicted, names)
    files = [
        _npy(out_dir / "predictions.npy", predicted),
        _npy(out_dir / "true_labels.npy", true),
        atomic_write_json(out_dir / "names.json", names),
        atomic_write_text(out_dir / "results.csv", table.to_csv(index=False)),
        atomic_write_json(
            out_dir / "summary.json",
            {
                "run": str(model.run_dir),
                "method": model.info["method"],
                "split": split,
                "n": len(true),
                "accuracy": float((true == predicted).mean()) if len(true) else None,
                "prediction_cv": prediction_cv(predicted, len(names)),
                **ranked_classes(table),
            },
        ),
    ]
    if model.embedder is not None:
        files.append(_npy(out_dir / "embeddings.npy", _embeddings(model, rows["sample_id"].tolist())))
    return files


@EXPORTS.register("onnx")
def export_onnx(model: RunModel, out_dir: Path) -> list[Path]:
    """One ONNX model, encoder + head (dynamic batch), checked against torch (see :mod:`kenner.runs.onnx`)."""
    from kenner.runs.onnx import export_onnx_run

    return export_onnx_run(model, out_dir)


def _embeddings(model: RunModel, ids: list[str]) -> np.ndarray:
    """The encoder's embeddings (views combined as the run did) of the run's rows ``ids``: the run's task data
    rebuilt as the driver built it (its split, background rows, the method's task), read from the cache."""
    cfg = build_config([load_config_file(model.run_dir / "run_config.json")])
    dataset, _ = load_data(cfg.data, min_classes=1, embedder=model.embedder)
    split = split_of_samples(load_split(model.run_dir / "splits"), dataset.groups)
    data = task_data(
        dataset, np.asarray(split), model.embedder, model.info["views"], background_class=cfg.data.background_class
    )
    data = model.spec.load()().task(with_background(data, cfg.data, seed=cfg["seed"]), cfg)
    row = {sample_id: i for i, sample_id in enumerate(data.samples.ids)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise KennerError(
            f"{len(missing)} row(s) of the run are not in {cfg.data.data} any more (e.g. "
            f"{missing[0]!r}); the embeddings cannot be exported from a changed dataset"
        )
    return data.samples.subset([row[i] for i in ids]).features()
