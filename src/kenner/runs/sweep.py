"""``kenner sweep``: every combination of encoders, head methods, profiles and field values, fitted on cached
embeddings over one saved split, into ``results.csv`` / ``results.md`` and ``summary.md``.

Configurations whose settings allow it (they differ only in learning rate, weight decay, label smoothing,
class weights or calibration) train together as one batched model (:func:`kenner.heads.multihead.fit_multihead`);
the rest are fitted one by one. Every finished configuration is appended to ``results.csv`` at once
(atomically), keyed by its name, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kenner.config.compose import compose_config
from kenner.config.profiles import PROFILES
from kenner.config.tree import RunConfig, dataset_name, safe_name, to_nested
from kenner.encoders import check_encoder
from kenner.errors import KennerError
from kenner.evaluate.calibration import expected_calibration_error
from kenner.evaluate.metrics import classification_metrics
from kenner.heads import EmbeddingClassifier, head_params
from kenner.heads.calibration import fit_temperature
from kenner.heads.multihead import batch_key, fit_multihead
from kenner.io import atomic_write_json, atomic_write_text
from kenner.methods import METHODS
from kenner.methods.base import TaskData
from kenner.methods.fusion import ensemble_blocks, fit_fusion_weights
from kenner.progress import progress_bar
from kenner.runs.claim import claim_folder
from kenner.runs.data import check_views, embedder_for, load_data, resolve_split, task_data, with_background
from kenner.runs.sweep_report import (
    KNOBS,
    METRICS,
    read_results,
    results_markdown,
    summary_markdown,
    track_row,
)
from kenner.runs.tracking import NullTracker, Tracker, tracker_for

log = logging.getLogger(__name__)

HEAD_METHODS = ("linear", "mlp", "arcface")
SWEEP_CONFIG = "sweep_config.json"
SHORT = {"weight_decay": "wd", "label_smoothing": "ls", "mixup": "mix"}


@dataclass(frozen=True)
class Grid:
    """What to combine: encoders, head methods, profiles, and per field the values to try (raw strings)."""

    encoders: tuple[str, ...] = ("default",)
    methods: tuple[str, ...] = ("linear",)
    profiles: tuple[str, ...] = ("base",)
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRun:
    """One configuration: its name, its name without the seed, and its config."""

    name: str
    config_name: str
    encoder: str
    profile: str
    config: RunConfig


def fmt(value: Any) -> str:
    """A value as it appears in run names: ``0.1 -> 0p1``, ``(1024, 512) -> 1024_512``."""
    if isinstance(value, tuple | list):
        return "_".join(fmt(v) for v in value)
    return (f"{value:g}" if isinstance(value, float) else str(value)).replace(".", "p")


def arch(cfg: RunConfig) -> str:
    """``lin``, ``mlp1024_512``, ``arcface512``: the architecture part of a run name."""
    if cfg.method == "linear":
        return "lin"
    return cfg.method + fmt(cfg.head.hidden_sizes)


def expand_grid(
    grid: Grid, base: dict[str, Any], *, dataset: str, bg: int = 0
) -> tuple[list[SweepRun], list[tuple[str, str]]]:
    """Every valid combination as a :class:`SweepRun`, plus (name, reason) of invalid ones.

    Names follow ``<dataset>_<encoder>_<arch>_mix<a>_ls<s>[_<field><value>...]_<profile>[_bg<n>][_s<seed>]``; a
    field appears when more than one value of it is swept. A profile that sets a head type (``arcface``) picks
    that method; equal configurations (a linear head under several hidden sizes) run once.
    """
    swept = {name: values for name, values in grid.values.items() if name != "seed"}
    seeds = grid.values.get("seed", (None,))
    runs: dict[str, SweepRun] = {}
    skipped: list[tuple[str, str]] = []
    for encoder, method, profile, combo, seed in itertools.product(
        grid.encoders, grid.methods, grid.profiles, itertools.product(*swept.values()), seeds
    ):
        chosen = dict(zip(swept, combo, strict=True))
        explicit = {**base, **chosen, "encoder": encoder, **({} if seed is None else {"seed": seed})}
        varied = [
            f"{SHORT.get(name, name)}{fmt(value)}"
            for name, value in chosen.items()
            if len(swept[name]) > 1 and name not in ("mixup", "label_smoothing", "hidden_sizes")
        ]
        try:
            cfg = compose_config(
                dict(METHODS.items()),
                method=PROFILES[profile].get("head_type", method),
                profile=profile,
                explicit=to_nested(explicit, where="sweep"),
            )
        except KennerError as error:
            label = "_".join([dataset, safe_name(encoder), method, *map(fmt, combo), profile])
            skipped.append((label, str(error)))
            continue
        fused = cfg.encoder.ensemble and cfg.encoder.fusion != "concat"
        config_name = "_".join(
            [
                dataset,
                safe_name(encoder) + (f"_{cfg.encoder.fusion}" if fused else ""),
                arch(cfg),
                f"mix{fmt(cfg.loss.mixup)}",
                f"ls{fmt(cfg.loss.label_smoothing)}",
                *varied,
                profile,
                *([f"bg{bg}"] if bg else []),
            ]
        )
        name = config_name + (f"_s{seed}" if len(seeds) > 1 else "")
        runs.setdefault(name, SweepRun(name, config_name, encoder, profile, cfg))
    return list(runs.values()), skipped


@dataclass
class _Task:
    """The arrays one encoder's configurations are fitted and evaluated on."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    X_eval: np.ndarray
    y_eval: np.ndarray
    eval_split: str
    class_names: list[str]
    background: str | None


