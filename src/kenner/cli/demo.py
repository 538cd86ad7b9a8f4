"""``kenner demo``: the whole pipeline on Fashion-MNIST with the default encoder, offline."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="the whole pipeline on Fashion-MNIST with the default encoder")
    demo.add_argument("--out-dir", default="demo_runs", help="where the images and the run go (default: demo_runs)")
    demo.add_argument("--per-class", type=int, default=200, help="images per class (default: 200)")
    demo.add_argument("--encoder", default="default", help="encoder spec (default: default)")
    demo.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    demo.add_argument(
        "--no-track",
        dest="track",
        action="store_const",
        const="none",
        default="mlflow",
        help="do not log the run to MLflow",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from kenner.runs.demo import run_demo

    run_demo(
        Path(args.out_dir), per_class=args.per_class, encoder=args.encoder, cache_dir=args.cache_dir, track=args.track
    )
    return 0
