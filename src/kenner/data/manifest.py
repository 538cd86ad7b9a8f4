"""Datasets in: a class-folder tree or a TSV/CSV manifest becomes a validated ``Dataset`` of ``Sample``s.

Folder layout ``root/<class>/<ID>_<seq>.<ext>``: the class is the folder, the group (one physical
object) is the file name's part before the last ``_`` (a name without ``_`` is its own group; see
:mod:`kenner.data.grouping` for ``--group-by``/``--group-regex``), the sample id is the path relative to
``root`` without extension, and the single view is ``"image"``. Files that cannot be samples (other
extensions, dangling or looping links, images outside a class folder) are returned as exclusions.

Manifest (``.tsv``/``.csv``, other names are sniffed): columns ``id``, ``label`` and one
``<view>_path`` per view (``obverse_path``, ``reverse_path`` -> views ``["obverse", "reverse"]``;
a bare ``path`` column is the view ``"image"``); optional ``group`` (empty -> the id) and
``<view>_condition`` (0-2, empty = not rated). Other columns are kept as each sample's ``metadata``,
except misspelled view columns and undeclared columns of image paths, which are errors (see
:mod:`kenner.data.columns`). Relative paths resolve against the manifest's folder.
Rows are numbered from 1 after the header; every error names the file and the row.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from kenner.data.columns import KNOWN, holds_image_paths, metadata_columns, misspelled_column
from kenner.data.grouping import Grouping, dominant_groups
from kenner.data.images import inspect_image
from kenner.errors import DataError, ImageError, KennerError
from kenner.io import atomic_write_text
from kenner.progress import progress_bar

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
ON_BAD_IMAGE = ("fail", "skip")
FOLDER_VIEW = "image"
EXCLUSION_COLUMNS = ("sample_id", "row", "view", "path", "reason")
MAX_LISTED = 20  # bad images named in one fail-mode error; the rest are counted
_SKIP_HINT = "fix or remove the file, or use --on-bad-image skip to leave the sample out"
_SKIP_ALL_HINT = "fix or remove them, or use --on-bad-image skip to leave their samples out"
_WARNINGS_SHOWN = 5


@dataclass(frozen=True)
class Sample:
    """One object photographed in one or more views."""

    id: str
    label: str
    group: str
    paths: dict[str, Path]
    conditions: dict[str, float] = field(default_factory=dict)
    row: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

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
    ``metadata_columns``: a manifest's extra columns, in order (each sample's ``metadata`` keys).
    ``merged_groups``: group -> the group it was merged into because they share an identical image
    (:mod:`kenner.data.duplicates`).
    """

    samples: list[Sample]
    views: list[str]
    source: Path
    image_sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)
    metadata_columns: list[str] = field(default_factory=list)
    merged_groups: dict[str, str] = field(default_factory=dict)

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
    group_by: str = "prefix",
    group_regex: str | None = None,
) -> tuple[Dataset, list[Exclusion]]:
    """Read a class-folder tree or a manifest and check every image.

    ``check_images=True`` decodes each image once (in ``workers`` threads) and records its size;
    with ``False`` only the files' existence is checked. ``on_bad_image="fail"`` raises one
    ``ImageError`` listing the bad images (up to ``MAX_LISTED``); ``"skip"`` drops each sample with a bad
    image (all its views) and returns one ``Exclusion`` per bad image. Files of a folder dataset that
    cannot be samples are returned as exclusions in both modes. ``group_by``/``group_regex`` set how a
    folder dataset's file names become groups (:class:`kenner.data.grouping.Grouping`).
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise KennerError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, not {on_bad_image!r}")
    grouping = Grouping(group_by, group_regex)
    path = Path(path)
    if not path.exists():
        raise DataError(
            "dataset not found; pass a folder root/<class>/<ID>_<seq>.jpg or a TSV/CSV manifest", path=str(path)
        )
    if path.is_dir():
        dataset, left_out = _read_folder(path, grouping)
        _check_one_label_per_group(dataset, grouping.two_labels_hint())
        _warn(dominant_groups(((s.label, s.group) for s in dataset.samples), grouping), "classes")
    else:
        if not grouping.is_default:
            raise DataError(
                "--group-by and --group-regex apply to folder datasets; a manifest names each "
                "sample's group in its group column",
                path=str(path),
            )
        dataset, left_out = _read_manifest(path), []
        _check_one_label_per_group(dataset, "one object cannot have two labels, so fix its group/ID or its label")
    dataset, bad = _check_images(dataset, on_bad_image=on_bad_image, check_images=check_images, workers=workers)
    return dataset, [*left_out, *bad]


def resolve_views(dataset: Dataset, requested: str | Iterable[str]) -> list[str]:
    """Check that the requested view names exist in ``dataset``; return them as a list."""
    views = [requested] if isinstance(requested, str) else list(requested)
    unknown = [view for view in views if view not in dataset.views]
    if unknown:
        raise DataError(
            f"unknown view(s) {', '.join(map(repr, unknown))}; this dataset has views: {', '.join(dataset.views)}",
            path=str(dataset.source),
        )
    return views


def write_exclusions(exclusions: Iterable[Exclusion], path: str | os.PathLike) -> Path:
    """Write ``sample_id,row,view,path,reason`` rows to a CSV file (atomically)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXCLUSION_COLUMNS)
    for item in exclusions:
        writer.writerow(
            [
                item.sample_id,
                "" if item.row is None else item.row,
                item.view or "",
                "" if item.path is None else str(item.path),
                item.reason,
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------- folder


def _read_folder(root: Path, grouping: Grouping) -> tuple[Dataset, list[Exclusion]]:
    """Samples from ``root/<class>/<ID>_<seq>.<ext>`` and the files left out; hidden files and folders are
    ignored, as are other files directly in ``root`` (a manifest, ``download_failures.csv``)."""
    root = root.absolute()
    left_out = [
        _left_out(root, file, "not inside a class folder; move it to root/<class>/")
        for file in sorted(root.iterdir())
        if not file.name.startswith(".") and file.suffix.lower() in IMAGE_EXTENSIONS and _problem(file) != _FOLDER
    ]
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[Sample] = []
    file_of_id: dict[str, Path] = {}
    unmatched: list[Path] = []
    for class_dir in class_dirs:
        for file, problem in _class_files(class_dir):
            if problem is not None:
                left_out.append(_left_out(root, file, problem))
                continue
            sample_id = file.relative_to(root).with_suffix("").as_posix()
            if sample_id in file_of_id:
                raise DataError(
                    f"{file_of_id[sample_id]} and {file} give the same sample id {sample_id!r}; rename one",
                    path=str(root),
                )
            file_of_id[sample_id] = file
            group = grouping.group(sample_id, file)
            if group is None:
                unmatched.append(file)
                continue
            samples.append(Sample(sample_id, class_dir.name, group, {FOLDER_VIEW: file}))
    if unmatched:
        raise DataError(
            f"{len(unmatched)} file name(s) do not match --group-regex '{grouping.regex}' (first: "
            f"{unmatched[0]}); every file needs a group: change the regex",
            path=str(root),
        )
    if not samples:
        found = ""
        if left_out:
            found = f" ({len(left_out)} file(s) left out, first: {left_out[0].path}: {left_out[0].reason})"
        raise DataError(
            "no images found; expected root/<class>/<ID>_<seq>.<ext> with extensions "
            + " ".join(sorted(IMAGE_EXTENSIONS))
            + found,
            path=str(root),
        )
    return Dataset(samples=samples, views=[FOLDER_VIEW], source=root), left_out


_FOLDER = "folder"
_CONVERTIBLE = frozenset({".heic", ".heif", ".avif", ".dng", ".cr2", ".nef", ".arw"})


def _class_files(folder: Path) -> Iterator[tuple[Path, str | None]]:
    """Non-hidden files anywhere under ``folder``, sorted, each with why it cannot be a sample (None if it can)."""
    for file in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue
        problem = _problem(file)
        if problem != _FOLDER:
            yield file, problem


def _problem(file: Path) -> str | None:
    """Why ``file`` cannot be an image sample, ``_FOLDER`` for a folder, None for an image file."""
    try:
        mode = os.stat(file).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        if file.is_symlink():
            return f"dangling symbolic link (to {os.readlink(file)})"
        return f"cannot read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return _FOLDER
    if not stat.S_ISREG(mode):
        return "not a regular file"
    suffix = file.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        kind = f"{suffix} files" if suffix else "files without an extension"
        convert = "; convert them to JPEG or PNG" if suffix in _CONVERTIBLE else ""
        return f"unsupported file type: kenner reads {' '.join(sorted(IMAGE_EXTENSIONS))}, not {kind}{convert}"
    return None


def _left_out(root: Path, file: Path, reason: str) -> Exclusion:
    """An exclusion for a file of a folder dataset that is not a sample."""
    return Exclusion(file.relative_to(root).with_suffix("").as_posix(), None, FOLDER_VIEW, file, reason)


# --------------------------------------------------------------------------------------- manifest


def _read_manifest(path: Path) -> Dataset:
    """Samples from a TSV/CSV manifest, validated row by row."""
    path = path.absolute()
    header, records = _read_records(path)
    view_columns, condition_columns = _manifest_columns(path, header)
    extra = metadata_columns(header, [*view_columns.values(), *condition_columns.values()])
    _check_extra_columns(path, header, records, extra)
    base = path.parent
    samples: list[Sample] = []
    row_of_id: dict[str, int] = {}
    for row, record in records:
        if len(record) != len(header):
            raise DataError(
                f"{len(record)} fields but the header has {len(header)}; check the delimiter and quoting",
                path=str(path),
                row=row,
            )
        cells = {name: cell.strip() for name, cell in zip(header, record, strict=True)}
        sample_id, label = cells["id"], cells["label"]
        if not sample_id:
            raise DataError("empty id; every row needs a unique id", path=str(path), row=row)
        if sample_id in row_of_id:
            raise DataError(
                f"duplicate id {sample_id!r} (first in row {row_of_id[sample_id]}); ids must be unique",
                path=str(path),
                row=row,
            )
        row_of_id[sample_id] = row
        if not label:
            raise DataError(
                f"empty label for id {sample_id!r}; fill in the label or drop the row", path=str(path), row=row
            )
        paths = {}
        for view, column in view_columns.items():
            if not cells[column]:
                raise DataError(
                    f"empty {column} for id {sample_id!r}; every sample needs a file for every view "
                    f"({', '.join(view_columns)}): fill in the cell or drop the row",
                    path=str(path),
                    row=row,
                )
            paths[view] = _resolve(base, cells[column])
        conditions = {
            view: _parse_condition(cells[column], column, path, row)
            for view, column in condition_columns.items()
            if cells[column]
        }
        group = cells.get("group") or sample_id
        metadata = {name: cells[name] for name in extra}
        samples.append(Sample(sample_id, label, group, paths, conditions, row, metadata))
    if not samples:
        raise DataError("no data rows after the header", path=str(path))
    return Dataset(samples=samples, views=list(view_columns), source=path, metadata_columns=extra)


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
        raise DataError("empty manifest; the first line must be a header with id, label, <view>_path", path=str(path))
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
        raise DataError(
            "cannot tell whether this is a TSV or a CSV file; name it .tsv or .csv", path=str(path)
        ) from None


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
    for name in header:
        intended = misspelled_column(name)
        if name not in (*KNOWN, *view_columns.values()) and intended is not None and intended not in header:
            raise DataError(
                f"column {name!r} looks like a misspelling of {intended!r} (views found: "
                f"{', '.join(view_columns)}); rename it, or remove the column",
                path=str(path),
            )
    condition_columns = {}
    for name in header:
        if name.endswith("_condition"):
            view = name.removesuffix("_condition")
            if view not in view_columns:
                raise DataError(
                    f"column {name} has no matching {view}_path column; views are {', '.join(view_columns)}",
                    path=str(path),
                )
            condition_columns[view] = name
    return view_columns, condition_columns


def _check_extra_columns(path: Path, header: list[str], records: list[tuple[int, list[str]]], extra: list[str]) -> None:
    """An extra column whose values are image paths is an error: it was meant to be a view."""
    for name in extra:
        index = header.index(name)
        first = holds_image_paths(
            (record[index].strip() if index < len(record) else "" for _, record in records), IMAGE_EXTENSIONS
        )
        if first is not None:
            raise DataError(
                f"column {name!r} holds image paths (first: {first!r}) but is not a view; name it "
                f"{name}_path to use it as one, or remove the column",
                path=str(path),
            )


def _resolve(base: Path, value: str) -> Path:
    """An absolute, normalised path; relative ones are taken from ``base``."""
    candidate = Path(value).expanduser()
    return Path(os.path.normpath(candidate if candidate.is_absolute() else base / candidate))


def _parse_condition(value: str, column: str, path: Path, row: int) -> float:
    """A condition rating in 0-2."""
    try:
        rating = float(value)
    except ValueError:
        raise DataError(
            f"{column} {value!r} is not a number; use a rating from 0 to 2 or leave it empty", path=str(path), row=row
        ) from None
    if not math.isfinite(rating) or not 0 <= rating <= 2:
        raise DataError(
            f"{column} {value} is outside 0-2; use a rating from 0 to 2 or leave it empty", path=str(path), row=row
        )
    return rating


# ----------------------------------------------------------------------------------------- checks


def _check_one_label_per_group(dataset: Dataset, hint: str) -> None:
    """One object (group) cannot carry two labels; ``hint`` says how groups are made and what to do."""
    first: dict[str, Sample] = {}
    for sample in dataset.samples:
        seen = first.setdefault(sample.group, sample)
        if seen.label != sample.label:
            raise DataError(
                f"group {sample.group!r} has two labels: {seen.label!r} ({seen.where()}) and "
                f"{sample.label!r} ({sample.where()}); {hint}",
                path=str(dataset.source),
                row=sample.row,
            )


def _warn(messages: list[str], what: str) -> None:
    """Log the first few ``messages`` and how many more there are."""
    for message in messages[:_WARNINGS_SHOWN]:
        log.warning("%s", message)
    if len(messages) > _WARNINGS_SHOWN:
        log.warning("... and %d more %s like these", len(messages) - _WARNINGS_SHOWN, what)


def _check_images(
    dataset: Dataset, *, on_bad_image: str, check_images: bool, workers: int
) -> tuple[Dataset, list[Exclusion]]:
    """Decode (or just find) every image once; fail listing the bad ones, or skip their samples."""
    paths = list(dict.fromkeys(p for sample in dataset.samples for p in sample.paths.values()))
    check = _inspect if check_images else _find
    sizes: dict[Path, tuple[int, int]] = {}
    problems: dict[Path, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        progress_bar(total=len(paths), desc="checking images", unit="img") as bar,
    ):
        for image_path, (size, reason) in zip(paths, pool.map(check, paths), strict=True):
            bar.update()
            if size is not None:
                sizes[image_path] = size
            if reason is not None:
                problems[image_path] = reason
    kept: list[Sample] = []
    exclusions: list[Exclusion] = []
    for sample in dataset.samples:
        bad = [(view, p) for view, p in sample.paths.items() if p in problems]
        exclusions.extend(Exclusion(sample.id, sample.row, view, p, problems[p]) for view, p in bad)
        if not bad:
            kept.append(sample)
    if exclusions and on_bad_image == "fail":
        raise _bad_images_error(dataset, exclusions)
    if not kept:
        raise DataError(
            f"no usable images: all {len(dataset)} samples have a bad image "
            f"(first: {exclusions[0].path}: {exclusions[0].reason})",
            path=str(dataset.source),
        )
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


def _bad_images_error(dataset: Dataset, bad: list[Exclusion]) -> ImageError:
    """One ``ImageError`` naming every bad image (up to ``MAX_LISTED``; the rest counted) and what to do.

    A single bad image is named as ``FILE: reason`` (folders) or ``MANIFEST, row N: view image FILE: reason``.
    """
    if len(bad) == 1:
        item = bad[0]
        if item.row is None:
            return ImageError(f"{item.reason}; {_SKIP_HINT}", path=str(item.path))
        return ImageError(
            f"{item.view} image {item.path}: {item.reason}; {_SKIP_HINT}", path=str(dataset.source), row=item.row
        )
    listed = "; ".join(
        f"{item.path}: {item.reason}"
        if item.row is None
        else f"row {item.row} {item.view} image {item.path}: {item.reason}"
        for item in bad[:MAX_LISTED]
    )
    more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return ImageError(f"{len(bad)} bad images: {listed}{more}; {_SKIP_ALL_HINT}", path=str(dataset.source))


def _sizes_for(samples: list[Sample], sizes: dict[Path, tuple[int, int]]) -> dict[Path, tuple[int, int]]:
    """The entries of ``sizes`` for the images of ``samples``."""
    return {p: sizes[p] for sample in samples for p in sample.paths.values() if p in sizes}
