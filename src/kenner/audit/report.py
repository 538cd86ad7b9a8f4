"""The audit's outputs: ``audit.md`` (leakage first), ``audit.csv`` (one row per finding, with an ``id`` column
that ``--exclude`` reads) and contact sheets of the first findings of each kind."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kenner.audit.confusable import ConfusablePair
from kenner.audit.contact_sheet import SheetRow, Tile, write_contact_sheet
from kenner.audit.label_issues import LabelIssues
from kenner.audit.near_duplicates import Pairs, crossing
from kenner.audit.outliers import Outliers
from kenner.io import atomic_write_text

CSV_COLUMNS = (
    "finding",
    "rank",
    "id",
    "label",
    "group",
    "split",
    "other_id",
    "other_label",
    "other_group",
    "other_split",
    "score",
    "suggested_label",
)
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
SHEET_ROWS = 8
SHEET_COLUMNS = 6


@dataclass(frozen=True)
class AuditedData:
    """The samples audited: ids, labels, groups as given (before any merge), split and an image each."""

    ids: list[str]
    labels: list[str]
    groups: list[str]
    split: np.ndarray
    images: list[Path]
    class_names: list[str]


@dataclass
class Findings:
    identical: Pairs
    near: Pairs
    above: Pairs  # near-duplicates just above the threshold
    below: Pairs  # the most similar pairs below it
    threshold: float
    issues: LabelIssues
    outliers: Outliers
    confusable: list[ConfusablePair]
    summary: dict[str, str] = field(default_factory=dict)


def write_audit(data: AuditedData, findings: Findings, out_dir: Path, *, top: int = 20) -> dict[str, Path]:
    """Write ``audit.md``, ``audit.csv`` and the contact sheets into ``out_dir``; returns their paths."""
    sheets = _sheets(data, findings, out_dir)
    written = {
        "report": atomic_write_text(out_dir / "audit.md", _markdown(data, findings, sheets, top)),
        "csv": atomic_write_text(out_dir / "audit.csv", _csv(data, findings)),
    }
    return {**written, **sheets}


def _pair_rows(data: AuditedData, pairs: Pairs) -> list[tuple[int, int, float]]:
    """(row to act on, the other row, similarity): the row to act on is the one in the later split (val/test)."""
    rows = []
    for a, b, similarity in zip(pairs.first.tolist(), pairs.second.tolist(), pairs.similarity.tolist(), strict=True):
        if SPLIT_ORDER.get(str(data.split[a]), 0) > SPLIT_ORDER.get(str(data.split[b]), 0):
            a, b = b, a
        rows.append((b, a, similarity))
    return rows


def _leakage(data: AuditedData, findings: Findings) -> Pairs:
    """Cross-split pairs, identical files first, then near-duplicates (each pair once)."""
    both = Pairs(
        np.concatenate([findings.identical.first, findings.near.first]),
        np.concatenate([findings.identical.second, findings.near.second]),
        np.concatenate([findings.identical.similarity, findings.near.similarity]),
    )
    key = both.first * len(data.ids) + both.second
    _, first_seen = np.unique(key, return_index=True)
    both = both.take(np.sort(first_seen))
    return both.take(crossing(both, data.split))


def _csv(data: AuditedData, findings: Findings) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)

    def sample(row: int) -> list[str]:
        return [data.ids[row], data.labels[row], data.groups[row], str(data.split[row])]

    for finding, pairs in (
        ("leakage", _leakage(data, findings)),
        ("identical", findings.identical),
        ("near_duplicate", findings.near),
    ):
        for rank, (row, other, similarity) in enumerate(_pair_rows(data, pairs), start=1):
            writer.writerow([finding, rank, *sample(row), *sample(other), f"{similarity:.4f}", ""])
    issues = findings.issues
    for rank, (row, suggested, quality) in enumerate(
        zip(issues.rows.tolist(), issues.suggested.tolist(), issues.quality.tolist(), strict=True), start=1
    ):
        writer.writerow(
            ["label_issue", rank, *sample(row), "", "", "", "", f"{quality:.4f}", data.class_names[suggested]]
        )
    outliers = findings.outliers
    for rank, row in enumerate(outliers.rows.tolist(), start=1):
        writer.writerow(["outlier", rank, *sample(row), "", "", "", "", f"{outliers.distance[row]:.4f}", ""])
    names = data.class_names
    for rank, pair in enumerate(findings.confusable, start=1):
        classes = {"label": names[pair.first], "other_label": names[pair.second], "score": f"{pair.score:.4f}"}
        writer.writerow(["confusable_classes", rank, *(classes.get(name, "") for name in CSV_COLUMNS[2:])])
    return buffer.getvalue()


def _same(a: str, b: str) -> str:
    return "same" if a == b else "**different**"


def _pair_table(data: AuditedData, pairs: Pairs, top: int) -> list[str]:
    lines = [
        "| # | id | other id | cosine | group | label | split |",
        "|---|---|---|---|---|---|---|",
    ]
    for rank, (row, other, similarity) in enumerate(_pair_rows(data, pairs)[:top], start=1):
        group = _same(data.groups[row], data.groups[other])
        label = f"{data.labels[row]} / {data.labels[other]}" if data.labels[row] != data.labels[other] else "same"
        split = f"{data.split[row]} / {data.split[other]}"
        lines.append(
            f"| {rank} | `{data.ids[row]}` | `{data.ids[other]}` | {similarity:.4f} | {group} | {label} | {split} |"
        )
    if len(pairs) > top:
        lines.append(f"\n... and {len(pairs) - top} more in audit.csv")
    return lines


def _markdown(data: AuditedData, findings: Findings, sheets: dict[str, Path], top: int) -> str:
    leakage = _leakage(data, findings)
    names = data.class_names
    lines = ["# kenner audit", ""]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in findings.summary.items()]
    counts = {
        "leakage (pairs across splits)": len(leakage),
        f"near-duplicate pairs (cosine >= {findings.threshold:.3f})": len(findings.near),
        "byte-identical pairs": len(findings.identical),
        "likely label errors": len(findings.issues.rows),
        "outliers": len(findings.outliers.rows),
    }
    lines += [f"| {key} | {value} |" for key, value in counts.items()]

    lines += ["", f"## Leakage: near-duplicates across splits ({len(leakage)})", ""]
    if len(leakage):
        lines += [
            "These pairs put one object (or one photo) in two splits, so test scores overstate what a model "
            "does on new objects. `kenner train --group-duplicates` keeps them in one split; the `id` column of "
            "audit.csv names the copy in the later split (`--exclude` leaves it out).",
            "",
            *_pair_table(data, leakage, top),
        ]
        lines += _image(sheets, "leakage")
    else:
        lines.append("No pair of near-duplicate or identical images crosses the splits.")

    lines += ["", f"## Near-duplicates ({len(findings.near)} pairs, cosine >= {findings.threshold:.3f})", ""]
    lines += _pair_table(data, findings.near, top) if len(findings.near) else ["None."]
    lines += ["", "### Around the threshold", ""]
    lines.append(
        "The least similar pairs still counted as near-duplicates and the most similar pairs not counted: if the "
        "first look like different objects or the second like one, change `--near-duplicate-threshold`."
    )
    lines += ["", "| side | id | other id | cosine |", "|---|---|---|---|"]
    for side, pairs in (("above", findings.above), ("below", findings.below)):
        for a, b, similarity in zip(
            pairs.first.tolist(), pairs.second.tolist(), pairs.similarity.tolist(), strict=True
        ):
            lines.append(f"| {side} | `{data.ids[a]}` | `{data.ids[b]}` | {similarity:.4f} |")
    lines += _image(sheets, "threshold")

    lines += ["", f"## Byte-identical files ({len(findings.identical)} pairs)", ""]
    lines += _pair_table(data, findings.identical, top) if len(findings.identical) else ["None."]

    issues = findings.issues
    lines += ["", f"## Likely label errors ({len(issues.rows)})", ""]
    lines.append(
        "cleanlab's `find_label_issues` on out-of-fold probabilities of a linear head (group-aware folds), "
        "most likely first; p(given) is the probability the folds gave the label as written."
    )
    lines += ["", "| # | id | given | suggested | p(given) | split |", "|---|---|---|---|---|---|"]
    for rank, (row, suggested, quality) in enumerate(
        zip(issues.rows.tolist()[:top], issues.suggested.tolist(), issues.quality.tolist(), strict=False), start=1
    ):
        lines.append(
            f"| {rank} | `{data.ids[row]}` | {data.labels[row]} | {names[suggested]} | {quality:.3f} "
            f"| {data.split[row]} |"
        )
    lines += _image(sheets, "label_issues")

    outliers = findings.outliers
    lines += ["", f"## Outliers ({len(outliers.rows)})", ""]
    lines.append(
        f"The samples farthest from all others by mean cosine distance to their 5 nearest samples; flagged as "
        f"outliers above {outliers.cutoff:.4f} (median + 4 robust standard deviations). The distance within the "
        "sample's own class beside it."
    )
    lines += ["", "| # | id | label | kNN distance | within class | split | outlier |", "|---|---|---|---|---|---|---|"]
    flagged = set(outliers.rows.tolist())
    for rank, row in enumerate(outliers.ranked.tolist()[:top], start=1):
        lines.append(
            f"| {rank} | `{data.ids[row]}` | {data.labels[row]} | {outliers.distance[row]:.4f} | "
            f"{outliers.class_distance[row]:.4f} | {data.split[row]} | {'**yes**' if row in flagged else 'no'} |"
        )
    lines += _image(sheets, "outliers")

    lines += ["", "## Confusable class pairs", ""]
    lines.append("Share of each class's nearest neighbours that belong to the other class (mean of both ways).")
    lines += ["", "| # | class | class | score | a→b | b→a |", "|---|---|---|---|---|---|"]
    for rank, pair in enumerate(findings.confusable[:top], start=1):
        lines.append(
            f"| {rank} | {names[pair.first]} | {names[pair.second]} | {pair.score:.3f} | "
            f"{pair.first_to_second:.3f} | {pair.second_to_first:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _image(sheets: dict[str, Path], name: str) -> list[str]:
    return ["", f"![{name}]({sheets[name].name})"] if name in sheets else []


def _tile(data: AuditedData, row: int, second: str | None = None) -> Tile:
    """A sample's thumbnail captioned with its id and (by default) its label and split."""
    return Tile(data.images[row], (data.ids[row], second or f"{data.labels[row]} · {data.split[row]}"))


