"""``kenner compare``: several methods (and encoders) on the same split or folds; comparison.md/.csv/.png."""

from __future__ import annotations

import argparse

from kenner.cli.options import add_config_options, add_method_options, warn

DEFAULT_TARGET_PRECISION = 0.95


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run several methods (and encoders) on one split or folds and compare them",
        description="Every method (NAME or NAME:PROFILE) runs as a full run on the same saved split (or folds), "
        "in OUT_DIR/<method>/; comparison.md, comparison.csv and comparison.png show test macro-F1 "
        "(mean ± std over folds or seeds), accuracy, top-5, ECE, coverage at the target precision "
        f"(default {DEFAULT_TARGET_PRECISION}), fit and predict seconds, and the method chosen on val.",
    )
    parser.add_argument(
        "--methods",
        required=True,
        metavar="M[:PROFILE],...",
        help="methods to compare, e.g. knn,linear,mlp:full,metric,finetune",
    )
    parser.add_argument(
        "--encoders",
        metavar="SPEC,...",
        help="compare each method with each of these encoders (default: --encoder); a+b is an ensemble",
    )
    parser.add_argument(
        "--fusion",
        dest="fusions",
        metavar="F,...",
        help="also compare ensembles fused each of these ways (concat, late, learned): the a+b items of --encoders, "
        "else all of --encoders together (default: concat for a+b items)",
    )
    parser.add_argument(
        "--seeds", default="0", metavar="S,...", help="seeds; several give mean ± std without folds (default: 0)"
    )
    parser.add_argument("--out-dir", required=True, help="comparison folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace method run folders that hold runs with other settings (default: refuse)",
    )
    add_method_options(parser, method=False)
    add_config_options(parser, skip=("seed", "fusion"))
    parser.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from kenner.config.compose import compose_config
    from kenner.config.flags import explicit_layer
    from kenner.config.sections import SECTIONS
    from kenner.errors import KennerError
    from kenner.methods import METHODS
    from kenner.runs.compare import Entry, compare, encoder_entries, ensemble_name

    explicit = explicit_layer(args, SECTIONS)
    decision = explicit.setdefault("decision", {})
    if "target_precision" not in decision and "target_coverage" not in decision:
        decision["target_precision"] = DEFAULT_TARGET_PRECISION
    specs = [item.strip() for item in args.methods.split(",") if item.strip()]
    encoders = [item.strip() for item in (args.encoders or "").split(",") if item.strip()] or [None]
    fusions = [item.strip() for item in (args.fusions or "").split(",") if item.strip()]
    entries_of = encoder_entries(encoders, fusions)
    several = len(entries_of) > 1
    try:
        seeds = tuple(int(seed) for seed in args.seeds.split(",") if seed.strip())
    except ValueError:
        raise KennerError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    entries = []
    for encoder, fusion in entries_of:
        chosen = {"encoder": encoder.replace("+", ",")} if encoder else {}
        layer = {
            **explicit,
            "encoder": {**explicit.get("encoder", {}), **chosen, **({"fusion": fusion} if fusion else {})},
        }
        for spec in specs:
            method, _, profile = spec.partition(":")
            cfg = compose_config(
                dict(METHODS.items()),
                method=method,
                profile=profile or None,
                explicit=layer,
                config_file=args.config,
                overrides=args.set,
                out_dir=args.out_dir,
                warn=warn,
            )
            tag = ensemble_name(encoder, fusion) if encoder else fusion
            label = spec + (f"@{tag}" if tag and several else "")
            entries.append(Entry(label, cfg))
    table = compare(entries, args.out_dir, seeds=seeds, overwrite=args.overwrite)
    best = table.loc[table["chosen_on_val"]].iloc[0]
    for row in table.sort_values("test_macro_f1", ascending=False).itertuples():
        print(f"{row.test_macro_f1:.4f}  {row.method}{'  (chosen on val)' if row.chosen_on_val else ''}")
    print(f"chosen on val: {best['method']}; comparison: {args.out_dir}/comparison.md")
    return 0
