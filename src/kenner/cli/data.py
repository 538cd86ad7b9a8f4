"""Dataset subcommands: ``kenner split`` (a saved group-aware split or folds) and ``kenner embed`` (fill the
embedding cache, optionally export the embeddings)."""

from __future__ import annotations

import argparse

from kenner.config.flags import add_config_flags, explicit_layer

EMBED_SECTIONS = ("data", "encoder", "compute")


def register(subparsers: argparse._SubParsersAction) -> None:
    split = subparsers.add_parser("split", help="make and save a group-aware stratified split (or K folds)")
    split.add_argument("--out-dir", required=True, help="folder for train_ids.json, val_ids.json, ...")
    add_config_flags(split, ("data", "split"), skip=("splits", "background_dir", "bg", "background_color"))
    split.set_defaults(func=cmd_split)

    embed = subparsers.add_parser("embed", help="fill the embedding cache for a dataset")
    embed.add_argument(
        "--output", help="also export the embeddings (.npz with ids, labels, groups, one array per view)"
    )
    add_config_flags(
        embed,
        EMBED_SECTIONS,
        skip=("background_dir", "bg", "background_class", "views", "precision", "accum_steps", "deterministic"),
    )
    embed.set_defaults(func=cmd_embed)


def cmd_split(args: argparse.Namespace) -> int:
    from kenner.config.tree import build_config
    from kenner.runs.data import split_dataset

    cfg = build_config([explicit_layer(args, ("data", "split"))])
    print(split_dataset(cfg.data, cfg.split, args.out_dir))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from kenner.config.tree import build_config
    from kenner.io import writable_file
    from kenner.runs.embed import embed_dataset

    cfg = build_config([explicit_layer(args, EMBED_SECTIONS)])
    if args.output:
        writable_file(args.output, "--output")  # before any embedding
    print(embed_dataset(cfg, output=args.output))
    return 0
