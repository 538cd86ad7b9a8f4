"""``kenner sweep``: many head configurations (encoders x methods x profiles x field values) on one split."""

from __future__ import annotations

import argparse

from kenner.cli.options import section_methods, warn
from kenner.config.flags import add_config_flags, explicit_layer

GRID_SECTIONS = ("optim", "schedule", "early_stopping", "loss", "head", "arcface")
SHARED_SECTIONS = ("data", "split", "encoder", "compute", "tracking")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train many heads (encoders x methods x profiles x values) on one split; results + summary",
        description="Every combination of the values below is fitted on cached embeddings over the same saved "
        "split. Head flags take several values (comma-separated; --hidden-sizes several space-separated lists). "
        "Configurations differing only in lr, weight decay, label smoothing or class weights train together as "
        "one batched model. Rerunning skips finished configurations. Each configuration is one tracked run.",
    )
    grid = parser.add_argument_group("grid (comma-separated values; every combination runs)")
    grid.add_argument(
        "--encoders",
        default="default",
        metavar="SPEC,...",
        help="encoder specs; a+b is an ensemble, fused as --fusion says (default: default)",
    )
    grid.add_argument(
        "--methods", default="linear", metavar="M,...", help="head methods: linear, mlp, arcface (default: linear)"
    )
    grid.add_argument("--profiles", default="base", metavar="P,...", help="head profiles (default: base; README)")
    grid.add_argument("--mlp", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--reference", default="base", help="profile the summary compares others with")
    parser.add_argument("--out-dir", required=True, help="sweep folder (results.csv, results.md, summary.md)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a sweep folder made for another dataset or split (default: refuse)",
    )
    methods = section_methods()
    add_config_flags(parser, SHARED_SECTIONS, section_methods=methods, skip=("encoder",))
    add_config_flags(parser, GRID_SECTIONS, section_methods=methods, grid=True)
    shortcuts = parser.add_mutually_exclusive_group()
    shortcuts.add_argument("--wandb", dest="track", action="store_const", const="wandb", help="track with W&B")
    shortcuts.add_argument("--no-track", dest="track", action="store_const", const="none", help="do not track")
    parser.set_defaults(func=cmd_sweep)


def _flat(layer: dict) -> dict:
    return {name: value for section in layer.values() for name, value in section.items()}


def cmd_sweep(args: argparse.Namespace) -> int:
    from kenner.errors import KennerError
    from kenner.runs.sweep import Grid, grid_values, run_sweep

    base = _flat(explicit_layer(args, SHARED_SECTIONS))
    if base.get("folds") not in (None, "0", 0):
        raise KennerError(
            "kenner sweep compares configurations on one split; --folds is for kenner train and "
            "kenner compare (repeat configurations with --seed 0,1,2 instead)"
        )
    values = grid_values(_flat(explicit_layer(args, GRID_SECTIONS)), list_fields=("hidden_sizes",))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.mlp:
        warn("--mlp is deprecated; use --methods linear,mlp --hidden-sizes 1024,512 ...")
        sizes = tuple(item for item in args.mlp if item.lower() not in ("lin", "linear", "0"))
        methods = (*(("linear",) if len(sizes) < len(args.mlp) else ()), *(("mlp",) if sizes else ()))
        if sizes:
            values["hidden_sizes"] = sizes
    grid = Grid(
        encoders=tuple(e.strip().replace("+", ",") for e in args.encoders.split(",") if e.strip()),
        methods=methods,
        profiles=tuple(p.strip() for p in args.profiles.split(",") if p.strip()),
        values=values,
    )
    results = run_sweep(grid, base, args.out_dir, reference=args.reference, overwrite=args.overwrite)
    for row in results.sort_values("macro_f1_fg", ascending=False).head(5).itertuples():
        print(f"{row.macro_f1_fg:.4f}  {row.name}")
    print(f"{len(results)} runs; results: {args.out_dir}/results.md  summary: {args.out_dir}/summary.md")
    return 0
