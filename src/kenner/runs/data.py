"""What every run starts from: the dataset (validated, filtered), its split or folds, and the task data a
method is fitted on, with background rows when ``--bg`` asks for them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from kenner.audit.near_duplicates import near_duplicates, resolve_threshold
from kenner.audit.neighbours import nearest, pair_features
from kenner.config.sections import DataConfig, EncoderConfig, SplitConfig
from kenner.config.tree import RunConfig
from kenner.data.background import background_images, background_label, draw_background
from kenner.data.duplicates import merge_duplicates, merge_pairs, write_duplicates
from kenner.data.exclude import exclude_ids
from kenner.data.filters import apply_filters
from kenner.data.manifest import Dataset, Exclusion, load_dataset, write_exclusions
from kenner.data.splits import (
    Split,
    load_folds,
    load_split,
    make_folds,
    make_split,
    save_folds,
    save_split,
    split_of_samples,
)
from kenner.encoders.embedder import AnyEmbedder, make_embedder
from kenner.encoders.extract import HASH_CACHE_NAME, hash_images
from kenner.encoders.store import HashCache
from kenner.encoders.views import resolve_mode
from kenner.errors import DataError, KennerError
from kenner.io import atomic_write_text
from kenner.methods.base import Samples, TaskData, concat_samples
from kenner.paths import default_cache_dir

log = logging.getLogger(__name__)

EXCLUDED = "excluded.csv"
DUPLICATES = "duplicates.csv"
SPLIT_WARNINGS = "split_warnings.txt"
WARNINGS_SHOWN = 5
NEAR_DUPLICATE_NEIGHBOURS = 10


def load_data(
    cfg: DataConfig,
    out_dir: Path | None = None,
    *,
    cache_dir: str | None = None,
    min_classes: int = 2,
    embedder: AnyEmbedder | None = None,
) -> tuple[Dataset, list[Exclusion]]:
    """Load, validate and filter a dataset (less the ids of ``--exclude``), merge the groups of identical images
    (``--duplicates``) and, with ``--group-duplicates``, of near-duplicates; what was left out goes to
    ``out_dir/excluded.csv``, the merged copies to ``out_dir/duplicates.csv``.

    ``cache_dir``: the embedding cache whose hash cache remembers the images' content hashes. A dataset with
    fewer than ``min_classes`` classes is refused (training needs two; evaluating and embedding do not).
    ``embedder``: the run's, for ``--group-duplicates`` (the default encoder when not given).
    """
    if not cfg.data:
        raise KennerError("no dataset given: pass --data FOLDER_OR_MANIFEST")
    dataset, exclusions = load_dataset(
        cfg.data, on_bad_image=cfg.on_bad_image, group_by=cfg.group_by, group_regex=cfg.group_regex
    )
    if cfg.exclude:
        dataset, listed = exclude_ids(dataset, cfg.exclude)
        exclusions = [*exclusions, *listed]
    dataset, filtered = apply_filters(
        dataset,
        omit_classes=cfg.omit_classes,
        min_condition=cfg.min_condition,
        min_samples_per_class=cfg.min_samples_per_class,
        min_size=cfg.min_size,
    )
    exclusions = [*exclusions, *filtered]
    if out_dir is not None and exclusions:
        write_exclusions(exclusions, out_dir / EXCLUDED)
        log.info("%d image(s)/sample(s)/file(s) left out; see %s", len(exclusions), out_dir / EXCLUDED)
    if not dataset.samples:
        raise KennerError(f"{cfg.data}: no samples left after validation and filters")
    if len(dataset.classes) < min_classes:
        shown = ", ".join(repr(name) for name in dataset.classes)
        raise KennerError(
            f"{cfg.data}: {len(dataset.classes)} class ({shown}) after validation and filters; "
            f"a classifier needs at least {min_classes} classes"
        )
    if cfg.background_class and cfg.background_class not in dataset.classes:
        raise KennerError(
            f"--background-class {cfg.background_class!r} is not a class of {cfg.data}; "
            f"classes: {', '.join(dataset.classes[:20])}"
        )
    if cfg.duplicates != "ignore":
        dataset, copies = merge_duplicates(dataset, content_hashes(dataset, cache_dir), cfg.duplicates)
        if copies:
            where = ""
            if out_dir is not None:
                where = f"; listed in {write_duplicates(copies, out_dir / DUPLICATES)}"
            log.warning(
                "%d image(s) appear in more than one group: their groups are merged into %d so that no copy "
                "crosses splits (--duplicates refuse stops instead)%s",
                len(copies),
                len({c.group for c in copies}),
                where,
            )
    if cfg.group_duplicates:
        dataset = group_near_duplicates(
            dataset, cfg.near_duplicate_threshold, embedder or make_embedder(EncoderConfig(cache_dir=cache_dir))
        )
    return dataset, exclusions


def group_near_duplicates(dataset: Dataset, threshold: float | None, embedder: AnyEmbedder) -> Dataset:
    """``--group-duplicates``: the groups of near-duplicate samples with one label merged into one group (pairs
    with two labels are left apart: the audit lists them as label questions)."""
    features = pair_features(embedder.per_view([sample.paths for sample in dataset.samples], dataset.views))
    neighbours = nearest(features, NEAR_DUPLICATE_NEIGHBOURS)
    threshold = resolve_threshold(neighbours, threshold)
    pairs = near_duplicates(neighbours, threshold).as_tuples()
    labels = dataset.labels
    same = [(a, b) for a, b in pairs if labels[a] == labels[b]]
    dataset, merged = merge_pairs(dataset, same)
    log.info(
        "--group-duplicates: %d near-duplicate pair(s) (cosine >= %.3f) join %d group(s) into others%s",
        len(same),
        threshold,
        merged,
        f"; {len(pairs) - len(same)} pair(s) with two labels left apart" if len(pairs) > len(same) else "",
    )
    return dataset


def content_hashes(dataset: Dataset, cache_dir: str | None) -> dict[Path, str]:
    """The SHA-256 of every image of ``dataset``, through the embedding cache's hash cache (without it when the
    cache folder cannot be written: the hashes are then computed and not kept)."""
    paths = list(dict.fromkeys(path for sample in dataset.samples for path in sample.paths.values()))
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    try:
        cache = HashCache(root / HASH_CACHE_NAME)
    except (OSError, KennerError) as error:
        log.debug("no hash cache in %s (%s)", root, error)
        cache = None
    return dict(zip(paths, hash_images(paths, cache), strict=True))


def report_split_warnings(messages: list[str], out_dir: Path) -> None:
    """Log the first few split warnings and how many there are; all of them go to ``out_dir/split_warnings.txt``."""
    if not messages:
        return
    path = atomic_write_text(out_dir / SPLIT_WARNINGS, "\n".join(messages) + "\n")
    for message in messages[:WARNINGS_SHOWN]:
        log.warning("split: %s", message)
    if len(messages) > WARNINGS_SHOWN:
        log.warning(
            "split: ... and %d more warnings (%d in all, listed in %s)",
            len(messages) - WARNINGS_SHOWN,
            len(messages),
            path,
        )


def check_views(dataset: Dataset, mode: str) -> None:
    """Fail before any embedding when ``--views`` names no view (or combination) of ``dataset``."""
    try:
        resolve_mode(dataset.views, mode)
    except KennerError as error:
        raise DataError(f"--views: {error}", path=str(dataset.source)) from None


def resolve_split(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> Split:
    """Reuse ``--splits DIR`` or ``out_dir/splits``; otherwise make the split and save it there."""
    target = out_dir / "splits"
    source = Path(cfg.splits) if cfg.splits else target
    if (source / "train_ids.json").exists():
        split = load_split(source)
        if source != target:
            save_split(split, target, groups=dataset.groups, labels=dataset.labels)
        log.info("reusing the split in %s", source)
        return split
    if cfg.splits:
        raise KennerError(f"--splits {cfg.splits}: no train_ids.json there; make one with 'kenner split'")
    split, warnings = make_split(dataset.groups, dataset.labels, ratios=cfg.split_ratios, seed=cfg.split_seed)
    report_split_warnings(warnings, out_dir)
    save_split(split, target, groups=dataset.groups, labels=dataset.labels)
    return split


def resolve_folds(dataset: Dataset, cfg: SplitConfig, out_dir: Path) -> list[Split]:
    """K group-aware folds, reused from ``--splits DIR`` / ``out_dir/splits`` when saved there."""
    target = out_dir / "splits"
    source = Path(cfg.splits) if cfg.splits else target
    if (source / "fold_0" / "train_ids.json").exists():
        folds = load_folds(source)
        if len(folds) != cfg.folds:
            raise KennerError(f"{source} holds {len(folds)} folds, but --folds {cfg.folds} was asked for")
        if source != target:
            save_folds(folds, target, groups=dataset.groups, labels=dataset.labels)
        return folds
    if cfg.splits:
        raise KennerError(
            f"--splits {cfg.splits}: no fold_0/train_ids.json there; make folds with 'kenner split --folds {cfg.folds}'"
        )
    folds, warnings = make_folds(
        dataset.groups, dataset.labels, k=cfg.folds, seed=cfg.split_seed, val_fraction=cfg.split_ratios[1]
    )
    report_split_warnings(warnings, out_dir)
    save_folds(folds, target, groups=dataset.groups, labels=dataset.labels)
    return folds


def embedder_for(cfg: RunConfig) -> AnyEmbedder:
    """The run's encoder (or ensemble) and cache (encoders are built only when embeddings are needed)."""
    return make_embedder(cfg.encoder, cfg.compute, background=cfg.data.background_color)


