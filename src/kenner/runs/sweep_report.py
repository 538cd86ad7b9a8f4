"""The tables of a sweep: ``results.md`` (one row per configuration, mean ± std over seeds) and ``summary.md``
(means per profile, encoder and knob; the best configuration per encoder × profile; deltas against a
reference profile), and one tracked run per configuration."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kenner.errors import KennerError
from kenner.evaluate.report import format_number, markdown_table
from kenner.runs.tracking import Tracker

METRICS = (
    "macro_f1_fg",
    "weighted_f1_fg",
    "macro_precision_fg",
    "macro_recall_fg",
    "accuracy",
    "ece",
    "ece_uncalibrated",
)
TIMINGS = ("fit_seconds", "calibration_seconds", "evaluation_seconds")
KNOBS = ("head", "mixup", "label_smoothing", "lr", "weight_decay")


def read_results(path: Path) -> pd.DataFrame:
    """The finished rows of a sweep (empty when none)."""
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise KennerError(f"{path}: unreadable sweep results ({error}); move it away to start over") from None


def track_row(tracker: Tracker, row: dict[str, Any], *, sweep: str) -> None:
    """One tracked run for one results row: the head config and grid values as parameters, metrics and
    timings as metrics, the sweep folder's name, encoder and profile as tags."""
    params = {"encoder": row["encoder"], "profile": row["profile"], "head": json.loads(row["config"])}
    tags = {
        "kenner.mode": "sweep",
        "kenner.sweep": sweep,
        "kenner.encoder": row["encoder"],
        "kenner.profile": row["profile"],
        "kenner.config_name": row["config_name"],
    }
    with tracker.start_run(row["name"], params, tags=tags):
        tracker.log_metrics(
            {key: row[key] for key in (*METRICS, "macro_f1", "temperature", *TIMINGS, "best_epoch", "batched_heads")}
        )


def frame_table(df: pd.DataFrame) -> str:
    """A data frame as a Markdown table (the report's formatting: floats with 4 decimals)."""
    if df.empty:
        return "(none)\n"
    rows = [[format_number(value) for value in row] for row in df.itertuples(index=False)]
    return markdown_table([str(c) for c in df.columns], rows) + "\n"


def _mean_std(df: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean ± std (over seeds) of ``columns`` per group, as strings, plus the number of runs."""
    grouped = df.groupby(list(by), sort=True)
    out = grouped.size().rename("runs").reset_index()
    for column in columns:
        mean, std = grouped[column].mean().to_numpy(), grouped[column].std(ddof=0).to_numpy()
        out[column] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean, std, strict=True)]
    return out


def results_markdown(results: pd.DataFrame) -> str:
    """results.md: one row per run; with several seeds also mean ± std per configuration."""
    out = io.StringIO()
    out.write(
        "# Sweep results\n\nMetrics on each run's evaluation split (test when there is one); `_fg` "
        "metrics leave the background class out (equal to the plain ones without one). Timings are "
        "seconds per configuration (a batched group's time divided by its heads).\n\n"
    )
    if results.empty:
        return out.getvalue() + "(no finished runs)\n"
    out.write(frame_table(results[["name", *METRICS, *TIMINGS, "batched_heads"]]))
    if results["seed"].nunique() > 1:
        out.write("\n## Mean ± std over seeds\n\n")
        out.write(frame_table(_mean_std(results, ["config_name"], ["macro_f1_fg", "accuracy", "ece"])))
    return out.getvalue()


def summary_markdown(
    results: pd.DataFrame, reference: str, skipped: Sequence[tuple[str, str]] = (), knobs: Sequence[str] = KNOBS
) -> str:
    """summary.md: averages per profile, encoder and knob value; best configuration per encoder ×
    profile; deltas of every profile against ``reference`` on otherwise identical runs."""
    out = io.StringIO()
    out.write(f"# Sweep summary\n\n{len(results)} finished runs")
    out.write(f", {len(skipped)} invalid combinations skipped (see skipped.md).\n\n" if skipped else ".\n\n")
    if results.empty:
        return out.getvalue()
    shown = ["macro_f1_fg", "weighted_f1_fg", "accuracy", "ece", "fit_seconds"]
    for by in ("profile", "encoder", *(k for k in knobs if k in results and results[k].nunique() > 1)):
        out.write(f"## Mean per {by}\n\n")
        table = results.groupby(by, sort=True)[shown].mean().reset_index()
        table.insert(1, "runs", results.groupby(by, sort=True).size().to_numpy())
        out.write(frame_table(table) + "\n")
    out.write("## Best configuration per encoder × profile (by macro_f1_fg, mean over seeds)\n\n")
    grouped = results.groupby(["encoder", "profile", "config_name"], sort=True)
    per_config = grouped[shown].mean().reset_index()
    if results["seed"].nunique() > 1:
        per_config.insert(4, "macro_f1_fg_std", grouped["macro_f1_fg"].std(ddof=0).to_numpy())
        per_config.insert(4, "seeds", grouped.size().to_numpy())
    best = per_config.loc[per_config.groupby(["encoder", "profile"])["macro_f1_fg"].idxmax()]
    out.write(frame_table(best) + "\n")
    out.write(f"## Delta against the reference profile `{reference}`\n\n")
    if reference not in set(results["profile"]):
        out.write(f"The reference profile {reference!r} is not among the finished runs.\n")
        return out.getvalue()
    keys = ["encoder", *(k for k in knobs if k in results), "seed"]
    ref = results[results["profile"] == reference].set_index(keys)
    rows = []
    for profile, part in results[results["profile"] != reference].groupby("profile", sort=True):
        paired = part.set_index(keys).join(ref[["macro_f1_fg", "accuracy", "ece"]], rsuffix="_ref", how="inner")
        if paired.empty:
            continue
        delta = paired["macro_f1_fg"] - paired["macro_f1_fg_ref"]
        rows.append(
            {
                "profile": profile,
                "pairs": len(paired),
                "d_macro_f1_fg": delta.mean(),
                "d_accuracy": (paired["accuracy"] - paired["accuracy_ref"]).mean(),
                "d_ece": (paired["ece"] - paired["ece_ref"]).mean(),
                "wins": int((delta > 0).sum()),
            }
        )
    out.write("Mean difference (profile − reference) over runs identical in every other setting.\n\n")
    out.write(frame_table(pd.DataFrame(rows)))
    return out.getvalue()
