"""``kenner evaluate``: score any finished run on its own split, or on another labelled dataset (as test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kenner.config.tree import build_config, load_config_file
from kenner.data.splits import load_split, split_of_samples
from kenner.errors import KennerError
from kenner.evaluate.outputs import write_evaluation
from kenner.evaluate.report import write_report
from kenner.methods.base import TaskData
from kenner.runs.data import load_data, task_data
from kenner.runs.decide import measured_reject
from kenner.runs.driver import RunResult
from kenner.runs.folder import dataset_summary, metadata_of, split_table
from kenner.runs.load import load_predictor


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    out_dir: str | None = None,
    background_class: str | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
) -> RunResult:
    """Predict every sample of the run's dataset (on the run's split) or of ``data`` (all as test) with the
    run's predictor and decision rules; write metrics, predictions and a report to ``out_dir`` (RUN/eval)."""
    run_dir = Path(run_dir)
    model = load_predictor(run_dir, cache_dir=cache_dir, device=device)
    cfg = build_config([load_config_file(run_dir / "run_config.json")])
    own = data is None or Path(data).resolve() == Path(cfg.data.data).resolve()
    trained_background = cfg.data.background_class or ("background" if cfg.data.bg else None)
    data_cfg = dataclasses.replace(
        cfg.data,
        data=data or cfg.data.data,
        bg=0,
        background_dir=None,
        background_class=background_class or cfg.data.background_class,
        exclude=cfg.data.exclude if own else None,  # the run's own leave-outs and groups, not another dataset's
        group_duplicates=cfg.data.group_duplicates and own,
    )
    target = Path(out_dir) if out_dir else run_dir / "eval"
    target.mkdir(parents=True, exist_ok=True)
    dataset, exclusions = load_data(data_cfg, target, cache_dir=cache_dir, min_classes=1, embedder=model.embedder)
    if dataset.views != model.info["view_names"]:
        raise KennerError(
            f"{data_cfg.data}: views {', '.join(dataset.views)} differ from the run's "
            f"{', '.join(model.info['view_names'])}"
        )
    split = (
        np.asarray(split_of_samples(load_split(run_dir / "splits"), dataset.groups))
        if own
        else np.full(len(dataset.samples), "test")
    )
    task = model.spec.load()().task(
        task_data(
            dataset, split, model.embedder, model.info["views"], background_class=background_class or trained_background
        ),
        cfg,
    )
    task = _in_run_classes(task, model.class_names)
    answers = model.answer(task.samples, leave_one_out=own)
    figures, section = measured_reject(model.decider, answers.prediction, answers.predicted, task.y, task.split)
    evaluation = write_evaluation(
        target,
        y=task.y,
        split=task.split,
        proba=answers.prediction.scores,
        class_names=task.class_names,
        sample_ids=task.samples.ids,
        background_class=task.background_class,
        predicted=answers.predicted,
        accepted=answers.accepted if model.decider.reject is not None else None,
        extra_metrics={
            name: {f"reject_{key}": value for key, value in values.items()} for name, values in figures.items()
        },
        metadata=metadata_of(dataset, task.samples.ids),
    )
    report = write_report(
        target,
        {
            "title": f"kenner evaluation of {run_dir.name} on {Path(data_cfg.data).name}",
            "dataset": dataset_summary(task, source=str(dataset.source), excluded=len(exclusions), dataset=dataset),
            "splits": split_table(task),
            "encoder": {"spec": model.info["encoder"], "views": model.info["views"]},
            "head": {"method": model.info["method"], "run": str(run_dir)},
            "metrics": evaluation.metrics,
            "per_class": evaluation.per_class,
            "sections": [("Reject option", section)],
        },
    )
    return RunResult(target, report, evaluation.metrics, 0.0, 0.0)


def _in_run_classes(task: TaskData, class_names: list[str]) -> TaskData:
    """``task`` with its labels as indices into the run's classes (a class the run never saw is an error)."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(task.class_names[i] for i in np.unique(task.y)) - set(index))
    if unknown:
        raise KennerError(f"classes the run never saw: {', '.join(unknown[:10])}")
    y = np.asarray([index[task.class_names[i]] for i in task.y])
    return dataclasses.replace(task, y=y, class_names=list(class_names))
