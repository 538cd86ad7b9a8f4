"""``kenner audit``: near-duplicates and leakage across the split, likely label errors, outliers and confusable
classes of a dataset, on the embeddings the run driver caches (same Embedder, same store), before any training.

The split is the one a run would use: ``--splits DIR``, a run folder's ``RUN/splits`` (``--out-dir RUN``), or
made from the split flags exactly as ``kenner train`` would make it (not saved). Pairs are reported with the groups
as the dataset gives them; the split is taken after the merges a run makes (identical files with
``--duplicates merge``, near-duplicates with ``--group-duplicates``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kenner.audit.confusable import confusable_pairs
from kenner.audit.label_issues import label_issues, out_of_fold_proba
from kenner.audit.near_duplicates import (
    crossing,
    identical_pairs,
    near_duplicates,
    resolve_threshold,
    threshold_examples,
)
from kenner.audit.neighbours import nearest, pair_features
from kenner.audit.outliers import find_outliers
from kenner.audit.report import AuditedData, Findings, write_audit
from kenner.config.sections import SplitConfig
from kenner.config.tree import RunConfig, dataset_name
from kenner.data.duplicates import merge_duplicates, merge_pairs
from kenner.data.manifest import Dataset
from kenner.data.splits import load_split, make_split, split_of_samples
from kenner.encoders import check_encoder
from kenner.errors import DataError, KennerError
from kenner.io import writable_dir
from kenner.methods.base import Samples
from kenner.runs.data import content_hashes, embedder_for, load_data

log = logging.getLogger(__name__)

NEIGHBOURS = 10
AROUND_THRESHOLD = 4


@dataclass
class AuditResult:
    """Where the audit wrote its outputs, how many findings of each kind, and how long each step took."""

    out_dir: Path
    files: dict[str, Path]
    counts: dict[str, int]
    seconds: dict[str, float]
    findings: Findings
    data: AuditedData
    features: np.ndarray  # the unit vectors the findings were computed on, one per sample


def default_audit_dir(cfg: RunConfig, run_dir: str | None) -> Path:
    """``RUN/audit`` with ``--out-dir RUN``, else ``audits/<dataset>``."""
    return Path(run_dir) / "audit" if run_dir else Path("audits") / dataset_name(cfg.data.data)


def audit_dataset(
    cfg: RunConfig, *, run_dir: str | None = None, output: str | None = None, top: int = 20, folds: int = 5
) -> AuditResult:
    """Audit ``cfg``'s dataset and write ``audit.md``, ``audit.csv`` and contact sheets into ``output``."""
    if cfg.split.splits and run_dir:
        raise KennerError("give the split either as --splits DIR or as a run folder (--out-dir RUN), not both")
    check_encoder(cfg.encoder.encoder, weights=cfg.encoder.weights)
    embedder = embedder_for(cfg)
    writable_dir(embedder.cache_dir, "--cache-dir")
    out_dir = Path(output) if output else default_audit_dir(cfg, run_dir)
    writable_dir(out_dir, "--output")
    split_source = _split_source(cfg.split, run_dir)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    data_cfg = dataclasses.replace(cfg.data, duplicates="ignore", group_duplicates=False)
    dataset, exclusions = load_data(data_cfg, out_dir, cache_dir=cfg.encoder.cache_dir)
    hashes = content_hashes(dataset, cfg.encoder.cache_dir)
    seconds["load and hash"] = time.perf_counter() - started

    started = time.perf_counter()
    samples = Samples(dataset.ids, [s.paths for s in dataset.samples], embedder=embedder, views=cfg.encoder.views)
    features = pair_features(samples.per_view())
    seconds["embeddings (cached after the first run)"] = time.perf_counter() - started

    started = time.perf_counter()
    neighbours = nearest(features, NEIGHBOURS)
    threshold = resolve_threshold(neighbours, cfg.data.near_duplicate_threshold)
    near = near_duplicates(neighbours, threshold)
    above, below = threshold_examples(neighbours, threshold, AROUND_THRESHOLD)
    identical = identical_pairs([[hashes[path] for path in s.paths.values()] for s in dataset.samples])
    seconds["near-duplicates (kNN search)"] = time.perf_counter() - started

    started = time.perf_counter()
    grouped = _as_run_groups(dataset, cfg, hashes, near.as_tuples())
    split = np.asarray(_split_column(grouped, cfg.split, split_source))
    seconds["split"] = time.perf_counter() - started

    started = time.perf_counter()
    index = dataset.class_to_idx
    y = np.asarray([index[label] for label in dataset.labels])
    proba = out_of_fold_proba(features, y, grouped.groups, folds=folds, seed=cfg.split.split_seed)
    issues = label_issues(y, proba)
    seconds["label issues (out-of-fold heads + cleanlab)"] = time.perf_counter() - started

    started = time.perf_counter()
    outliers = find_outliers(features, y, neighbours)
    confusable = confusable_pairs(neighbours, y, len(dataset.classes))
    seconds["outliers and confusable classes"] = time.perf_counter() - started

    audited = AuditedData(
        ids=dataset.ids,
        labels=dataset.labels,
        groups=dataset.groups,
        split=split,
        images=[next(iter(s.paths.values())) for s in dataset.samples],
        class_names=dataset.classes,
    )
    leakage = int(crossing(near, split).sum() + crossing(identical, split).sum())
    findings = Findings(
        identical=identical,
        near=near,
        above=above,
        below=below,
        threshold=threshold,
        issues=issues,
        outliers=outliers,
        confusable=confusable,
        summary={
            "dataset": f"{dataset.source} ({len(dataset)} samples, {len(dataset.classes)} classes, "
            f"{len(set(dataset.groups))} groups{f', {len(exclusions)} left out' if exclusions else ''})",
            "encoder": f"{cfg.encoder.encoder} (views: {', '.join(dataset.views)})",
            "split": split_source or f"made as kenner train would (seed {cfg.split.split_seed}, not saved)",
            "seconds": ", ".join(f"{name} {value:.2f}" for name, value in seconds.items()),
        },
    )
    started = time.perf_counter()
    files = write_audit(audited, findings, out_dir, top=top)
    seconds["report"] = time.perf_counter() - started
    counts = {
        "leakage": leakage,
        "near_duplicates": len(near),
        "identical": len(identical),
        "label_issues": len(issues.rows),
        "outliers": len(outliers.rows),
    }
    return AuditResult(out_dir, files, counts, seconds, findings, audited, features)


