"""Sweeps: every combination of encoders, profiles and knob values, fitted on cached embeddings over one
saved split, with a results table (``results.csv``, ``results.md``) and a summary (``summary.md``).

Configurations that differ only in optimisation settings train together as one batched model
(:mod:`kenner.train.multihead`); the rest are fitted one by one with
:class:`~kenner.heads.classifier.EmbeddingClassifier`. Every finished configuration is appended to
``results.csv`` at once (atomically), keyed by run name, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kenner.data.background import BACKGROUND, background_label, draw_background
from kenner.errors import KennerError
from kenner.evaluate.calibration import expected_calibration_error
from kenner.evaluate.metrics import classification_metrics
from kenner.evaluate.report import format_number, markdown_table
from kenner.heads.classifier import EmbeddingClassifier
from kenner.heads.config import HeadConfig
from kenner.io import atomic_write_text
from kenner.track import NullTracker, Tracker
from kenner.train.calibrate import fit_temperature
from kenner.train.loop import inference_logits
from kenner.train.multihead import batch_key, fit_multihead
from kenner.train.profiles import resolve_config

log = logging.getLogger(__name__)

METRICS = ("macro_f1_fg", "weighted_f1_fg", "macro_precision_fg", "macro_recall_fg", "accuracy", "ece",
           "ece_uncalibrated")
TIMINGS = ("fit_seconds", "calibration_seconds", "evaluation_seconds")
KNOBS = ("head", "mixup", "label_smoothing", "lr", "weight_decay")


class Embeddings(Protocol):
    """What a sweep needs of :class:`kenner.pipeline.PreparedEmbeddings`."""

    X: np.ndarray
    y: np.ndarray
    split: np.ndarray
    class_names: list[str]

    @property
    def dataset_name(self) -> str: ...


@dataclass(frozen=True)
class SweepGrid:
    """The values to combine. ``mlp`` holds hidden sizes per architecture (``()`` = linear head);
    empty ``lr``/``weight_decay`` keep the profile's value; ``fixed`` sets HeadConfig fields of every run."""

    profiles: tuple[str, ...] = ("base",)
    mlp: tuple[tuple[int, ...], ...] = ((),)
    mixup: tuple[float, ...] = (0.0,)
    label_smoothing: tuple[float, ...] = (0.0,)
    lr: tuple[float, ...] = ()
    weight_decay: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0,)
    fixed: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRun:
    """One configuration: its name, its name without the seed suffix, and its HeadConfig."""

    name: str
    config_name: str
    encoder: str
    profile: str
    config: HeadConfig


def fmt(value: float) -> str:
    """A number as it appears in run names: ``0.1 -> 0p1``, ``0 -> 0``, ``1e-05 -> 1e-05``."""
    return f"{value:g}".replace(".", "p")


def _arch(head_type: str, hidden_sizes: Sequence[int]) -> str:
    """``lin``, ``mlp1024_512``, ``arcface512``: the architecture part of a run name."""
    if head_type == "linear":
        return "lin"
    return ("mlp" if head_type == "mlp" else head_type) + "_".join(str(size) for size in hidden_sizes)


