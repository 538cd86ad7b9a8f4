"""Dataset filters: omit classes, drop worn or small images, drop rare classes; every drop is reported.

Applied in this order, so class counts are taken after the other filters:
``omit_classes`` -> ``min_condition`` -> ``min_size`` -> ``min_samples_per_class``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from kenner.data.manifest import Dataset, Exclusion, Sample
from kenner.errors import KennerError


def apply_filters(
    dataset: Dataset,
    *,
    omit_classes: Iterable[str] = (),
    min_condition: float | None = None,
    min_samples_per_class: int = 0,
    min_size: int | None = None,
    image_sizes: dict[Path, tuple[int, int]] | None = None,
) -> tuple[Dataset, list[Exclusion]]:
    """Return the filtered dataset and one ``Exclusion`` per dropped sample.

    - ``omit_classes``: labels to leave out; an unknown label is an error (listing the known ones).
    - ``min_condition``: drop samples whose mean condition rating over their rated views is below it;
      samples with no rating at all are kept.
    - ``min_size``: if any image of a group is smaller than this on its short side (pixels), the whole
      group is dropped, so an object is never half in the data.
    - ``min_samples_per_class``: drop classes left with fewer samples than this.

    ``image_sizes`` (path -> (width, height)) defaults to ``dataset.image_sizes`` from ``load_dataset``.
    """
    samples = list(dataset.samples)
    exclusions: list[Exclusion] = []
    omit = set(omit_classes)
    if omit:
        unknown = sorted(omit.difference(dataset.classes))
        if unknown:
            raise KennerError(
                f"unknown class(es) to omit: {', '.join(unknown)}; known classes: {', '.join(dataset.classes)}"
            )
        samples = _drop(
            samples, exclusions, {s.id: f"class {s.label!r} omitted (omit_classes)" for s in samples if s.label in omit}
        )
    if min_condition is not None:
        samples = _drop(
            samples,
            exclusions,
            {
                s.id: f"mean condition {_mean_condition(s):g} < min_condition {min_condition:g}"
                for s in samples
                if s.conditions and _mean_condition(s) < min_condition
            },
        )
    if min_size is not None:
        sizes = dataset.image_sizes if image_sizes is None else image_sizes
        samples = _drop_small_groups(samples, exclusions, min_size, sizes)
    if min_samples_per_class > 0:
        counts = Counter(s.label for s in samples)
        samples = _drop(
            samples,
            exclusions,
            {
                s.id: f"class {s.label!r} has {counts[s.label]} samples < min_samples_per_class {min_samples_per_class}"
                for s in samples
                if counts[s.label] < min_samples_per_class
            },
        )
    return dataset.subset(s.id for s in samples), exclusions


def _mean_condition(sample: Sample) -> float:
    return sum(sample.conditions.values()) / len(sample.conditions)


def _drop(samples: list[Sample], exclusions: list[Exclusion], reasons: dict[str, str]) -> list[Sample]:
    """Record an Exclusion for each sample id in ``reasons``; return the other samples."""
    exclusions.extend(Exclusion(s.id, s.row, None, None, reasons[s.id]) for s in samples if s.id in reasons)
    return [s for s in samples if s.id not in reasons]


def _drop_small_groups(
    samples: list[Sample],
    exclusions: list[Exclusion],
    min_size: int,
    sizes: dict[Path, tuple[int, int]],
) -> list[Sample]:
    """Drop every group that has an image with a short side below ``min_size`` pixels."""
    unknown = [p for s in samples for p in s.paths.values() if p not in sizes]
    if unknown:
        raise KennerError(
            f"min_size needs the size of every image, but {len(unknown)} are unknown "
            f"(e.g. {unknown[0]}); load the dataset with image checks on"
        )
    smallest: dict[str, tuple[int, Path]] = {}
    for sample in samples:
        for path in sample.paths.values():
            short = min(sizes[path])
            if short < min_size and short < smallest.get(sample.group, (min_size, path))[0]:
                smallest[sample.group] = (short, path)
    kept = []
    for sample in samples:
        if sample.group not in smallest:
            kept.append(sample)
            continue
        short, path = smallest[sample.group]
        view, own = next(((v, p) for v, p in sample.paths.items() if min(sizes[p]) < min_size), (None, None))
        reason = f"group {sample.group!r}: {path} is {short} px on its short side < min_size {min_size}"
        exclusions.append(Exclusion(sample.id, sample.row, view, own, reason))
    return kept
