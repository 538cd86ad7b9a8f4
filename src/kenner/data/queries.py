"""Query items for prediction: image files, folders (searched recursively) and TSV/CSV manifests with one
``<view>_path`` column per view a run needs (``path`` for a folder-trained run; ``id`` optional).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kenner.data.manifest import FOLDER_VIEW, IMAGE_EXTENSIONS
from kenner.errors import DataError, KennerError

MANIFEST_SUFFIXES = {".csv", ".tsv"}


@dataclass
class PredictionInputs:
    """Query items: an id and one path per view."""

    ids: list[str]
    paths: list[dict[str, Path]]


def collect_inputs(items: Sequence[str], view_names: list[str]) -> PredictionInputs:
    """Expand files, folders and manifests into query items for a run with ``view_names``."""
    ids: list[str] = []
    paths: list[dict[str, Path]] = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise DataError("no such file or folder", path=str(path))
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            manifest = read_prediction_manifest(path, view_names)
            ids += manifest.ids
            paths += manifest.paths
            continue
        files = (
            sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if path.is_dir()
            else [path]
        )
        if len(view_names) > 1:
            raise KennerError(
                f"this run uses {len(view_names)} views ({', '.join(view_names)}): pass a manifest with "
                f"{', '.join(v + '_path' for v in view_names)} columns instead of {path}"
            )
        ids += [str(f) for f in files]
        paths += [{view_names[0]: f.resolve()} for f in files]
    if not ids:
        raise KennerError(f"no images found in {', '.join(items)}")
    return PredictionInputs(ids, paths)


def read_prediction_manifest(path: Path, view_names: list[str]) -> PredictionInputs:
    """A manifest for prediction: ``<view>_path`` columns (a bare ``path`` is the view ``image``, as
    in training manifests), optional ``id``; labels are not needed."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the manifest ({error})", path=str(path)) from None
    table.columns = [str(name).strip().lower() for name in table.columns]
    if FOLDER_VIEW in view_names and f"{FOLDER_VIEW}_path" not in table.columns:
        table = table.rename(columns={"path": f"{FOLDER_VIEW}_path"})
    missing = [f"{view}_path" for view in view_names if f"{view}_path" not in table.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}", path=str(path))
    ids = table["id"].tolist() if "id" in table.columns else [str(i + 1) for i in range(len(table))]
    paths = []
    for row, record in enumerate(table.to_dict("records"), start=1):
        entry = {}
        for view in view_names:
            cell = record[f"{view}_path"].strip()
            if not cell:
                raise DataError(f"empty {view}_path", path=str(path), row=row)
            entry[view] = (path.parent / cell).resolve()
            if not entry[view].is_file():
                raise DataError(f"{view} image {entry[view]}: file not found", path=str(path), row=row)
        paths.append(entry)
    return PredictionInputs([str(i) for i in ids], paths)
