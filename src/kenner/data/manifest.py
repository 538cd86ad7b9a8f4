"""Datasets in: a class-folder tree or a TSV/CSV manifest becomes a validated ``Dataset`` of ``Sample``s.

Folder layout ``root/<class>/<ID>_<seq>.<ext>``: the class is the folder, the group (one physical
object) is the file name's part before the last ``_`` (a name without ``_`` is its own group), the
sample id is the path relative to ``root`` without extension, and the single view is ``"image"``.

Manifest (``.tsv``/``.csv``, other names are sniffed): columns ``id``, ``label`` and one
``<view>_path`` per view (``obverse_path``, ``reverse_path`` -> views ``["obverse", "reverse"]``;
a bare ``path`` column is the view ``"image"``); optional ``group`` (empty -> the id) and
``<view>_condition`` (0-2, empty = not rated). Relative paths resolve against the manifest's folder.
Rows are numbered from 1 after the header; every error names the file and the row.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from kenner.data.images import inspect_image
from kenner.errors import DataError, ImageError, KennerError
from kenner.io import atomic_write_text

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ON_BAD_IMAGE = ("fail", "skip")
FOLDER_VIEW = "image"
EXCLUSION_COLUMNS = ("sample_id", "row", "view", "path", "reason")
_SKIP_HINT = "fix or remove the file, or use --on-bad-image skip to leave the sample out"


@dataclass(frozen=True)
class Sample:
    """One object photographed in one or more views."""

    id: str
    label: str
    group: str
    paths: dict[str, Path]
    conditions: dict[str, float] = field(default_factory=dict)
    row: int | None = None

    def where(self) -> str:
        """Where the sample comes from, for messages: ``row N`` or its image path."""
        return f"row {self.row}" if self.row is not None else str(next(iter(self.paths.values())))


@dataclass
class Exclusion:
    """A sample (or one of its images) left out, and why. ``view``/``path`` are None for whole samples."""

    sample_id: str
    row: int | None
    view: str | None
    path: Path | None
    reason: str


@dataclass
class Dataset:
    """Samples in a fixed order, their view names and where they came from.

    ``image_sizes`` maps each checked image path to ``(width, height)`` after EXIF orientation; it is
    filled by ``load_dataset(check_images=True)`` so filters need not decode images again.
    """

    samples: list[Sample]
    views: list[str]
    source: Path
    image_sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def classes(self) -> list[str]:
        return sorted({sample.label for sample in self.samples})

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.classes)}

    @property
    def labels(self) -> list[str]:
        return [sample.label for sample in self.samples]

    @property
    def groups(self) -> list[str]:
        return [sample.group for sample in self.samples]

    @property
    def ids(self) -> list[str]:
        return [sample.id for sample in self.samples]

    def subset(self, ids: Iterable[str]) -> Dataset:
        """The samples whose id is in ``ids``, in this dataset's order."""
        wanted = set(ids)
        unknown = wanted.difference(self.ids)
        if unknown:
            shown = ", ".join(repr(i) for i in sorted(unknown)[:5])
            raise KennerError(f"{len(unknown)} sample id(s) not in {self.source}: {shown}")
        samples = [sample for sample in self.samples if sample.id in wanted]
        return replace(self, samples=samples, image_sizes=_sizes_for(samples, self.image_sizes))


def load_dataset(
    path: str | os.PathLike,
    *,
    on_bad_image: str = "fail",
    check_images: bool = True,
    workers: int = 4,
) -> tuple[Dataset, list[Exclusion]]:
    """Read a class-folder tree or a manifest and check every image.

    ``check_images=True`` decodes each image once (in ``workers`` threads) and records its size;
    with ``False`` only the files' existence is checked. ``on_bad_image="fail"`` raises the first
    ``ImageError`` (in sample order); ``"skip"`` drops each sample with a bad image (all its views)
    and returns one ``Exclusion`` per bad image.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise KennerError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, not {on_bad_image!r}")
    path = Path(path)
    if not path.exists():
        raise DataError("dataset not found; pass a folder root/<class>/<ID>_<seq>.jpg or a TSV/CSV manifest",
                        path=str(path))
    dataset = _read_folder(path) if path.is_dir() else _read_manifest(path)
    _check_one_label_per_group(dataset)
    return _check_images(dataset, on_bad_image=on_bad_image, check_images=check_images, workers=workers)


def resolve_views(dataset: Dataset, requested: str | Iterable[str]) -> list[str]:
    """Check that the requested view names exist in ``dataset``; return them as a list."""
    views = [requested] if isinstance(requested, str) else list(requested)
    unknown = [view for view in views if view not in dataset.views]
    if unknown:
        raise DataError(
            f"unknown view(s) {', '.join(map(repr, unknown))}; this dataset has views: "
            f"{', '.join(dataset.views)}",
            path=str(dataset.source),
        )
    return views


def write_exclusions(exclusions: Iterable[Exclusion], path: str | os.PathLike) -> Path:
    """Write ``sample_id,row,view,path,reason`` rows to a CSV file (atomically)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXCLUSION_COLUMNS)
    for item in exclusions:
        writer.writerow([
            item.sample_id,
            "" if item.row is None else item.row,
            item.view or "",
            "" if item.path is None else str(item.path),
            item.reason,
        ])
    return atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------- folder


