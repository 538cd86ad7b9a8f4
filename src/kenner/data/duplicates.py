"""Byte-identical images under different groups: one photo listed twice, which a split could put in train and test.

``merge`` (the default) joins every set of groups that share an image's content into one group, named after the
first of them in sorted order; ``refuse`` stops with one line naming the copies; ``ignore`` keeps the groups as given.
Identical images with two labels are an error either way (one object cannot have two labels). Content is compared
by SHA-256 (``hashes``: image path -> hex digest, e.g. from the embedding cache's hash cache).
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from kenner.data.manifest import Dataset, Sample
from kenner.errors import DataError, KennerError
from kenner.io import atomic_write_text

DUPLICATES = ("merge", "refuse", "ignore")
DUPLICATE_COLUMNS = ("group", "sha256", "sample_ids", "groups", "paths")
_LISTED = 5


@dataclass(frozen=True)
class Copies:
    """One image content found in samples of more than one group; ``group`` is the group they now share."""

    sha256: str
    samples: tuple[Sample, ...]
    paths: tuple[Path, ...]
    group: str = ""


def merge_duplicates(dataset: Dataset, hashes: dict[Path, str], mode: str = "merge") -> tuple[Dataset, list[Copies]]:
    """``dataset`` with groups that share an image merged (``mode="merge"``), and the shared images found."""
    if mode not in DUPLICATES:
        raise KennerError(f"duplicates must be one of {', '.join(DUPLICATES)}, not {mode!r}")
    if mode == "ignore":
        return dataset, []
    copies = _copies(dataset, hashes)
    if not copies:
        return dataset, []
    _check_labels(dataset, copies)
    if mode == "refuse":
        shown = "; ".join(
            " = ".join(_where(sample, path) for sample, path in zip(c.samples, c.paths, strict=True))
            for c in copies[:_LISTED]
        )
        more = f"; and {len(copies) - _LISTED} more" if len(copies) > _LISTED else ""
        raise DataError(
            f"{len(copies)} image(s) appear in more than one group: {shown}{more}; remove the copies or "
            "give them one group, or use --duplicates merge",
            path=str(dataset.source),
        )
    merged = _union(copies)
    copies = [replace(c, group=merged[c.samples[0].group]) for c in copies]
    samples = [replace(s, group=merged.get(s.group, s.group)) for s in dataset.samples]
    changed = {group: target for group, target in merged.items() if group != target}
    return replace(dataset, samples=samples, merged_groups={**dataset.merged_groups, **changed}), copies


def merge_pairs(dataset: Dataset, pairs: list[tuple[int, int]]) -> tuple[Dataset, int]:
    """``dataset`` with the groups of each pair of samples (row positions) merged into one group, named after the
    smallest group of its connected set; returns it and how many groups were merged into another."""
    joined = [Copies("", (dataset.samples[a], dataset.samples[b]), ()) for a, b in pairs]
    merged = {group: target for group, target in _union(joined).items() if group != target}
    if not merged:
        return dataset, 0
    samples = [replace(s, group=merged.get(s.group, s.group)) for s in dataset.samples]
    return replace(dataset, samples=samples, merged_groups={**dataset.merged_groups, **merged}), len(merged)


def write_duplicates(copies: list[Copies], path: str | os.PathLike) -> Path:
    """``group,sha256,sample_ids,groups,paths`` rows, one per shared image (atomically)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DUPLICATE_COLUMNS)
    for c in copies:
        writer.writerow(
            [
                c.group,
                c.sha256,
                ";".join(s.id for s in c.samples),
                ";".join(dict.fromkeys(s.group for s in c.samples)),
                ";".join(map(str, c.paths)),
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def _copies(dataset: Dataset, hashes: dict[Path, str]) -> list[Copies]:
    """Each content shared by samples of two or more groups, in order of first appearance."""
    found: dict[str, list[tuple[Sample, Path]]] = defaultdict(list)
    for sample in dataset.samples:
        for path in sample.paths.values():
            found[hashes[path]].append((sample, path))
    copies = []
    for digest, items in found.items():
        if len({sample.group for sample, _ in items}) > 1:
            copies.append(Copies(digest, tuple(s for s, _ in items), tuple(p for _, p in items)))
    return copies


def _check_labels(dataset: Dataset, copies: list[Copies]) -> None:
    for c in copies:
        labels = {}
        for sample, path in zip(c.samples, c.paths, strict=True):
            labels.setdefault(sample.label, (sample, path))
        if len(labels) > 1:
            (first, a), (second, b) = list(labels.values())[:2]
            raise DataError(
                f"identical images with two labels: {_where(first, a)} ({first.label!r}) and "
                f"{_where(second, b)} ({second.label!r}); one object cannot have two labels: fix the "
                "label or remove the copy (or use --duplicates ignore)",
                path=str(dataset.source),
            )


def _union(copies: list[Copies]) -> dict[str, str]:
    """group -> the group it joins (the smallest name of its connected set), for every group in ``copies``."""
    parent: dict[str, str] = {}

    def find(group: str) -> str:
        while parent.setdefault(group, group) != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    for c in copies:
        roots = sorted({find(s.group) for s in c.samples})
        for root in roots[1:]:
            parent[root] = roots[0]
    return {group: find(group) for group in list(parent)}


def _where(sample: Sample, path: Path) -> str:
    """A copy for messages: ``row N (id, group G)`` for manifests, the file (group G) for folders."""
    if sample.row is not None:
        return f"row {sample.row} ({sample.id}, group {sample.group})"
    return f"{path} (group {sample.group})"
