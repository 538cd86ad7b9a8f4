"""The run folder every method writes, and the one writer of ``model/model_info.json``.

```
RUN/
  run_config.json  class_to_idx.json  splits/  metrics.json  per_class.csv  confusion_matrix.png
  predictions.parquet  history.json  reject.json  coverage_accuracy.png  report.md  excluded.csv
  model/           model_info.json + the predictor's files
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kenner import __version__
from kenner.config.tree import RunConfig
from kenner.data.manifest import Dataset
from kenner.data.splits import column_summary
from kenner.errors import KennerError
from kenner.io import atomic_write_json, read_json
from kenner.methods.base import Predictor, TaskData
from kenner.methods.registry import MethodSpec

MODEL_DIR = "model"
MODEL_INFO = "model_info.json"
HEADLINE_KEYS = (
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_f1_fg",
    "top5_accuracy",
    "ece",
    "ece_uncalibrated",
    "recall_at_1",
    "map_at_r",
)


def absolute_spec(spec: str) -> str:
    """An encoder spec with a local folder made absolute (``hf:``/``local:``), so a run predicts from any
    working folder."""
    family, colon, target = spec.partition(":")
    if colon and family in ("hf", "local", "face") and Path(target).exists():
        return f"{family}:{Path(target).resolve()}"
    return spec


def write_model_info(
    model_dir: Path,
    cfg: RunConfig,
    data: TaskData,
    predictor: Predictor,
    *,
    view_names: list[str],
    decision: dict[str, Any],
) -> Path:
    """What loading and applying the run needs besides the predictor's own files."""
    embedder = data.samples.embedder
    built = embedder is not None and embedder.built  # the encoder was needed (and built)
    info = {
        "kenner_version": __version__,
        "method": cfg.method,
        "encoder": ",".join(absolute_spec(member) for member in cfg.encoder.encoder.split(",")),
        "fusion": cfg.encoder.fusion if cfg.encoder.ensemble else None,
        "weights": str(Path(cfg.encoder.weights).resolve()) if cfg.encoder.weights else None,
        "pooling": cfg.encoder.pooling,
        "backend": cfg.encoder.backend,
        "fingerprint": embedder.fingerprint if built else None,
        "views": cfg.encoder.views,
        "view_names": view_names,
        "input_views": predictor.input_views(view_names, cfg.encoder.views),
        "class_names": data.class_names,
        "background_color": list(cfg.data.background_color),
        "decision": decision,
        "predictor": predictor.summary(),
    }
    return atomic_write_json(model_dir / MODEL_INFO, info)


def read_model_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MODEL_DIR / MODEL_INFO
    if not path.is_file():
        raise KennerError(f"{run_dir}: not a finished kenner run folder (no {MODEL_DIR}/{MODEL_INFO})")
    info = read_json(path)
    if "method" not in info:
        raise KennerError(
            f"{path}: written by kenner {info.get('kenner_version', '0.1')}, which this version "
            "cannot load; train the run again"
        )
    return info


def dataset_summary(data: TaskData, *, source: str, excluded: int, dataset: Dataset | None = None) -> dict[str, Any]:
    """The report's dataset facts; with the loaded ``dataset``, also its metadata columns and merged groups."""
    summary = {
        "source": source,
        "samples": len(data.y),
        "classes": data.n_classes,
        "groups": len(set(data.groups)),
        "views": ", ".join(data.samples.view_names),
        "excluded": excluded,
    }
    if dataset is not None and dataset.metadata_columns:
        summary["metadata columns (in predictions.parquet)"] = ", ".join(dataset.metadata_columns)
    if dataset is not None and dataset.merged_groups:
        summary["groups merged for identical images (duplicates.csv)"] = len(dataset.merged_groups)
    return summary


def metadata_of(dataset: Dataset, ids: list[str]) -> dict[str, list[str | None]]:
    """The dataset's metadata columns for rows ``ids`` (None where a row is not one of its samples)."""
    by_id = {sample.id: sample.metadata for sample in dataset.samples}
    return {name: [by_id[i][name] if i in by_id else None for i in ids] for name in dataset.metadata_columns}


def split_table(data: TaskData) -> dict[str, dict[str, int]]:
    return column_summary(data.split, data.groups, data.y)


def changed_settings(cfg: RunConfig, spec: MethodSpec) -> dict[str, Any]:
    """The method's settings that differ from the defaults (shown in the report)."""
    default = RunConfig()
    fields = cfg.fields(*spec.sections)
    base = {**default.fields(*spec.sections), **spec.defaults}
    return {name: value for name, value in fields.items() if value != base.get(name)}


def headline(metrics: dict[str, dict[str, Any]], indent: str = "") -> str:
    """One line per split with the headline metrics present (printed after a run)."""
    return "\n".join(
        f"{indent}{split:>5}: "
        + "  ".join(f"{k}={values[k]:.4f}" for k in HEADLINE_KEYS if isinstance(values.get(k), float | int))
        for split, values in metrics.items()
    )