def _sheets(data: AuditedData, findings: Findings, out_dir: Path) -> dict[str, Path]:
    sheets = {}
    leakage = _leakage(data, findings)
    if len(leakage):
        rows = [
            SheetRow(f"cosine {sim:.3f}", (_tile(data, row), _tile(data, other)))
            for row, other, sim in _pair_rows(data, leakage)[:SHEET_ROWS]
        ]
        sheets["leakage"] = write_contact_sheet(rows, out_dir / "leakage.png", "near-duplicates across splits")
    around = [
        SheetRow(f"{side} {findings.threshold:.3f}: cosine {sim:.3f}", (_tile(data, a), _tile(data, b)))
        for side, pairs in (("above", findings.above), ("below", findings.below))
        for a, b, sim in zip(pairs.first.tolist(), pairs.second.tolist(), pairs.similarity.tolist(), strict=True)
    ]
    if around:
        title = f"pairs around the near-duplicate threshold {findings.threshold:.3f}"
        sheets["threshold"] = write_contact_sheet(around, out_dir / "threshold.png", title)
    issues = findings.issues
    if len(issues.rows):
        tiles = [
            _tile(data, row, f"{data.labels[row]} -> {data.class_names[suggested]}")
            for row, suggested in zip(issues.rows.tolist()[: SHEET_ROWS * 2], issues.suggested.tolist(), strict=False)
        ]
        sheets["label_issues"] = write_contact_sheet(
            _grid(tiles), out_dir / "label_issues.png", "likely label errors: given label -> suggested"
        )
    outliers = findings.outliers
    if len(outliers.distance):
        tiles = [_tile(data, row) for row in outliers.ranked.tolist()[:SHEET_COLUMNS]]
        title = f"farthest samples ({len(outliers.rows)} flagged as outliers)"
        sheets["outliers"] = write_contact_sheet(_grid(tiles), out_dir / "outliers.png", title)
    return sheets


def _grid(tiles: list[Tile]) -> list[SheetRow]:
    return [SheetRow("", tuple(tiles[i : i + SHEET_COLUMNS])) for i in range(0, len(tiles), SHEET_COLUMNS)]