def task_data(
    dataset: Dataset,
    split: Split | np.ndarray,
    embedder: AnyEmbedder | None,
    views: str,
    *,
    class_names: list[str] | None = None,
    background_class: str | None = None,
) -> TaskData:
    """The dataset as task data: samples, class indices (``class_names``: the dataset's classes by
    default, a trained run's otherwise) and the split column."""
    names = list(class_names) if class_names is not None else list(dataset.classes)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(dataset.labels) - set(index))
    if unknown:
        raise KennerError(f"{dataset.source}: classes the run never saw: {', '.join(unknown[:10])}")
    column = split if isinstance(split, np.ndarray) else np.asarray(split_of_samples(split, dataset.groups))
    samples = Samples(dataset.ids, [sample.paths for sample in dataset.samples], embedder=embedder, views=views)
    return TaskData(
        samples=samples,
        y=np.asarray([index[label] for label in dataset.labels]),
        split=column,
        class_names=names,
        groups=list(dataset.groups),
        background_class=background_class,
    )


def with_background(data: TaskData, cfg: DataConfig, *, seed: int) -> TaskData:
    """``--bg N`` background images per foreground class appended to every split, as samples
    ``background/<file>#<n>`` of the background class (see :mod:`kenner.data.background`)."""
    if not cfg.bg:
        return data
    paths = background_images(cfg.background_dir)
    label, names = background_label(data.class_names, cfg.background_class)
    drawn = draw_background(data.split, data.y, label, len(paths), cfg.bg, seed)
    rows = np.concatenate(list(drawn.values()))
    split = np.concatenate([np.full(len(r), name) for name, r in drawn.items()])
    root = Path(cfg.background_dir)
    ids = [f"background/{paths[i].relative_to(root).as_posix()}#{n}" for n, i in enumerate(rows)]
    views = data.samples.view_names
    extra = Samples(
        ids, [dict.fromkeys(views, paths[i]) for i in rows], embedder=data.samples.embedder, views=data.samples.views
    )
    return dataclasses.replace(
        data,
        samples=concat_samples(data.samples, extra),
        y=np.concatenate([data.y, np.full(len(rows), label)]),
        split=np.concatenate([data.split, split]),
        class_names=names,
        groups=[*data.groups, *ids],
        background_class=names[label],
    )


def split_dataset(data: DataConfig, cfg: SplitConfig, out_dir: str | Path) -> str:
    """``kenner split``: make a split (or ``--folds`` K folds) of the dataset and save it in ``out_dir``;
    returns a one-line summary."""
    out_dir = Path(out_dir)
    dataset, _ = load_data(data, out_dir)
    if cfg.folds:
        folds, warnings = make_folds(
            dataset.groups, dataset.labels, k=cfg.folds, seed=cfg.split_seed, val_fraction=cfg.split_ratios[1]
        )
        report_split_warnings(warnings, out_dir)
        save_folds(folds, out_dir, groups=dataset.groups, labels=dataset.labels)
        return f"{len(folds)} folds of {len(set(dataset.groups))} groups written to {out_dir}"
    split, warnings = make_split(dataset.groups, dataset.labels, ratios=cfg.split_ratios, seed=cfg.split_seed)
    report_split_warnings(warnings, out_dir)
    save_split(split, out_dir, groups=dataset.groups, labels=dataset.labels)
    return f"train/val/test groups: {len(split.train)}/{len(split.val)}/{len(split.test)} -> {out_dir}"