def _task(data: TaskData) -> _Task:
    X = data.samples.features()
    train, val = data.mask("train"), data.mask("val")
    if not train.any():
        raise KennerError("the split has no training rows; check --split-ratios and the dataset size")
    eval_split = "test" if data.mask("test").any() else "val"
    if not data.mask(eval_split).any():
        raise KennerError("the split has neither test nor validation rows to evaluate on")
    evaluated = data.mask(eval_split)
    return _Task(
        X[train],
        data.y[train],
        X[val] if val.any() else None,
        data.y[val] if val.any() else None,
        X[evaluated],
        data.y[evaluated],
        eval_split,
        data.class_names,
        data.background_class,
    )


def _metrics(
    y: np.ndarray, proba: np.ndarray, uncalibrated: np.ndarray | None, class_names: list[str], background: str | None
) -> dict[str, float]:
    """The results-table metrics of class probabilities; ``ece_uncalibrated`` is the ECE of ``uncalibrated``
    (the probabilities at temperature 1; None: ``proba`` are those)."""
    metrics = classification_metrics(y, proba.argmax(1), proba, class_names, background_class=background)
    for key in METRICS[:4]:
        metrics.setdefault(key, metrics[key.removesuffix("_fg")])
    metrics["ece_uncalibrated"] = (
        metrics["ece"] if uncalibrated is None else expected_calibration_error(uncalibrated, y)
    )
    return {key: metrics[key] for key in (*METRICS, "macro_f1")}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class _Fit:
    """A group of runs fitted on one task: per run its logits on the evaluated rows (and on the val rows when
    asked), temperature, best epoch and seconds."""

    logits: np.ndarray
    val_logits: np.ndarray | None
    temperatures: list[float]
    epochs: list[Any]
    fit_seconds: float
    calibration_seconds: list[float]
    evaluation_seconds: float

    def proba(self, index: int, *, val: bool = False) -> np.ndarray:
        logits = self.val_logits if val else self.logits
        return _softmax(logits[index] / self.temperatures[index])


