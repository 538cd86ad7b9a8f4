"""``--exclude FILE``: ids to leave out of a dataset, e.g. rows of ``kenner audit``'s CSV that the user kept.

The file is a plain list (one id per line, ``#`` comments and blank lines ignored) or a CSV/TSV with an ``id``
column. Every sample left out is recorded as an :class:`~kenner.data.manifest.Exclusion` (``excluded.csv``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path

from kenner.data.manifest import Dataset, Exclusion
from kenner.errors import DataError, KennerError

log = logging.getLogger(__name__)


def read_id_list(path: str | Path) -> list[str]:
    """The ids listed in ``path`` (a text list, or a CSV/TSV whose header has an ``id`` column), in order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise KennerError(f"--exclude {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KennerError(f"--exclude {path}: cannot read it ({error})") from None
    lines = text.splitlines()
    header = lines[0] if lines else ""
    delimiter = "\t" if "\t" in header else ","
    columns = [name.strip() for name in header.split(delimiter)]
    if len(columns) > 1 or columns == ["id"]:
        if "id" not in columns:
            raise DataError(f"no 'id' column (columns: {', '.join(columns)})", path=str(path))
        rows = csv.DictReader(lines, delimiter=delimiter)
        return list(dict.fromkeys(row["id"].strip() for row in rows if (row.get("id") or "").strip()))
    ids = (line.split("#", 1)[0].strip() for line in lines)
    return list(dict.fromkeys(sample_id for sample_id in ids if sample_id))


def exclude_ids(dataset: Dataset, path: str | Path) -> tuple[Dataset, list[Exclusion]]:
    """``dataset`` without the samples whose id ``path`` lists, and one exclusion per sample left out.

    Ids the dataset does not hold are logged (one line, with the count); a list naming none of its ids is an error
    (most likely the list of another dataset).
    """
    listed = read_id_list(path)
    wanted = set(listed)
    kept = [sample for sample in dataset.samples if sample.id not in wanted]
    left_out = [sample for sample in dataset.samples if sample.id in wanted]
    if listed and not left_out:
        raise DataError(
            f"none of its {len(listed)} id(s) is a sample of {dataset.source} (e.g. {listed[0]!r})", path=str(path)
        )
    unknown = len(wanted) - len(left_out)
    if unknown:
        log.warning("--exclude %s: %d listed id(s) are not in the dataset (ignored)", path, unknown)
    reason = f"listed in --exclude {path}"
    exclusions = [Exclusion(sample.id, sample.row, None, None, reason) for sample in left_out]
    return replace(dataset, samples=kept), exclusions