def _read_folder(root: Path) -> Dataset:
    """Samples from ``root/<class>/<ID>_<seq>.<ext>``; hidden files and folders are ignored."""
    root = root.absolute()
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[Sample] = []
    file_of_id: dict[str, Path] = {}
    for class_dir in class_dirs:
        for file in sorted(_image_files(class_dir)):
            sample_id = file.relative_to(root).with_suffix("").as_posix()
            if sample_id in file_of_id:
                raise DataError(
                    f"{file_of_id[sample_id]} and {file} give the same sample id {sample_id!r}; rename one",
                    path=str(root),
                )
            file_of_id[sample_id] = file
            head, _, _ = file.stem.rpartition("_")
            samples.append(Sample(sample_id, class_dir.name, head or file.stem, {FOLDER_VIEW: file}))
    if not samples:
        raise DataError(
            "no images found; expected root/<class>/<ID>_<seq>.<ext> with extensions "
            + " ".join(sorted(IMAGE_EXTENSIONS)),
            path=str(root),
        )
    return Dataset(samples=samples, views=[FOLDER_VIEW], source=root)


def _image_files(folder: Path) -> Iterator[Path]:
    """Non-hidden files with an image extension anywhere under ``folder``."""
    for file in folder.rglob("*"):
        hidden = any(part.startswith(".") for part in file.relative_to(folder).parts)
        if not hidden and file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
            yield file


# --------------------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> Dataset:
    """Samples from a TSV/CSV manifest, validated row by row."""
    path = path.absolute()
    header, records = _read_records(path)
    view_columns, condition_columns = _manifest_columns(path, header)
    base = path.parent
    samples: list[Sample] = []
    row_of_id: dict[str, int] = {}
    for row, record in records:
        if len(record) != len(header):
            raise DataError(
                f"{len(record)} fields but the header has {len(header)}; check the delimiter and quoting",
                path=str(path), row=row,
            )
        cells = {name: cell.strip() for name, cell in zip(header, record, strict=True)}
        sample_id, label = cells["id"], cells["label"]
        if not sample_id:
            raise DataError("empty id; every row needs a unique id", path=str(path), row=row)
        if sample_id in row_of_id:
            raise DataError(f"duplicate id {sample_id!r} (first in row {row_of_id[sample_id]}); ids must be unique",
                            path=str(path), row=row)
        row_of_id[sample_id] = row
        if not label:
            raise DataError(f"empty label for id {sample_id!r}; fill in the label or drop the row",
                            path=str(path), row=row)
        paths = {}
        for view, column in view_columns.items():
            if not cells[column]:
                raise DataError(
                    f"empty {column} for id {sample_id!r}; every sample needs a file for every view "
                    f"({', '.join(view_columns)}): fill in the cell or drop the row",
                    path=str(path), row=row,
                )
            paths[view] = _resolve(base, cells[column])
        conditions = {
            view: _parse_condition(cells[column], column, path, row)
            for view, column in condition_columns.items()
            if cells[column]
        }
        group = cells.get("group") or sample_id
        samples.append(Sample(sample_id, label, group, paths, conditions, row))
    if not samples:
        raise DataError("no data rows after the header", path=str(path))
    return Dataset(samples=samples, views=list(view_columns), source=path)


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped, lower-cased) and the non-blank ``(row, fields)`` records of a manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text; save the manifest as UTF-8 TSV or CSV", path=str(path)) from None
    except OSError as error:
        raise DataError(f"cannot read manifest ({error.strerror or error})", path=str(path)) from error
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(path, text))
    try:
        records = list(reader)
    except csv.Error as error:
        raise DataError(f"malformed line {reader.line_num}: {error}", path=str(path)) from error
    if not records or not any(cell.strip() for cell in records[0]):
        raise DataError("empty manifest; the first line must be a header with id, label, <view>_path",
                        path=str(path))
    header = [name.strip().lower() for name in records[0]]
    body = [(row, record) for row, record in enumerate(records[1:], start=1) if any(c.strip() for c in record)]
    return header, body


