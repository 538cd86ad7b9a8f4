"""``kenner train``: one run folder from a run config (split, embed, fit, evaluate, report).

Also k-fold (one run per fold plus a mean ± std table) and the ``model/`` folder that
``kenner predict`` needs to embed new images the same way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kenner import __version__
from kenner.config.legacy import RunConfig, absolute_paths
from kenner.data.background import BACKGROUND
from kenner.data.splits import column_summary, save_split
from kenner.errors import KennerError
from kenner.evaluate.outputs import Evaluation, write_evaluation
from kenner.evaluate.reject_report import reject_markdown, tune_reject
from kenner.evaluate.report import write_report
from kenner.heads import create_head
from kenner.heads.config import HeadConfig
from kenner.heads.persist import save_head
from kenner.io import atomic_write_json, atomic_write_text, read_json
from kenner.pipeline import PreparedEmbeddings, add_background_rows, prepare_embeddings, resolve_folds
from kenner.evaluate.reject import proba_confidence
from kenner.track import NullTracker, Tracker
from kenner.train.calibrate import calibration_markdown, head_calibration

log = logging.getLogger(__name__)

HEADLINE_KEYS = ("accuracy", "macro_f1", "weighted_f1", "macro_f1_fg", "top5_accuracy", "ece", "ece_uncalibrated",
                 "recall_at_1", "map_at_r")


def headline(metrics: dict[str, dict[str, float]], indent: str = "") -> str:
    """One line per split with the headline metrics present (printed after a run)."""
    return "\n".join(f"{indent}{split:>5}: " + "  ".join(f"{k}={values[k]:.4f}" for k in HEADLINE_KEYS
                                                       if isinstance(values.get(k), float | int))
                     for split, values in metrics.items())


def save_model_info(model_dir: Path, cfg: RunConfig, prepared: PreparedEmbeddings, **extra: Any) -> Path:
    """What ``kenner predict`` needs besides the head: encoder, views, classes, preprocessing."""
    encoder, weights = absolute_paths(cfg.encoder.encoder, cfg.encoder.weights)
    info = {
        "kenner_version": __version__,
        "mode": cfg.mode,
        "encoder": encoder,
        "weights": weights,
        "pooling": cfg.encoder.pooling,
        "fingerprint": prepared.encoder_fingerprint,
        "views": cfg.encoder.views,
        "view_names": list(prepared.dataset.views),
        "class_names": prepared.class_names,
        "background_color": list(cfg.data.background_color),
        **extra,
    }
    return atomic_write_json(model_dir / "model_info.json", info)


def load_model_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "model" / "model_info.json"
    if not path.exists():
        raise KennerError(f"{run_dir}: not a kenner run folder (no model/model_info.json)")
    return read_json(path)


def dataset_summary(prepared: PreparedEmbeddings) -> dict[str, Any]:
    return {
        "source": str(prepared.dataset.source),
        "samples": len(prepared.sample_ids),
        "classes": len(prepared.class_names),
        "groups": len(set(prepared.groups)),
        "views": list(prepared.dataset.views),
        "excluded": len(prepared.exclusions),
    }


def report_context(title: str, prepared: PreparedEmbeddings, evaluation: Evaluation, **extra: Any) -> dict:
    """The report.md context shared by every method (dataset, split, encoder, metrics, classes)."""
    return {
        "title": title,
        "dataset": dataset_summary(prepared),
        "splits": column_summary(prepared.split, prepared.groups, prepared.y),
        "encoder": {"spec": prepared.encoder_spec, "fingerprint": prepared.encoder_fingerprint,
                    "views": prepared.views},
        "metrics": evaluation.metrics,
        "per_class": evaluation.per_class if evaluation.report_split == "test" else None,
        **extra,
    }


def train_classifier(cfg: RunConfig, prepared: PreparedEmbeddings | None = None,
                     tracker: Tracker | None = None) -> dict[str, dict[str, float]]:
    """Fit a head on cached embeddings and write the whole run folder; returns metrics per split.

    With a ``tracker`` the run's parameters, per-epoch history, final metrics and artifacts are logged.
    """
    tracker = tracker or NullTracker()
    with tracker.start_run(Path(cfg.out_dir).name, cfg.to_dict(), tags={"kenner.mode": cfg.mode}):
        metrics, history = _train_classifier(cfg, prepared)
        log_run(tracker, Path(cfg.out_dir), metrics, history)
    return metrics


def log_run(tracker: Tracker, out_dir: Path, metrics: dict[str, dict[str, float]], history: list[dict]) -> None:
    """Per-epoch history (steps 1..N), final metrics as ``<split>/<metric>``, and the run's artifacts."""
    for step, record in enumerate(history, start=1):
        tracker.log_metrics({k: v for k, v in record.items() if isinstance(v, int | float) and k != "epoch"},
                            step=step)
    tracker.log_metrics({f"{split}/{key}": value for split, values in metrics.items()
                         for key, value in values.items() if isinstance(value, int | float)})
    for name in ("report.md", "metrics.json", "confusion_matrix.png", "per_class.csv", "run_config.json"):
        if (out_dir / name).exists():
            tracker.log_artifact(out_dir / name)
    tracker.log_artifacts(out_dir / "model")