def expand_grid(grid: SweepGrid, *, dataset: str, encoder: str, bg: int = 0
                ) -> tuple[list[SweepRun], list[tuple[str, str]]]:
    """Every combination as a :class:`SweepRun`, plus (name, reason) of combinations that are invalid.

    Names follow ``<dataset>_<encoder>_<arch>_mix<a>_ls<s>[_lr<x>][_wd<y>]_<profile>[_bg<n>][_s<seed>]``;
    ``lr``/``wd`` appear when more than one value is swept, the seed when more than one seed is.
    """
    runs, skipped = [], []
    combos = itertools.product(grid.profiles, grid.mlp, grid.mixup, grid.label_smoothing,
                               grid.lr or (None,), grid.weight_decay or (None,), grid.seeds)
    for profile, hidden, mix, smoothing, lr, wd, seed in combos:
        explicit = {**grid.fixed, "mixup": mix, "label_smoothing": smoothing, "seed": seed}
        explicit.update({k: v for k, v in (("lr", lr), ("weight_decay", wd)) if v is not None})
        profile_head = resolve_config(profile, {}).head_type
        head_type = profile_head if profile_head != "linear" else ("mlp" if hidden else "linear")
        explicit["head_type"] = head_type
        if hidden:
            explicit["hidden_sizes"] = tuple(hidden)
        arch = _arch(head_type, tuple(hidden) or HeadConfig.hidden_sizes)
        parts = [dataset, encoder, arch, f"mix{fmt(mix)}", f"ls{fmt(smoothing)}"]
        parts += [f"lr{fmt(lr)}"] if len(grid.lr) > 1 else []
        parts += [f"wd{fmt(wd)}"] if len(grid.weight_decay) > 1 else []
        config_name = "_".join([*parts, profile, *([f"bg{bg}"] if bg else [])])
        name = config_name + (f"_s{seed}" if len(grid.seeds) > 1 else "")
        try:
            runs.append(SweepRun(name, config_name, encoder, profile, resolve_config(profile, explicit)))
        except KennerError as error:
            skipped.append((name, str(error)))
    return runs, skipped