def _split_source(cfg: SplitConfig, run_dir: str | None) -> str | None:
    """The folder holding the split to audit, or None to make one."""
    if cfg.splits:
        if not (Path(cfg.splits) / "train_ids.json").is_file():
            raise KennerError(f"--splits {cfg.splits}: no train_ids.json there; make one with 'kenner split'")
        return cfg.splits
    if run_dir:
        folder = Path(run_dir) / "splits"
        if not (folder / "train_ids.json").is_file():
            raise KennerError(f"--out-dir {run_dir}: no run split there ({folder / 'train_ids.json'} is missing)")
        return str(folder)
    return None


def _as_run_groups(dataset: Dataset, cfg: RunConfig, hashes: dict, near: list[tuple[int, int]]) -> Dataset:
    """The dataset with the groups a run would split by: identical files merged (``--duplicates merge``) and,
    with ``--group-duplicates``, near-duplicates of one label."""
    if cfg.data.duplicates == "merge":
        try:
            dataset, _ = merge_duplicates(dataset, hashes, "merge")
        except DataError as error:  # identical files with two labels: a run refuses them, the audit lists them
            log.warning("the split ignores identical files: %s", error)
    if cfg.data.group_duplicates:
        labels = dataset.labels
        dataset, _ = merge_pairs(dataset, [(a, b) for a, b in near if labels[a] == labels[b]])
    return dataset


def _split_column(dataset: Dataset, cfg: SplitConfig, source: str | None) -> list[str]:
    if source:
        return split_of_samples(load_split(source), dataset.groups)
    split, _ = make_split(dataset.groups, dataset.labels, ratios=cfg.split_ratios, seed=cfg.split_seed)
    return split_of_samples(split, dataset.groups)


def count_cross_split_duplicates(samples: Samples, split: np.ndarray, threshold: float | None) -> tuple[int, float]:
    """How many near-duplicate pairs of ``samples`` lie in different splits, and the cosine threshold used
    (``threshold``, or the automatic one when None)."""
    if len(samples) < 2:
        return 0, 1.0
    neighbours = nearest(pair_features(samples.per_view()), NEIGHBOURS)
    threshold = resolve_threshold(neighbours, threshold)
    return int(crossing(near_duplicates(neighbours, threshold), split).sum()), threshold
