"""``kenner compare``: several methods (and encoders) on the same leakage-safe split or folds, one table.

Every entry is a full run (its own run folder under the comparison folder), all reading one saved split (or
one set of folds), so the figures differ only by method. ``comparison.csv`` / ``comparison.md`` hold per
entry the test macro-F1 (mean ± std over folds or seeds), accuracy, top-5 accuracy, ECE, the test coverage at
the target precision, fit and predict seconds, and the val macro-F1 that picks the entry marked as chosen;
``comparison.png`` shows the test macro-F1 as bars.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kenner.config.tree import RunConfig, safe_name
from kenner.errors import KennerError
from kenner.evaluate.plots import plot_bars
from kenner.evaluate.report import format_number, markdown_table
from kenner.io import atomic_write_json, atomic_write_text
from kenner.methods.fusion import FUSIONS
from kenner.runs.claim import claim_folder
from kenner.runs.data import split_dataset
from kenner.runs.driver import RunResult, train
from kenner.runs.folds import aggregate_folds

log = logging.getLogger(__name__)

COMPARE_CONFIG = "compare_config.json"
COLUMNS = ("macro_f1", "accuracy", "top5_accuracy", "ece", "reject_coverage")


@dataclass(frozen=True)
class Entry:
    """One compared configuration: its label (``mlp:full``, ``knn@efficientnet_lite1``) and config."""

    label: str
    config: RunConfig


def compare(
    entries: list[Entry], out_dir: str | Path, *, seeds: tuple[int, ...] = (0,), overwrite: bool = False
) -> pd.DataFrame:
    """Run every entry (once per seed) on one split (``--splits DIR``, else made once in ``out_dir/splits``)
    and write the comparison. The folder holds one dataset and split (``compare_config.json``): rerunning
    reuses its runs; another dataset or split is refused unless ``overwrite``."""
    out_dir = Path(out_dir)
    first = entries[0].config
    description = first.to_dict(("data", "split"))
    with claim_folder(out_dir, description, record=COMPARE_CONFIG, overwrite=overwrite):
        atomic_write_json(out_dir / COMPARE_CONFIG, description)
        return _compare(entries, out_dir, first, seeds, overwrite)


def _compare(
    entries: list[Entry], out_dir: Path, first: RunConfig, seeds: tuple[int, ...], overwrite: bool
) -> pd.DataFrame:
    split_dir = Path(first.split.splits) if first.split.splits else out_dir / "splits"
    if not first.split.splits and not (split_dir / ("fold_0" if first.split.folds else "") / "train_ids.json").exists():
        log.info(split_dataset(first.data, first.split, split_dir))
    rows = []
    for entry in entries:
        results = []
        for seed in seeds:
            folder = out_dir / safe_label(entry.label) / (f"seed_{seed}" if len(seeds) > 1 else "")
            cfg = entry.config.replace(out_dir=str(folder), splits=str(split_dir), seed=seed)
            log.info("compare: %s%s", entry.label, f" (seed {seed})" if len(seeds) > 1 else "")
            results.append(train(cfg, overwrite=overwrite))
        rows.append(_row(entry, results))
    table = pd.DataFrame(rows)
    chosen = int(table["val_macro_f1"].fillna(-1).to_numpy().argmax())
    table["chosen_on_val"] = [i == chosen for i in range(len(table))]
    atomic_write_text(out_dir / "comparison.csv", table.to_csv(index=False))
    plot_bars(
        table["method"].tolist(),
        table["test_macro_f1"].tolist(),
        table["test_macro_f1_std"].tolist(),
        out_dir / "comparison.png",
        xlabel="test macro-F1",
        highlight=chosen,
        title="Methods on one split" + (f" ({first.split.folds} folds)" if first.split.folds else ""),
    )
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(table, first, seeds))
    return table


def encoder_entries(encoders: list[str | None], fusions: list[str]) -> list[tuple[str | None, str | None]]:
    """The (encoder, fusion) pairs a comparison runs: every single encoder of ``encoders`` (None: the config's),
    and every ensemble (``a+b`` items, else all of ``encoders`` when ``fusions`` are asked for) fused each way
    of ``fusions`` (default concat). With only the config's encoder (``--encoder a,b``), that one fused each way."""
    unknown = [fusion for fusion in fusions if fusion not in FUSIONS]
    if unknown:
        raise KennerError(f"--fusion: unknown {', '.join(unknown)}; use {', '.join(FUSIONS)}")
    if encoders == [None] and fusions:
        return [(None, fusion) for fusion in fusions]
    pairs: list[tuple[str | None, str | None]] = [(e, None) for e in encoders if e is None or "+" not in e]
    ensembles = [encoder for encoder in encoders if encoder and "+" in encoder]
    if fusions and not ensembles and None not in encoders and len(encoders) > 1:
        ensembles = ["+".join(e for e in encoders if e)]
    return pairs + [(ensemble, fusion) for ensemble in ensembles for fusion in fusions or ["concat"]]


def ensemble_name(encoder: str, fusion: str | None) -> str:
    """An entry's encoder part: ``efficientnet_lite1``, or ``default+efficientnet_lite1(late)`` for an ensemble."""
    members = "+".join(safe_name(member) for member in encoder.replace("+", ",").split(","))
    return f"{members}({fusion})" if fusion else members


def safe_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


def _row(entry: Entry, results: list[RunResult]) -> dict[str, Any]:
    """Means (± std) of the figures over folds (a k-fold run's own summary) or seeds."""
    if results[0].folds is not None and len(results) == 1:
        summary = results[0].folds
    else:
        summary = aggregate_folds([result.metrics for result in results])
    encoder = entry.config.encoder
    row: dict[str, Any] = {
        "method": entry.label,
        "encoder": encoder.encoder + (f" ({encoder.fusion})" if encoder.ensemble else ""),
    }
    for key in COLUMNS:
        figure = summary.get("test", {}).get(key)
        row[f"test_{key}"] = figure["mean"] if figure else np.nan
        row[f"test_{key}_std"] = figure["std"] if figure else np.nan
    row["val_macro_f1"] = summary.get("val", {}).get("macro_f1", {}).get("mean", np.nan)
    row["fit_seconds"] = float(np.mean([result.fit_seconds for result in results]))
    row["predict_seconds"] = float(np.mean([result.predict_seconds for result in results]))
    row["runs"] = len(summary.get("test", {}).get("macro_f1", {}).get("values", [])) or len(results)
    row["run_folder"] = str(results[0].out_dir.parent if len(results) > 1 else results[0].out_dir)
    return row


def comparison_markdown(table: pd.DataFrame, cfg: RunConfig, seeds: tuple[int, ...]) -> str:
    """comparison.md: the table, best first by test macro-F1, the entry chosen on val marked."""
    over = (
        f"{cfg.split.folds} group-aware folds"
        if cfg.split.folds
        else f"one group-aware split ({', '.join(f'{r:g}' for r in cfg.split.split_ratios)})"
    )
    seeds_text = f", seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    target = cfg.decision.target_precision
    lines = [
        f"# Comparison on {cfg.data.data}",
        "",
        f"Every method on {over}{seeds_text}; figures on test as mean ± std. The entry marked ✓ has the best "
        "validation macro-F1 (the one to pick without looking at test). "
        + (
            f"Coverage: share of test images answered at the reject rule tuned on val for precision {target:g}."
            if target is not None
            else "No reject target was set: coverage is 1."
        ),
        "",
    ]

    def pm(row: pd.Series, key: str) -> str:
        mean, std = row[f"test_{key}"], row[f"test_{key}_std"]
        if pd.isna(mean):
            return "–"
        return f"{mean:.4f} ± {std:.4f}" if row["runs"] > 1 else f"{mean:.4f}"

    header = [
        "",
        "method",
        "encoder",
        "macro-F1",
        "accuracy",
        "top-5",
        "ECE",
        "coverage",
        "val macro-F1",
        "fit s",
        "predict s",
    ]
    rows = [
        [
            "✓" if row["chosen_on_val"] else "",
            row["method"],
            row["encoder"],
            *(pm(row, key) for key in COLUMNS),
            format_number(row["val_macro_f1"]),
            f"{row['fit_seconds']:.1f}",
            f"{row['predict_seconds']:.1f}",
        ]
        for _, row in table.sort_values("test_macro_f1", ascending=False).iterrows()
    ]
    lines += [markdown_table(header, rows), "", "![test macro-F1 per method](comparison.png)", ""]
    return "\n".join(lines)