def _delimiter(path: Path, text: str) -> str:
    """Tab for ``.tsv``/``.tab``, comma for ``.csv``, otherwise sniffed from the first lines."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(text.splitlines()[:20]), delimiters="\t,;").delimiter
    except csv.Error:
        raise DataError("cannot tell whether this is a TSV or a CSV file; name it .tsv or .csv",
                        path=str(path)) from None


def _manifest_columns(path: Path, header: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``view -> path column`` and ``view -> condition column``, in column order."""
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"duplicate column(s): {', '.join(duplicated)}", path=str(path))
    view_columns = {
        (FOLDER_VIEW if name == "path" else name.removesuffix("_path")): name
        for name in header
        if name == "path" or (name.endswith("_path") and len(name) > len("_path"))
    }
    missing = [name for name in ("id", "label") if name not in header]
    if not view_columns:
        missing.append("<view>_path (e.g. obverse_path)")
    if missing:
        raise DataError(
            f"missing required column(s): {', '.join(missing)}; found columns: {', '.join(header)}",
            path=str(path),
        )
    condition_columns = {}
    for name in header:
        if name.endswith("_condition"):
            view = name.removesuffix("_condition")
            if view not in view_columns:
                raise DataError(f"column {name} has no matching {view}_path column; views are "
                                f"{', '.join(view_columns)}", path=str(path))
            condition_columns[view] = name
    return view_columns, condition_columns


def _resolve(base: Path, value: str) -> Path:
    """An absolute, normalised path; relative ones are taken from ``base``."""
    candidate = Path(value).expanduser()
    return Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))


def _parse_condition(value: str, column: str, path: Path, row: int) -> float:
    """A condition rating in 0-2."""
    try:
        rating = float(value)
    except ValueError:
        raise DataError(f"{column} {value!r} is not a number; use a rating from 0 to 2 or leave it empty",
                        path=str(path), row=row) from None
    if not math.isfinite(rating) or not 0 <= rating <= 2:
        raise DataError(f"{column} {value} is outside 0-2; use a rating from 0 to 2 or leave it empty",
                        path=str(path), row=row)
    return rating


# ----------------------------------------------------------------------------------------- checks


def _check_one_label_per_group(dataset: Dataset) -> None:
    """One object (group) cannot carry two labels."""
    first: dict[str, Sample] = {}
    for sample in dataset.samples:
        seen = first.setdefault(sample.group, sample)
        if seen.label != sample.label:
            raise DataError(
                f"group {sample.group!r} has two labels: {seen.label!r} ({seen.where()}) and "
                f"{sample.label!r} ({sample.where()}); one object cannot have two labels, "
                "so fix its group/ID or its label",
                path=str(dataset.source), row=sample.row,
            )


def _check_images(
    dataset: Dataset, *, on_bad_image: str, check_images: bool, workers: int
) -> tuple[Dataset, list[Exclusion]]:
    """Decode (or just find) every image once; fail on the first bad one or skip its samples."""
    paths = list(dict.fromkeys(p for sample in dataset.samples for p in sample.paths.values()))
    check = _inspect if check_images else _find
    sizes: dict[Path, tuple[int, int]] = {}
    problems: dict[Path, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(paths), desc="checking images", unit="img", disable=None) as bar,
    ):
        for image_path, (size, reason) in zip(paths, pool.map(check, paths), strict=True):
            bar.update()
            if size is not None:
                sizes[image_path] = size
            if reason is not None:
                problems[image_path] = reason
                if on_bad_image == "fail":
                    pool.shutdown(wait=False, cancel_futures=True)
                    break
    kept: list[Sample] = []
    exclusions: list[Exclusion] = []
    for sample in dataset.samples:
        bad = [(view, p) for view, p in sample.paths.items() if p in problems]
        if bad and on_bad_image == "fail":
            view, image_path = bad[0]
            raise _bad_image_error(dataset, sample, view, image_path, problems[image_path])
        exclusions.extend(Exclusion(sample.id, sample.row, view, p, problems[p]) for view, p in bad)
        if not bad:
            kept.append(sample)
    if not kept:
        raise DataError(f"no usable images: all {len(dataset)} samples have a bad image "
                        f"(first: {exclusions[0].path}: {exclusions[0].reason})", path=str(dataset.source))
    return replace(dataset, samples=kept, image_sizes=_sizes_for(kept, sizes)), exclusions


def _inspect(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, None)`` for a good image, ``(None, reason)`` for a bad one."""
    try:
        return inspect_image(path), None
    except ImageError as error:
        return None, _reason(error)


def _find(path: Path) -> tuple[None, str | None]:
    """Existence only: ``(None, None)`` or ``(None, "file not found")``."""
    return None, None if path.is_file() else "file not found"


def _reason(error: ImageError) -> str:
    """The message of an ``ImageError`` raised for one image path, without that path."""
    return str(error).removeprefix(f"{error.path}: ")


def _bad_image_error(dataset: Dataset, sample: Sample, view: str, path: Path, reason: str) -> ImageError:
    """An ``ImageError`` naming the manifest row (or, for folders, the image) and what to do."""
    if sample.row is None:
        return ImageError(f"{reason}; {_SKIP_HINT}", path=str(path))
    return ImageError(f"{view} image {path}: {reason}; {_SKIP_HINT}", path=str(dataset.source), row=sample.row)


def _sizes_for(samples: list[Sample], sizes: dict[Path, tuple[int, int]]) -> dict[Path, tuple[int, int]]:
    """The entries of ``sizes`` for the images of ``samples``."""
    return {p: sizes[p] for sample in samples for p in sample.paths.values() if p in sizes}
