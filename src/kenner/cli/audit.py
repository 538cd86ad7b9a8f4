"""``kenner audit``: near-duplicates and leakage across splits, likely label errors, outliers and confusable
classes of a dataset, on its cached embeddings, before any training."""

from __future__ import annotations

import argparse

from kenner.config.flags import add_config_flags, explicit_layer

AUDIT_SECTIONS = ("data", "split", "encoder", "compute")


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="find near-duplicates (and leakage across the split), likely label errors, outliers and confusable "
        "classes; writes audit.md, audit.csv and contact sheets",
        description="Audit a dataset on its cached embeddings: near-duplicate pairs (Faiss kNN on cosine similarity) "
        "and byte-identical files, those crossing the split first; likely label errors (cleanlab on out-of-fold "
        "probabilities of linear heads over group-aware folds); outliers; confusable class pairs. The split is "
        "--splits DIR, the split of run folder --out-dir RUN, or made as 'kenner train' would make it.",
    )
    audit.add_argument("--out-dir", metavar="RUN", help="audit the split of this run folder (report in RUN/audit)")
    audit.add_argument("--output", metavar="DIR", help="folder of the report (default: RUN/audit or audits/<dataset>)")
    audit.add_argument(
        "--top", type=_positive, default=20, help="findings of each kind listed in audit.md (default 20)"
    )
    audit.add_argument(
        "--audit-folds",
        type=_positive,
        default=5,
        help="group-aware folds of the out-of-fold probabilities (default 5)",
    )
    add_config_flags(
        audit,
        AUDIT_SECTIONS,
        skip=("folds", "background_dir", "bg", "background_class", "precision", "accum_steps", "deterministic"),
    )
    audit.set_defaults(func=cmd_audit)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    from kenner.config.tree import build_config
    from kenner.runs.audit import audit_dataset

    cfg = build_config([explicit_layer(args, AUDIT_SECTIONS)])
    result = audit_dataset(cfg, run_dir=args.out_dir, output=args.output, top=args.top, folds=args.audit_folds)
    counts = result.counts
    print(
        f"{counts['leakage']} leakage pair(s) across splits, {counts['near_duplicates']} near-duplicate and "
        f"{counts['identical']} identical pair(s), {counts['label_issues']} likely label error(s), "
        f"{counts['outliers']} outlier(s)"
    )
    print(f"report: {result.files['report']}  (table: {result.files['csv']})")
    return 0