def _train_classifier(cfg: RunConfig, prepared: PreparedEmbeddings | None) -> tuple[dict, list[dict]]:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "run_config.json", cfg.to_dict())
    started = time.perf_counter()
    prepared = prepared or prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir)
    if cfg.data.bg:
        prepared = add_background_rows(prepared, cfg.data, cfg.encoder, seed=cfg.head.seed)
        atomic_write_json(out_dir / "class_to_idx.json", {name: i for i, name in enumerate(prepared.class_names)})
    embed_seconds = time.perf_counter() - started
    X_train, y_train = prepared.part("train")
    X_val, y_val = prepared.part("val")
    if len(X_train) == 0:
        raise KennerError("the split has no training samples; check --split-ratios and the dataset size")
    head = create_head(cfg.head.head_type, config=cfg.head)
    log.info("fitting a %s head on %d x %d embeddings (%d classes)", cfg.head.head_type, *X_train.shape,
             len(prepared.class_names))
    head.fit(X_train, y_train, X_val=X_val if len(X_val) else None, y_val=y_val if len(y_val) else None,
             n_classes=len(prepared.class_names))
    proba = head.predict_proba(prepared.X)
    distance, margin = proba_confidence(proba)
    rcfg = cfg.retrieval
    reject_summary, rule = tune_reject(distance, margin, proba.argmax(axis=1) == prepared.y, prepared.split,
                                       by=rcfg.reject_by, target_precision=rcfg.target_precision,
                                       target_coverage=rcfg.target_coverage, out_dir=out_dir)
    sections = [("Reject option", reject_markdown(reject_summary))]
    calibration = {}
    if cfg.head.calibrate:
        calibration = head_calibration(head, prepared.X, prepared.y, prepared.split)
        sections.insert(0, ("Calibration (temperature scaling)", calibration_markdown(calibration)))
    background_class = cfg.data.background_class or (BACKGROUND if cfg.data.bg else None)
    evaluation = write_evaluation(
        out_dir, y=prepared.y, split=prepared.split, proba=proba, class_names=prepared.class_names,
        sample_ids=prepared.sample_ids, background_class=background_class,
        accepted=rule.accept(distance, margin) if rule else None,
        extra_metrics={name: {"ece_uncalibrated": c["ece_before"], "temperature": c["temperature"]}
                       for name, c in calibration.items()},
    )
    save_head(head, out_dir / "model")
    save_model_info(out_dir / "model", cfg, prepared, reject=rule.to_dict() if rule else None)
    timings = {"embedding (cached) s": round(embed_seconds, 2), "head fit s": round(head.fit_seconds_, 2)}
    defaults = HeadConfig().to_dict()
    changed = {k: v for k, v in cfg.head.to_dict().items() if v != defaults[k] or k == "head_type"}
    write_report(out_dir, report_context(f"kenner run {out_dir.name}", prepared, evaluation, head=changed,
                                         config={"profile": cfg.profile or "none", **timings},
                                         sections=sections))
    return evaluation.metrics, head.history_


def train_folds(cfg: RunConfig, tracker: Tracker | None = None) -> dict[str, dict[str, float]]:
    """One run per saved group-aware fold (``fold_i/``), then mean ± std of every metric."""
    out_dir = Path(cfg.out_dir)
    prepared = prepare_embeddings(cfg.data, cfg.split, cfg.encoder, out_dir=out_dir)
    folds = resolve_folds(prepared.dataset, cfg.split, out_dir)  # saved by prepare_embeddings: a load
    per_fold = []
    for index, split in enumerate(folds):
        log.info("fold %d/%d", index + 1, len(folds))
        fold_dir = out_dir / f"fold_{index}"
        # Each fold folder is a whole run folder, so kenner evaluate/predict work on it too.
        save_split(split, fold_dir / "splits", groups=prepared.groups, labels=prepared.dataset.labels)
        atomic_write_json(fold_dir / "class_to_idx.json", prepared.dataset.class_to_idx)
        fold_split = replace(cfg.split, folds=0, splits=str(fold_dir / "splits"))
        fold_cfg = replace(cfg, out_dir=str(fold_dir), split=fold_split)
        per_fold.append(train_classifier(fold_cfg, prepared.with_split(split), tracker))
    summary = aggregate_folds(per_fold)
    atomic_write_json(out_dir / "folds_metrics.json", summary)
    atomic_write_text(out_dir / "folds_summary.md", folds_markdown(summary, len(folds)))
    return summary


def aggregate_folds(per_fold: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{split: {metric: {mean, std, values}}}`` over folds (population std, ddof=0)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for split in per_fold[0]:
        keys = sorted({key for fold in per_fold for key in fold.get(split, {})})
        summary[split] = {}
        for key in keys:
            values = np.asarray([fold[split][key] for fold in per_fold if key in fold.get(split, {})], float)
            summary[split][key] = {"mean": float(values.mean()), "std": float(values.std()),
                                   "values": values.tolist()}
    return summary


def folds_markdown(summary: dict[str, dict[str, dict[str, float]]], k: int) -> str:
    lines = [f"# {k}-fold summary (mean ± std over folds)", ""]
    for split, metrics in summary.items():
        lines += [f"## {split}", "", "| metric | mean ± std |", "|---|---|"]
        lines += [f"| {key} | {value['mean']:.4f} ± {value['std']:.4f} |" for key, value in metrics.items()]
        lines.append("")
    return "\n".join(lines)