def _fit_heads(runs: list[SweepRun], task: _Task, *, with_val: bool = False) -> _Fit:
    """Fit a group of runs (one batched model where their settings allow)."""
    configs = [run.config for run in runs]
    if any(c.head.calibrate for c in configs) and task.X_val is None:
        raise KennerError(
            f"{runs[0].name}: temperature scaling (profile calib/full, --calibrate) is fitted on "
            "validation rows, but the split has none; give --split-ratios a val share"
        )
    classes = np.arange(len(task.class_names))
    params = [head_params(cfg) for cfg in configs]
    with_val = with_val and task.X_val is not None
    if len(runs) > 1 or batch_key(params[0]) is not None:
        fit = fit_multihead(task.X_train, task.y_train, params, classes=classes, X_val=task.X_val, y_val=task.y_val)
        start = time.perf_counter()
        logits = np.asarray(fit.logits(task.X_eval))
        shared_eval = (time.perf_counter() - start) / len(runs)
        n_calibrated = max(sum(c.head.calibrate for c in configs), 1)
        return _Fit(
            logits,
            np.asarray(fit.logits(task.X_val)) if with_val else None,
            [float(t) for t in fit.temperatures],
            list(fit.best_epochs),
            fit.fit_seconds / len(runs),
            [fit.calibration_seconds / n_calibrated if c.head.calibrate else 0.0 for c in configs],
            shared_eval,
        )
    # one head alone; its temperature is fitted apart so that its time is measured apart
    head = EmbeddingClassifier(**{**params[0], "calibrate": False}).fit(
        task.X_train, task.y_train, X_val=task.X_val, y_val=task.y_val, classes=classes
    )
    start = time.perf_counter()
    calibrated = params[0]["calibrate"] and task.X_val is not None
    temperature = fit_temperature(head.logits(task.X_val), task.y_val) if calibrated else 1.0
    calib_seconds = [time.perf_counter() - start if calibrated else 0.0]
    start = time.perf_counter()
    logits = head.logits(task.X_eval)[None]
    shared_eval = time.perf_counter() - start
    val_logits = head.logits(task.X_val)[None] if with_val else None
    return _Fit(logits, val_logits, [temperature], [head.best_epoch_], head.fit_seconds_, calib_seconds, shared_eval)


def _fit_group(runs: list[SweepRun], task: _Task) -> Iterator[dict[str, Any]]:
    """Fit a group of runs and yield each one's row."""
    fit = _fit_heads(runs, task)
    for index, run in enumerate(runs):
        start = time.perf_counter()
        temperature = fit.temperatures[index]
        uncalibrated = None if temperature == 1.0 else _softmax(fit.logits[index])
        metrics = _metrics(task.y_eval, fit.proba(index), uncalibrated, task.class_names, task.background)
        seconds = fit.evaluation_seconds + time.perf_counter() - start
        yield _row(run, task, metrics, temperature, fit.fit_seconds, fit.calibration_seconds[index], seconds,
                   fit.epochs[index], len(runs))  # fmt: skip


def _fit_fused_group(runs: list[SweepRun], tasks: list[_Task], fusion: str) -> Iterator[dict[str, Any]]:
    """Fit a group of runs once per encoder of an ensemble (``tasks``: one per encoder's block) and yield each
    run's row for the class probabilities averaged (``late``) or weighted on val (``learned``)."""
    learned = fusion == "learned" and tasks[0].X_val is not None
    fits = [_fit_heads(runs, task, with_val=learned) for task in tasks]
    first = tasks[0]
    for index, run in enumerate(runs):
        start = time.perf_counter()
        weights = np.full(len(fits), 1.0 / len(fits))
        if learned:
            weights = fit_fusion_weights([fit.proba(index, val=True) for fit in fits], first.y_val)
        proba = sum(w * fit.proba(index) for w, fit in zip(weights, fits, strict=True))
        uncalibrated = sum(w * _softmax(fit.logits[index]) for w, fit in zip(weights, fits, strict=True))
        metrics = _metrics(first.y_eval, proba, uncalibrated, first.class_names, first.background)
        seconds = sum(fit.evaluation_seconds for fit in fits) + time.perf_counter() - start
        yield _row(
            run,
            first,
            metrics,
            float(np.mean([fit.temperatures[index] for fit in fits])),
            sum(fit.fit_seconds for fit in fits),
            sum(fit.calibration_seconds[index] for fit in fits),
            seconds,
            max(fit.epochs[index] for fit in fits),
            len(runs),
        )


def _row(
    run: SweepRun,
    task: _Task,
    metrics: dict[str, float],
    temperature: float,
    fit_seconds: float,
    calibration_seconds: float,
    evaluation_seconds: float,
    best_epoch: Any,
    batched: int,
) -> dict[str, Any]:
    """One configuration's line of results.csv."""
    cfg = run.config
    return {
        "name": run.name,
        "config_name": run.config_name,
        "encoder": run.encoder,
        "profile": run.profile,
        "method": cfg.method,
        "head": arch(cfg),
        "mixup": cfg.loss.mixup,
        "label_smoothing": cfg.loss.label_smoothing,
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "seed": cfg.optim.seed,
        **metrics,
        "temperature": temperature,
        "fit_seconds": fit_seconds,
        "calibration_seconds": calibration_seconds,
        "evaluation_seconds": evaluation_seconds,
        "best_epoch": best_epoch,
        "batched_heads": batched,
        "eval_split": task.eval_split,
        "config": json.dumps(cfg.to_dict(METHODS.get(cfg.method).sections), sort_keys=True),
    }


