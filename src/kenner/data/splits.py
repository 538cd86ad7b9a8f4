"""Leakage-safe splits: whole groups (objects) go to train, val or test, stratified by class.

Priority: a group never crosses splits; then each class is spread over the splits in the wanted
ratios (counted in samples). Everything is deterministic for a seed and independent of input order.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from kenner.errors import KennerError
from kenner.io import atomic_write_json, atomic_write_text, read_json

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Group ids per split, each list sorted."""

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def ids(self, name: str) -> list[str]:
        """The group ids of split ``name`` ("train", "val" or "test")."""
        return getattr(self, name)


def assert_no_group_leak(split: Split) -> None:
    """Raise KennerError if a group id is in two splits (or twice in one)."""
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for group in split.ids(name):
            if group in seen:
                raise KennerError(
                    f"group {group!r} is in both {seen[group]} and {name}: the split leaks; make the split again"
                )
            seen[group] = name


def make_split(
    groups: Sequence, labels: Sequence, *, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> tuple[Split, list[str]]:
    """Group-aware stratified train/val/test split of samples (one group id and label per sample).

    Per class, the class's groups are shuffled with the seed and each goes to the split furthest
    below its target sample count, after one group has been given to each split (train, val, test
    in that order). A group with mixed labels counts for its majority label. Classes with fewer
    groups than splits are reported in the returned warnings; their groups fill train, then val.
    """
    ratios = _check_ratios(ratios)
    pairs = _pairs(groups, labels)
    split, messages = _assign(pairs, ratios, (seed,))
    assert_no_group_leak(split)
    return split, messages


def make_folds(
    groups: Sequence, labels: Sequence, *, k: int, seed: int = 0, val_fraction: float = 0.15
) -> tuple[list[Split], list[str]]:
    """K group-aware stratified folds; the test sets are disjoint and together cover every group.

    Fold i's test set is the i-th fold of sklearn's StratifiedGroupKFold; the other groups are split
    into train and val (``val_fraction`` of the whole dataset) like ``make_split``. Small classes
    are reported in the returned warnings (``fold i: ...``).
    """
    if k < 2:
        raise KennerError(f"k-fold needs k >= 2, got {k}")
    if not 0 <= val_fraction < 1 - 1 / k:
        raise KennerError(f"val_fraction must be in [0, {1 - 1 / k:.3f}) for k={k}, got {val_fraction}")
    pairs = _pairs(groups, labels)
    n_groups = len({group for group, _ in pairs})
    if n_groups < k:
        raise KennerError(f"{k}-fold needs at least {k} groups, the dataset has {n_groups}")
    val_ratio = val_fraction * k / (k - 1)
    folder = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        split_iter = folder.split(np.zeros(len(pairs)), [lab for _, lab in pairs], [grp for grp, _ in pairs])
        fold_indices = [test for _, test in split_iter]
    folds, messages = [], []
    for fold, test_idx in enumerate(fold_indices):
        test_groups = {pairs[i][0] for i in test_idx}
        rest = [pair for pair in pairs if pair[0] not in test_groups]
        inner, inner_messages = _assign(rest, (1 - val_ratio, val_ratio, 0.0), (seed, fold))
        messages += [f"fold {fold}: {message}" for message in inner_messages]
        split = Split(train=inner.train, val=inner.val, test=sorted(test_groups))
        assert_no_group_leak(split)
        folds.append(split)
    return folds, messages


def split_of_samples(split: Split, groups: Sequence) -> list[str]:
    """Split name ("train", "val" or "test") of each sample, from its group id."""
    where = {group: name for name in SPLIT_NAMES for group in split.ids(name)}
    missing = sorted({str(group) for group in groups if str(group) not in where})
    if missing:
        raise KennerError(
            f"{len(missing)} group(s) of the dataset are in no split, e.g. {missing[0]!r}: "
            "the split folder does not match the dataset; make the split again"
        )
    return [where[str(group)] for group in groups]


def split_summary(split: Split, groups: Sequence, labels: Sequence) -> dict[str, dict[str, int]]:
    """Per split: number of groups, samples and classes (for reports)."""
    return column_summary(split_of_samples(split, groups), groups, labels)


def column_summary(split_column: Sequence[str], groups: Sequence, labels: Sequence) -> dict[str, dict[str, int]]:
    """:func:`split_summary` from a per-sample split column (rows added after splitting count too)."""
    summary = {}
    for name in SPLIT_NAMES:
        rows = [
            (group, str(label))
            for group, label, where in zip(groups, labels, split_column, strict=True)
            if where == name
        ]
        summary[name] = {
            "groups": len({group for group, _ in rows}),
            "samples": len(rows),
            "classes": len({label for _, label in rows}),
        }
    return summary


def save_split(split: Split, directory: str | Path, *, groups: Sequence, labels: Sequence) -> Path:
    """Write train/val/test_ids.json and summary.csv (sample counts per class and split)."""
    assert_no_group_leak(split)
    directory = Path(directory)
    names = split_of_samples(split, groups)
    counts: dict[str, Counter] = defaultdict(Counter)
    for label, name in zip(labels, names, strict=True):
        counts[str(label)][name] += 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", *SPLIT_NAMES, "total"])
    for label in sorted(counts):
        row = [counts[label][name] for name in SPLIT_NAMES]
        writer.writerow([label, *row, sum(row)])
    for name in SPLIT_NAMES:
        atomic_write_json(directory / f"{name}_ids.json", sorted(split.ids(name)))
    atomic_write_text(directory / "summary.csv", buffer.getvalue())
    return directory


def load_split(directory: str | Path) -> Split:
    """Read a split folder written by ``save_split``."""
    directory = Path(directory)
    lists = {}
    for name in SPLIT_NAMES:
        path = directory / f"{name}_ids.json"
        if not path.is_file():
            raise KennerError(f"{path} is missing: {directory} is not a split folder; make the split again")
        try:
            ids = read_json(path)
        except (OSError, ValueError) as error:
            raise KennerError(f"{path} cannot be read ({error}); make the split again") from None
        if not isinstance(ids, list) or not all(isinstance(group, str) for group in ids):
            raise KennerError(f"{path} must hold a JSON list of group ids (strings); make the split again")
        lists[name] = sorted(ids)
    split = Split(**lists)
    assert_no_group_leak(split)
    return split


def save_folds(folds: Sequence[Split], directory: str | Path, *, groups: Sequence, labels: Sequence) -> Path:
    """Write fold_0/ ... fold_{K-1}/ under ``directory``, each like ``save_split``."""
    directory = Path(directory)
    for index, split in enumerate(folds):
        save_split(split, directory / f"fold_{index}", groups=groups, labels=labels)
    return directory


def load_folds(directory: str | Path) -> list[Split]:
    """Read the folds written by ``save_folds``, in fold order."""
    directory = Path(directory)
    found = {}
    if directory.is_dir():
        for path in directory.iterdir():
            match = re.fullmatch(r"fold_(\d+)", path.name)
            if match and path.is_dir():
                found[int(match.group(1))] = path
    if not found:
        raise KennerError(f"{directory} holds no fold_<i>/ folders; make the folds again")
    if sorted(found) != list(range(len(found))):
        raise KennerError(f"{directory}: fold folders are not numbered 0..{len(found) - 1}; make the folds again")
    return [load_split(found[index]) for index in range(len(found))]


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or abs(sum(values) - 1) > 1e-6:
        raise KennerError(
            f"split ratios must be three non-negative numbers summing to 1 with train > 0, got {tuple(ratios)}"
        )
    return values  # type: ignore[return-value]


def _pairs(groups: Sequence, labels: Sequence) -> list[tuple[str, str]]:
    """(group, label) per sample as strings, sorted so the result never depends on input order."""
    if len(groups) != len(labels):
        raise KennerError(f"{len(groups)} group ids for {len(labels)} labels")
    if len(groups) == 0:
        raise KennerError("cannot split an empty dataset")
    return sorted(zip(map(str, groups), map(str, labels), strict=True))


def _assign(
    pairs: list[tuple[str, str]], ratios: tuple[float, ...], seed_key: tuple[int, ...]
) -> tuple[Split, list[str]]:
    """Greedy per-class assignment of whole groups to splits; ``pairs`` must be sorted."""
    messages = []
    group_labels: dict[str, Counter] = defaultdict(Counter)
    for group, label in pairs:
        group_labels[group][label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for group in sorted(group_labels):
        votes = group_labels[group]
        label = min(votes, key=lambda lab: (-votes[lab], lab))
        if len(votes) > 1:
            mix = ", ".join(f"{lab}: {n}" for lab, n in sorted(votes.items()))
            messages.append(f"group {group!r} has mixed labels ({mix}): split with its majority {label!r}")
        by_class[label].append(group)
    active = [i for i, ratio in enumerate(ratios) if ratio > 0]
    assigned: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for label in sorted(by_class):
        class_groups = by_class[label]
        rng = np.random.default_rng([*seed_key, zlib.crc32(label.encode("utf-8"))])
        order = [class_groups[i] for i in rng.permutation(len(class_groups))]
        sizes = [sum(group_labels[group].values()) for group in order]
        targets = [ratio * sum(sizes) for ratio in ratios]
        filled = [0.0, 0.0, 0.0]
        for position, (group, size) in enumerate(zip(order, sizes, strict=True)):
            if position < len(active):
                target = active[position]
            else:
                target = max(active, key=lambda i: (targets[i] - filled[i], -i))
            filled[target] += size
            assigned[SPLIT_NAMES[target]].append(group)
        if len(order) < len(active):
            lacking = " or ".join(SPLIT_NAMES[i] for i in active[len(order) :])
            noun = "group" if len(order) == 1 else "groups"
            messages.append(f"class {label!r} has {len(order)} {noun}: no {lacking} sample")
    split = Split(**{name: sorted(ids) for name, ids in assigned.items()})
    return split, messages
