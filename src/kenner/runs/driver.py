"""The run driver: one path from a config to a finished run folder, for every registered method.

data (validated, filtered) -> split or K folds -> background rows -> the method's task -> fit -> scores of
every row -> binary threshold and reject option tuned on val -> evaluation, predictions, extras -> model/,
model_info.json, history.json, report.md -> tracking. A method only fits and predicts; everything else
happens here, the same way for all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kenner.config.tree import RunConfig
from kenner.data.manifest import Dataset
from kenner.data.splits import save_split, split_of_samples
from kenner.encoders import check_encoder
from kenner.encoders.embedder import AnyEmbedder
from kenner.encoders.views import resolve_mode
from kenner.errors import KennerError
from kenner.evaluate.outputs import write_evaluation
from kenner.evaluate.report import write_report
from kenner.io import atomic_write_json, atomic_write_text, writable_dir
from kenner.methods import METHODS
from kenner.methods.base import FitContext, Method, TaskData
from kenner.methods.fusion import fused_method
from kenner.methods.registry import MethodSpec
from kenner.runs.audit import count_cross_split_duplicates
from kenner.runs.claim import claim_folder
from kenner.runs.data import (
    check_views,
    embedder_for,
    load_data,
    resolve_folds,
    resolve_split,
    task_data,
    with_background,
)
from kenner.runs.decide import tune_decisions
from kenner.runs.folder import (
    MODEL_DIR,
    changed_settings,
    dataset_summary,
    metadata_of,
    split_table,
    write_model_info,
)
from kenner.runs.folds import aggregate_folds, folds_markdown, means
from kenner.runs.history import history_markdown
from kenner.runs.tracking import Tracker, tracker_for

log = logging.getLogger(__name__)

ARTIFACTS = (
    "report.md",
    "metrics.json",
    "confusion_matrix.png",
    "per_class.csv",
    "run_config.json",
    "history.json",
    "reject.json",
    "coverage_accuracy.png",
)


@dataclass
class RunResult:
    """A finished run: metrics per split (means over folds with ``--folds``), where its report is, timings."""

    out_dir: Path
    report: Path
    metrics: dict[str, dict[str, Any]]
    fit_seconds: float
    predict_seconds: float
    folds: dict[str, dict[str, dict[str, float]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """What every fold of a run shares."""

    cfg: RunConfig
    spec: MethodSpec
    method: Method
    tracker: Tracker
    dataset: Dataset
    excluded: int
    view_names: list[str]
    resume: str | None
    fresh: bool


def train(
    cfg: RunConfig,
    *,
    resume: str | None = None,
    fresh: bool = False,
    overwrite: bool = False,
    tracker: Tracker | None = None,
) -> RunResult:
    """Run ``cfg`` into ``cfg.out_dir`` (one run, or one per fold plus ``folds_summary.md``).

    The folder is locked while the run writes it and holds one configuration: the same one again reuses its
    split (and fine-tuning resumes from its checkpoints); another one is refused unless ``overwrite``.
    """
    spec = METHODS.get(cfg.method)
    if cfg.encoder.ensemble and not spec.uses_embeddings:
        raise KennerError(
            f"{cfg.method} reads pixels through one encoder; an encoder ensemble ({cfg.encoder.encoder}) works with "
            "the methods on cached embeddings"
        )
    check_encoder(cfg.encoder.encoder, weights=cfg.encoder.weights)  # an unreachable hub fails before any work
    embedder = embedder_for(cfg)
    writable_dir(embedder.cache_dir, "--cache-dir")
    out_dir = Path(cfg.out_dir)
    description = cfg.to_dict(spec.all_sections)
    continuable = any(out_dir.glob("**/checkpoints/latest_model.pt"))
    with claim_folder(out_dir, description, record="run_config.json", overwrite=overwrite, continuable=continuable):
        atomic_write_json(out_dir / "run_config.json", description)
        return _train(cfg, spec, out_dir, embedder, resume, fresh, tracker)


def _train(
    cfg: RunConfig,
    spec: MethodSpec,
    out_dir: Path,
    embedder: AnyEmbedder,
    resume: str | None,
    fresh: bool,
    tracker: Tracker | None,
) -> RunResult:
    dataset, exclusions = load_data(cfg.data, out_dir, cache_dir=cfg.encoder.cache_dir, embedder=embedder)
    check_views(dataset, cfg.encoder.views)
    run = _Run(
        cfg,
        spec,
        fused_method(spec.load()(), name=spec.name, encoder=cfg.encoder.encoder, fusion=cfg.encoder.fusion),
        tracker or tracker_for(cfg.tracking),
        dataset,
        len(exclusions),
        list(dataset.views),
        resume,
        fresh,
    )
    if not cfg.split.folds:
        data = task_data(
            dataset,
            resolve_split(dataset, cfg.split, out_dir),
            embedder,
            cfg.encoder.views,
            background_class=cfg.data.background_class,
        )
        return _fit_and_write(run, cfg, data, out_dir)
    folds = resolve_folds(dataset, cfg.split, out_dir)
    data = task_data(dataset, folds[0], embedder, cfg.encoder.views, background_class=cfg.data.background_class)
    results = []
    for index, split in enumerate(folds):
        fold_dir = out_dir / f"fold_{index}"
        log.info("%s: fold_%d (%d of %d)", out_dir, index, index + 1, len(folds))
        # each fold folder is a whole run folder: kenner evaluate/predict work on it, --config repeats it
        save_split(split, fold_dir / "splits", groups=dataset.groups, labels=dataset.labels)
        fold_cfg = cfg.replace(out_dir=str(fold_dir), folds=0, splits=str(fold_dir / "splits"))
        atomic_write_json(fold_dir / "run_config.json", fold_cfg.to_dict(spec.all_sections))
        fold_data = data.with_split(split_of_samples(split, dataset.groups))
        results.append(_fit_and_write(run, fold_cfg, fold_data, fold_dir))
    summary = aggregate_folds([result.metrics for result in results])
    atomic_write_json(out_dir / "folds_metrics.json", summary)
    report = atomic_write_text(out_dir / "folds_summary.md", folds_markdown(summary, len(folds)))
    return RunResult(
        out_dir,
        report,
        means(summary),
        sum(r.fit_seconds for r in results) / len(results),
        sum(r.predict_seconds for r in results) / len(results),
        folds=summary,
    )


def _fit_and_write(run: _Run, cfg: RunConfig, data: TaskData, out_dir: Path) -> RunResult:
    """Fit the method on one split and write the whole run folder."""
    if run.spec.uses_embeddings:
        _warn_leakage(data, cfg)
    data = run.method.task(with_background(data, cfg.data, seed=cfg["seed"]), cfg)
    atomic_write_json(out_dir / "class_to_idx.json", {name: i for i, name in enumerate(data.class_names)})
    with run.tracker.start_run(
        out_dir.name, cfg.to_dict(run.spec.all_sections), tags={"kenner.method": cfg.method}
    ) as track:
        logged: list[dict[str, Any]] = []

        def on_epoch(record: dict[str, Any]) -> None:
            logged.append(record)
            track.log_metrics(_numbers(record), step=int(record.get("epoch", len(logged))))

        started = time.perf_counter()
        if run.spec.uses_embeddings:
            data.samples.per_view()  # embedding (mostly reading the cache) is not the method's fit time
        embed_seconds = time.perf_counter() - started
        started = time.perf_counter()
        predictor = run.method.fit(data, cfg, FitContext(out_dir, on_epoch, run.resume, run.fresh))
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        prediction = predictor.predict(data.samples, leave_one_out=True)
        predict_seconds = time.perf_counter() - started
        decisions = tune_decisions(prediction, data.y, data.split, data.class_names, cfg.decision, out_dir)
        extras = predictor.extras(data, prediction, out_dir)
        extra_metrics = {
            name: {**decisions.metrics.get(name, {}), **extras.metrics.get(name, {})}
            for name in {*decisions.metrics, *extras.metrics}
        }
        evaluation = write_evaluation(
            out_dir,
            y=data.y,
            split=data.split,
            proba=prediction.scores,
            class_names=data.class_names,
            sample_ids=data.samples.ids,
            background_class=data.background_class,
            predicted=decisions.predicted,
            accepted=decisions.accepted,
            extra_metrics=extra_metrics,
            metadata=metadata_of(run.dataset, data.samples.ids),
        )
        predictor.save(out_dir / MODEL_DIR)
        write_model_info(
            out_dir / MODEL_DIR, cfg, data, predictor, view_names=run.view_names, decision=decisions.decider.to_dict()
        )
        atomic_write_json(out_dir / "history.json", predictor.history)
        timings = {
            "embeddings s (cached after the first run)": round(embed_seconds, 2),
            "fit s": round(fit_seconds, 2),
            "predict s (all rows)": round(predict_seconds, 2),
        }
        sections = [*extras.sections, *decisions.sections]
        if predictor.history:
            sections.append(("Training history", history_markdown(predictor.history)))
        write_report(
            out_dir,
            {
                "title": f"kenner {cfg.method} run {out_dir.name}",
                "dataset": dataset_summary(
                    data, source=str(run.dataset.source), excluded=run.excluded, dataset=run.dataset
                ),
                "splits": split_table(data),
                "encoder": {
                    "spec": cfg.encoder.encoder,
                    **({"fusion": cfg.encoder.fusion} if cfg.encoder.ensemble else {}),
                    "views": resolve_mode(run.view_names, cfg.encoder.views),
                },
                "head": {"method": cfg.method, "profile": cfg.profile or "none", **changed_settings(cfg, run.spec)},
                "config": {**predictor.summary(), **timings},
                "metrics": evaluation.metrics,
                "per_class": evaluation.per_class if evaluation.report_split == "test" else None,
                "sections": sections,
            },
        )
        if not logged:  # methods that do not report epochs as they go
            for step, record in enumerate(predictor.history, start=1):
                track.log_metrics(_numbers(record), step=step)
        track.log_metrics(
            {
                f"{split}/{key}": value
                for split, values in evaluation.metrics.items()
                for key, value in _numbers(values).items()
            }
        )
        for name in ARTIFACTS:
            if (out_dir / name).is_file():
                track.log_artifact(out_dir / name)
        track.log_artifacts(out_dir / MODEL_DIR)
    return RunResult(out_dir, out_dir / "report.md", evaluation.metrics, fit_seconds, predict_seconds)


def _warn_leakage(data: TaskData, cfg: RunConfig) -> None:
    """One warning line when near-duplicates of the dataset lie in different splits (on the run's embeddings)."""
    crossing, threshold = count_cross_split_duplicates(data.samples, data.split, cfg.data.near_duplicate_threshold)
    if crossing:
        log.warning(
            "%d near-duplicate pair(s) (embedding cosine >= %.3f) cross this split: test scores may be optimistic; "
            "'kenner audit' lists them, --group-duplicates keeps them in one split",
            crossing,
            threshold,
        )


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch"
    }