def _fit_rows(runs: list[SweepRun], tasks: list[_Task], fusion: str | None) -> Iterator[dict[str, Any]]:
    """The rows of one group: on one task, or (``fusion``) on one task per encoder of an ensemble, fused."""
    return _fit_fused_group(runs, tasks, fusion) if fusion else _fit_group(runs, tasks[0])


def _fit_rows_remote(runs: list[SweepRun], tasks: list[_Task], fusion: str | None) -> list[dict[str, Any]]:
    """The rows of one group (what a Ray task runs)."""
    return list(_fit_rows(runs, tasks, fusion))


def _fitted_groups(
    groups: list[list[SweepRun]], tasks: list[_Task], fusion: str | None, ray: str | None
) -> Iterator[dict[str, Any]]:
    """The rows of every group, group after group: fitted here, or (``ray``: a cluster address or ``local``) each
    group as one Ray task on the embeddings put into the object store once, its rows yielded in the same order."""
    if not ray:
        for group in groups:
            yield from _fit_rows(group, tasks, fusion)
        return
    from kenner.encoders.ray_extract import connect, explain_ray_error

    connect(ray)
    import ray as ray_api

    tasks_ref = ray_api.put(tasks)
    fit = ray_api.remote(num_cpus=1)(_fit_rows_remote)
    pending = [fit.remote(group, tasks_ref, fusion) for group in groups]
    try:
        for ref in pending:
            yield from ray_api.get(ref)
    except ray_api.exceptions.RayError as error:
        raise explain_ray_error(error) from error
    finally:
        for ref in pending:
            ray_api.cancel(ref)


def _check_resumable(run: SweepRun, row: pd.Series, path: Path) -> None:
    saved, now = json.loads(row["config"]), run.config.to_dict(METHODS.get(run.config.method).sections)
    changed = sorted(key for key in now if saved.get(key) != now[key])
    if changed:
        raise KennerError(
            f"{path}: run {run.name} was made with other settings ({', '.join(changed)}); "
            "use a new --out-dir or remove that file to start over"
        )


def check_grid(grid: Grid) -> None:
    """Methods a sweep can batch and profiles that exist, or a one-line error."""
    unknown = [m for m in grid.methods if m not in HEAD_METHODS]
    if unknown:
        raise KennerError(
            f"kenner sweep trains heads ({', '.join(HEAD_METHODS)}); for {', '.join(unknown)} use kenner compare"
        )
    for profile in grid.profiles:
        if profile not in PROFILES:
            raise KennerError(f"--profiles: unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")


def run_sweep(
    grid: Grid,
    base: dict[str, Any],
    out_dir: str | Path,
    *,
    reference: str = "base",
    overwrite: bool = False,
    tracker: Tracker | None = None,
) -> pd.DataFrame:
    """``kenner sweep``: load the dataset that ``base`` (the fields every run shares, by name) describes, save
    one split in ``out_dir/splits``, and sweep ``grid`` for every encoder on it (:func:`sweep_tasks`).

    The folder holds one dataset and split (``sweep_config.json``): rerunning extends and resumes the sweep;
    another dataset or split is refused unless ``overwrite``."""
    check_grid(grid)
    out_dir = Path(out_dir)
    probe = compose_config(dict(METHODS.items()), explicit=to_nested({**base, "encoder": grid.encoders[0]}))
    for encoder in grid.encoders:
        check_encoder(encoder, weights=probe.encoder.weights)
    description = probe.to_dict(("data", "split"))
    with claim_folder(out_dir, description, record=SWEEP_CONFIG, overwrite=overwrite):
        atomic_write_json(out_dir / SWEEP_CONFIG, description)
        return _run_sweep(grid, base, out_dir, probe, reference, tracker)


