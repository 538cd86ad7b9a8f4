"""``kenner train`` (any method) and ``kenner finetune`` (the finetune method): one run folder per run."""

from __future__ import annotations

import argparse

from kenner.cli.options import add_config_options, add_method_options, compose_from_args
from kenner.errors import KennerError


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train any method on a leakage-safe split and write a run folder with a report",
        description="Split (or reuse a split), fit a method (a head on cached embeddings, kNN, metric learning, "
        "the side classifier or fine-tuning), choose the decision rules on val, evaluate every split "
        "and write a run folder with a report. --folds K makes one run per fold.",
    )
    _add_run_options(train, method=True)
    train.set_defaults(func=cmd_train, fixed_method=None)

    finetune = subparsers.add_parser(
        "finetune",
        help="fine-tune the encoder's backbone with a head (kenner train --method finetune)",
        description="Fine-tune the encoder's backbone with a head on the images, checkpointing every epoch (a "
        "rerun resumes from checkpoints/latest_model.pt), then evaluate the best weights and write "
        "the same run folder as 'kenner train'.",
    )
    _add_run_options(finetune, method=False)
    finetune.set_defaults(func=cmd_train, fixed_method="finetune")


def _add_run_options(parser: argparse.ArgumentParser, *, method: bool) -> None:
    parser.add_argument("--out-dir", help="run folder (default: runs/<dataset>_<encoder>_<method>)")
    add_method_options(parser, method=method)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="fine-tuning: continue from this checkpoint (default: RUN/checkpoints/latest_model.pt when there is one)",
    )
    resume.add_argument("--fresh", action="store_true", help="fine-tuning: ignore existing checkpoints")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder that holds a run with other settings (default: refuse)",
    )
    add_config_options(parser)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = compose_from_args(args, method=args.fixed_method)  # bad flags fail here, before torch is imported
    if args.resume and cfg.split.folds:
        raise KennerError("--resume names one checkpoint; with --folds each fold resumes from its own")
    from kenner.runs.driver import train
    from kenner.runs.folder import headline

    result = train(cfg, resume=args.resume, fresh=args.fresh, overwrite=args.overwrite)
    if result.folds is not None:
        print(f"mean over {cfg.split.folds} folds:")
    print(headline(result.metrics))
    print(f"run folder: {result.out_dir}  (report: {result.report})")
    return 0