def with_background(X: np.ndarray, y: np.ndarray, split: np.ndarray, class_names: list[str], X_bg: np.ndarray,
                    n_per_class: int, seed: int, background_class: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows of every split plus its background rows (:func:`kenner.data.background.draw_background`);
    they join ``background_class`` when it names a class, else a new last class. ``(X, y, split, names)``."""
    label, names = background_label(class_names, background_class)
    drawn = draw_background(split, y, label, len(X_bg), n_per_class, seed)
    Xs, ys, splits = [], [], []
    for name, rows in drawn.items():
        mask = split == name
        Xs += [X[mask], X_bg[rows].astype(X.dtype)]
        ys += [y[mask], np.full(len(rows), label, dtype=y.dtype)]
        splits.append(np.full(int(mask.sum()) + len(rows), name))
    return np.concatenate(Xs), np.concatenate(ys), np.concatenate(splits), names


def _metrics(y: np.ndarray, logits: torch.Tensor, temperature: float, class_names: list[str],
             background: str | None) -> dict[str, float]:
    """The results-table metrics of one head; ``ece_uncalibrated`` is the ECE at temperature 1."""
    proba = torch.softmax(logits.double() / temperature, dim=-1).numpy()
    metrics = classification_metrics(y, proba.argmax(1), proba, class_names, background_class=background)
    for key in METRICS[:4]:
        metrics.setdefault(key, metrics[key.removesuffix("_fg")])
    raw = torch.softmax(logits.double(), dim=-1).numpy()
    metrics["ece_uncalibrated"] = metrics["ece"] if temperature == 1.0 else expected_calibration_error(raw, y)
    return {key: metrics[key] for key in (*METRICS, "macro_f1")}


@dataclass
class _Task:
    """The arrays one encoder's runs are fitted and evaluated on."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    X_eval: np.ndarray
    y_eval: np.ndarray
    eval_split: str
    class_names: list[str]
    background: str | None


def _fit_group(runs: list[SweepRun], task: _Task, device: str | None) -> Iterator[dict[str, Any]]:
    """Fit a group of runs (as one batched model where their configs allow) and yield each one's row
    as soon as it is evaluated."""
    n_classes = len(task.class_names)
    configs = [run.config for run in runs]
    if any(c.calibrate for c in configs) and task.X_val is None:
        raise KennerError(f"{runs[0].name}: temperature scaling (profile calib/full, --calibrate) is fitted on "
                          "validation rows, but the split has none; give --split-ratios a val share")
    if batch_key(configs[0]) is not None:
        fit = fit_multihead(task.X_train, task.y_train, configs, n_classes=n_classes, X_val=task.X_val,
                            y_val=task.y_val, calibrate=False, device=device)
        if any(c.calibrate for c in configs):
            fit.calibrate(task.X_val, task.y_val)
        start = time.perf_counter()
        logits, temperatures = fit.logits(task.X_eval).cpu(), fit.temperatures.tolist()
        shared_eval = (time.perf_counter() - start) / len(runs)
        n_calibrated = max(sum(c.calibrate for c in configs), 1)
        fit_s, epochs = fit.fit_seconds / len(runs), fit.best_epochs
        calib_seconds = [fit.calibration_seconds / n_calibrated if c.calibrate else 0.0 for c in configs]
    else:
        (run,) = runs
        config = dataclasses.replace(run.config, calibrate=False, **({"device": device} if device else {}))
        head = EmbeddingClassifier(config).fit(task.X_train, task.y_train, X_val=task.X_val, y_val=task.y_val,
                                               n_classes=n_classes)
        fit_s, calib_seconds, temperature = head.fit_seconds_, [0.0], 1.0
        prior = torch.as_tensor(head.log_prior_)
        if run.config.calibrate:
            start = time.perf_counter()
            val_logits = inference_logits(torch.as_tensor(head.decision_function(task.X_val)), prior, config)
            temperature = fit_temperature(val_logits, task.y_val)
            calib_seconds = [time.perf_counter() - start]
        start = time.perf_counter()
        logits = inference_logits(torch.as_tensor(head.decision_function(task.X_eval)), prior, config)[None]
        shared_eval, epochs, temperatures = time.perf_counter() - start, [head.best_epoch_], [temperature]
    for run, head_logits, temperature, calib_s, epoch in zip(runs, logits, temperatures, calib_seconds, epochs,
                                                             strict=True):
        start = time.perf_counter()
        metrics = _metrics(task.y_eval, head_logits, temperature, task.class_names, task.background)
        yield {
            "name": run.name, "config_name": run.config_name, "encoder": run.encoder, "profile": run.profile,
            "head": _arch(run.config.head_type, run.config.hidden_sizes), "mixup": run.config.mixup,
            "label_smoothing": run.config.label_smoothing, "lr": run.config.lr,
            "weight_decay": run.config.weight_decay, "seed": run.config.seed,
            **metrics, "temperature": temperature, "fit_seconds": fit_s, "calibration_seconds": calib_s,
            "evaluation_seconds": shared_eval + time.perf_counter() - start, "best_epoch": epoch,
            "batched_heads": len(runs), "eval_split": task.eval_split,
            "config": json.dumps(run.config.to_dict(), sort_keys=True),
        }


def _task(data: Embeddings, background_class: str | None, X_bg: np.ndarray | None, bg: int,
          seed: int) -> _Task:
    X, y, split, class_names = data.X, data.y, data.split, list(data.class_names)
    if background_class is not None and background_class not in class_names:
        raise KennerError(f"--background-class {background_class!r} is not a class; "
                          f"classes: {', '.join(class_names[:20])}")
    background = background_class
    if bg > 0 and X_bg is not None:
        X, y, split, class_names = with_background(X, y, split, class_names, X_bg, bg, seed, background_class)
        background = background or BACKGROUND
    train, val = split == "train", split == "val"
    if not train.any():
        raise KennerError("the split has no training rows; check --split-ratios and the dataset size")
    eval_split = "test" if (split == "test").any() else "val"
    if not (split == eval_split).any():
        raise KennerError("the split has neither test nor validation rows to evaluate on")
    evaluated = split == eval_split
    return _Task(X[train], y[train], X[val] if val.any() else None, y[val] if val.any() else None,
                 X[evaluated], y[evaluated], eval_split, class_names, background)


def read_results(path: Path) -> pd.DataFrame:
    """The finished rows of a sweep (empty when none)."""
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise KennerError(f"{path}: unreadable sweep results ({error}); move it away to start over") from None


def _check_resumable(run: SweepRun, row: pd.Series, path: Path) -> None:
    saved, now = json.loads(row["config"]), run.config.to_dict()
    changed = sorted(key for key in now if saved.get(key) != now[key])
    if changed:
        raise KennerError(f"{path}: run {run.name} was made with other settings ({', '.join(changed)}); "
                          "use a new --out-dir or remove that file to start over")


def run_sweep(
    embeddings: dict[str, Embeddings],
    grid: SweepGrid,
    out_dir: str | Path,
    *,
    background_class: str | None = None,
    background: dict[str, np.ndarray] | None = None,
    bg: int = 0,
    reference: str = "base",
    device: str | None = None,
    tracker: Tracker | None = None,
) -> pd.DataFrame:
    """Run every configuration of ``grid`` for every encoder (name -> embeddings on one split).

    ``background``/``bg``: per encoder, a pool of embeddings of images of no class; ``bg`` rows per
    foreground class are added to every split, to ``background_class`` when given, else as a new class
    ``background`` (foreground metrics leave it out). ``tracker``: every configuration finished now
    becomes one tracked run (its name, settings, metrics and timings) in the tracker's experiment.
    Returns all rows, finished earlier or now.
    """
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.csv"
    results = read_results(path)
    done = {row["name"]: row for _, row in results.iterrows()} if len(results) else {}
    skipped_all: list[tuple[str, str]] = []
    for encoder, data in embeddings.items():
        runs, skipped = expand_grid(grid, dataset=data.dataset_name, encoder=encoder,
                                    bg=bg if background else 0)
        skipped_all += skipped
        for run in runs:
            if run.name in done:
                _check_resumable(run, done[run.name], path)
        todo = [run for run in runs if run.name not in done]
        if len(todo) < len(runs):
            log.info("%s: %d of %d configurations already finished", encoder, len(runs) - len(todo),
                     len(runs))
        if not todo:
            continue
        X_bg = (background or {}).get(encoder)
        task = _task(data, background_class, X_bg, bg, seed=0)
        groups: dict[Any, list[SweepRun]] = {}
        for run in todo:
            groups.setdefault(batch_key(run.config) or run.name, []).append(run)
        bar = tqdm(total=len(todo), desc=f"sweep {encoder}", unit="config", disable=None)
        for group in groups.values():
            for row in _fit_group(group, task, device):
                results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
                atomic_write_text(path, results.to_csv(index=False))
                track_row(tracker, row, sweep=out_dir.name)
                log.info("%s: macro_f1_fg=%.4f", row["name"], row["macro_f1_fg"])
                bar.update()
        bar.close()
    if skipped_all:
        lines = "".join(f"- `{name}`: {why}\n" for name, why in skipped_all)
        atomic_write_text(out_dir / "skipped.md", lines)
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    atomic_write_text(out_dir / "summary.md", summary_markdown(results, reference, skipped_all))
    return results


def track_row(tracker: Tracker, row: dict[str, Any], *, sweep: str) -> None:
    """One tracked run for one results row: the head config and grid values as parameters, metrics and
    timings as metrics, the sweep folder's name, encoder and profile as tags."""
    params = {"encoder": row["encoder"], "profile": row["profile"], "head": json.loads(row["config"])}
    tags = {"kenner.mode": "sweep", "kenner.sweep": sweep, "kenner.encoder": row["encoder"],
            "kenner.profile": row["profile"], "kenner.config_name": row["config_name"]}
    with tracker.start_run(row["name"], params, tags=tags):
        tracker.log_metrics({key: row[key] for key in (*METRICS, "macro_f1", "temperature", *TIMINGS,
                                                        "best_epoch", "batched_heads")})


def frame_table(df: pd.DataFrame) -> str:
    """A data frame as a Markdown table (the report's formatting: floats with 4 decimals)."""
    if df.empty:
        return "(none)\n"
    rows = [[format_number(value) for value in row] for row in df.itertuples(index=False)]
    return markdown_table([str(c) for c in df.columns], rows) + "\n"


def _mean_std(df: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean ± std (over seeds) of ``columns`` per group, as strings, plus the number of runs."""
    grouped = df.groupby(list(by), sort=True)
    out = grouped.size().rename("runs").reset_index()
    for column in columns:
        mean, std = grouped[column].mean().to_numpy(), grouped[column].std(ddof=0).to_numpy()
        out[column] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True)]
    return out


def results_markdown(results: pd.DataFrame) -> str:
    """results.md: one row per run; with several seeds also mean ± std per configuration."""
    out = io.StringIO()
    out.write("# Sweep results\n\nMetrics on each run's evaluation split (test when there is one); `_fg` "
              "metrics leave the background class out (equal to the plain ones without one). Timings are "
              "seconds per configuration (a batched group's time divided by its heads).\n\n")
    if results.empty:
        return out.getvalue() + "(no finished runs)\n"
    out.write(frame_table(results[["name", *METRICS, *TIMINGS, "batched_heads"]]))
    if results["seed"].nunique() > 1:
        out.write("\n## Mean ± std over seeds\n\n")
        out.write(frame_table(_mean_std(results, ["config_name"], ["macro_f1_fg", "accuracy", "ece"])))
    return out.getvalue()


def summary_markdown(results: pd.DataFrame, reference: str, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """summary.md: averages per profile, encoder and knob value; best configuration per encoder ×
    profile; deltas of every profile against ``reference`` on otherwise identical runs."""
    out = io.StringIO()
    out.write(f"# Sweep summary\n\n{len(results)} finished runs")
    out.write(f", {len(skipped)} invalid combinations skipped (see skipped.md).\n\n" if skipped else ".\n\n")
    if results.empty:
        return out.getvalue()
    shown = ["macro_f1_fg", "weighted_f1_fg", "accuracy", "ece", "fit_seconds"]
    for by in ("profile", "encoder", *(k for k in KNOBS if results[k].nunique() > 1)):
        out.write(f"## Mean per {by}\n\n")
        table = results.groupby(by, sort=True)[shown].mean().reset_index()
        table.insert(1, "runs", results.groupby(by, sort=True).size().to_numpy())
        out.write(frame_table(table) + "\n")
    out.write("## Best configuration per encoder × profile (by macro_f1_fg, mean over seeds)\n\n")
    grouped = results.groupby(["encoder", "profile", "config_name"], sort=True)
    per_config = grouped[shown].mean().reset_index()
    if results["seed"].nunique() > 1:
        per_config.insert(4, "macro_f1_fg_std", grouped["macro_f1_fg"].std(ddof=0).to_numpy())
        per_config.insert(4, "seeds", grouped.size().to_numpy())
    best = per_config.loc[per_config.groupby(["encoder", "profile"])["macro_f1_fg"].idxmax()]
    out.write(frame_table(best) + "\n")
    out.write(f"## Delta against the reference profile `{reference}`\n\n")
    if reference not in set(results["profile"]):
        out.write(f"The reference profile {reference!r} is not among the finished runs.\n")
        return out.getvalue()
    keys = ["encoder", "head", "mixup", "label_smoothing", "lr", "weight_decay", "seed"]
    ref = results[results["profile"] == reference].set_index(keys)
    rows = []
    for profile, part in results[results["profile"] != reference].groupby("profile", sort=True):
        paired = part.set_index(keys).join(ref[["macro_f1_fg", "accuracy", "ece"]], rsuffix="_ref",
                                           how="inner")
        if paired.empty:
            continue
        delta = paired["macro_f1_fg"] - paired["macro_f1_fg_ref"]
        rows.append({"profile": profile, "pairs": len(paired), "d_macro_f1_fg": delta.mean(),
                     "d_accuracy": (paired["accuracy"] - paired["accuracy_ref"]).mean(),
                     "d_ece": (paired["ece"] - paired["ece_ref"]).mean(), "wins": int((delta > 0).sum())})
    out.write("Mean difference (profile − reference) over runs identical in every other setting.\n\n")
    out.write(frame_table(pd.DataFrame(rows)))
    return out.getvalue()