def _run_sweep(
    grid: Grid, base: dict[str, Any], out_dir: Path, probe: RunConfig, reference: str, tracker: Tracker | None
) -> pd.DataFrame:
    dataset, _ = load_data(probe.data, out_dir, cache_dir=probe.encoder.cache_dir, embedder=embedder_for(probe))
    check_views(dataset, probe.encoder.views)
    split = resolve_split(dataset, probe.split, out_dir)
    tasks = {}
    for encoder in grid.encoders:
        cfg = probe.replace(encoder=encoder)
        data = task_data(
            dataset, split, embedder_for(cfg), cfg.encoder.views, background_class=cfg.data.background_class
        )
        tasks[encoder] = with_background(data, cfg.data, seed=0)
    return sweep_tasks(
        tasks,
        grid,
        base,
        out_dir,
        dataset=dataset_name(probe.data.data),
        bg=probe.data.bg,
        reference=reference,
        tracker=tracker or tracker_for(probe.tracking),
        ray=probe.compute.ray,
    )


def sweep_tasks(
    tasks: dict[str, TaskData],
    grid: Grid,
    base: dict[str, Any],
    out_dir: str | Path,
    *,
    dataset: str,
    bg: int = 0,
    reference: str = "base",
    tracker: Tracker | None = None,
    ray: str | None = None,
) -> pd.DataFrame:
    """Every configuration of ``grid`` for every encoder's task data (encoder spec -> the rows of one split,
    background rows included); results are appended to ``out_dir/results.csv`` as they finish, finished
    configurations are skipped. With ``ray`` (a cluster address or ``local``) each batched group is a Ray task;
    the rows, their order and the tracking (in this process) are those of a local sweep. Returns all rows."""
    check_grid(grid)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = tracker or NullTracker()
    path = out_dir / "results.csv"
    results = read_results(path)
    done = {row["name"]: row for _, row in results.iterrows()} if len(results) else {}
    skipped_all: list[tuple[str, str]] = []
    for encoder, data in tasks.items():
        runs, skipped = expand_grid(
            Grid((encoder,), grid.methods, grid.profiles, grid.values), base, dataset=dataset, bg=bg
        )
        skipped_all += skipped
        for run in runs:
            if run.name in done:
                _check_resumable(run, done[run.name], path)
        todo = [run for run in runs if run.name not in done]
        if len(todo) < len(runs):
            log.info("%s: %d of %d configurations already finished", encoder, len(runs) - len(todo), len(runs))
        if not todo:
            continue
        fusion = todo[0].config.encoder.fusion
        fused = fusion != "concat" and data.samples.embedder is not None and len(data.samples.embedder.dims) > 1
        task = _task(data)
        blocks = [_task(block) for block in ensemble_blocks(data)] if fused else []
        groups: dict[Any, list[SweepRun]] = {}
        for run in todo:
            groups.setdefault(batch_key(head_params(run.config)) or run.name, []).append(run)
        bar = progress_bar(total=len(todo), desc=f"sweep {safe_name(encoder)}", unit="config")
        tasks, fused_by = (blocks, fusion) if fused else ([task], None)
        for row in _fitted_groups(list(groups.values()), tasks, fused_by, ray):
            results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
            atomic_write_text(path, results.to_csv(index=False))
            track_row(tracker, row, sweep=out_dir.name)
            log.info("%s: macro_f1_fg=%.4f", row["name"], row["macro_f1_fg"])
            bar.update()
        bar.close()
    if skipped_all:
        atomic_write_text(out_dir / "skipped.md", "".join(f"- `{name}`: {why}\n" for name, why in skipped_all))
    knobs = (*KNOBS, *(name for name in grid.values if name not in KNOBS and name != "seed"))
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    atomic_write_text(out_dir / "summary.md", summary_markdown(results, reference, skipped_all, knobs))
    return results


def grid_values(raw: dict[str, Any], list_fields: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Per field, the values to sweep: comma-separated strings split, list fields given as several values."""
    values: dict[str, tuple[Any, ...]] = {}
    for name, value in raw.items():
        if name in list_fields:
            items = value if isinstance(value, list | tuple) else [value]
            values[name] = tuple("" if str(item).lower() in ("lin", "linear", "none") else item for item in items)
        else:
            values[name] = tuple(item.strip() for item in str(value).split(",") if item.strip())
    return {name: items for name, items in values.items() if items}
