"""``kenner finetune``: fine-tune an encoder with a classifier head (checkpoints, auto-resume, k-fold)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from kenner.config.legacy import DataConfig, EncoderConfig, SplitConfig, add_dataclass_arguments, merge_explicit
from kenner.errors import KennerError
from kenner.track import add_tracking_arguments, tracker_from_args
from kenner.train.finetune_config import FinetuneConfig, FinetuneRun, load_finetune_run

# EncoderConfig fields fine-tuning does not use (it reads pixels, not the embedding cache, and trains the
# torch model; FinetuneConfig has its own --num-workers and --device).
UNUSED_ENCODER_FIELDS = ("cache_dir", "embed_batch_size", "num_workers", "device", "backend")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune an encoder with a classifier head (checkpoints, auto-resume)",
        description="Fine-tune the encoder's backbone with a cross-entropy or ArcFace head on the images, "
                    "checkpointing every epoch (a rerun resumes from checkpoints/latest_model.pt), then "
                    "evaluate the best weights once and write the same run folder as 'kenner train'.",
    )
    parser.add_argument("--out-dir", help="run folder (default: runs/<dataset>_<encoder>_finetune)")
    parser.add_argument("--config",
                        help="run_config.json of an earlier finetune run to repeat (flags override it)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", metavar="PATH",
                        help="continue from this checkpoint "
                             "(default: OUT_DIR/checkpoints/latest_model.pt if there is one)")
    resume.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start again")
    add_dataclass_arguments(parser.add_argument_group("data"), DataConfig)
    add_dataclass_arguments(parser.add_argument_group("split"), SplitConfig)
    add_dataclass_arguments(parser.add_argument_group("encoder"), EncoderConfig, skip=UNUSED_ENCODER_FIELDS)
    add_dataclass_arguments(parser.add_argument_group("fine-tuning"), FinetuneConfig)
    add_tracking_arguments(parser)
    parser.set_defaults(func=cmd_finetune)


def run_from_args(args: argparse.Namespace) -> FinetuneRun:
    """Defaults <- ``--config`` file <- explicit flags."""
    base = load_finetune_run(args.config) if args.config else FinetuneRun()
    data = merge_explicit(base.data, args, where="data")
    encoder = merge_explicit(base.encoder, args, where="encoder")
    unused = {name: getattr(base.encoder, name) for name in UNUSED_ENCODER_FIELDS}
    encoder = dataclasses.replace(encoder, **unused)  # --num-workers/--device are FinetuneConfig's
    out_dir = args.out_dir or (base.out_dir if args.config else None) or default_run_name(data, encoder)
    return FinetuneRun(out_dir=out_dir, data=data, split=merge_explicit(base.split, args, where="split"),
                       encoder=encoder, finetune=merge_explicit(base.finetune, args, where="finetune"))


def default_run_name(data: DataConfig, encoder: EncoderConfig) -> str:
    from kenner.pipeline import safe_name

    source = Path(data.data)
    return str(Path("runs") / f"{safe_name(source.stem if source.suffix else source.name)}_"
                              f"{safe_name(encoder.encoder)}_finetune")


def cmd_finetune(args: argparse.Namespace) -> int:
    from kenner.train.finetune import finetune, finetune_folds
    from kenner.train.run import headline

    run = run_from_args(args)
    tracker = tracker_from_args(args)
    if run.split.folds:
        if args.resume:
            raise KennerError("--resume names one checkpoint; with --folds each fold resumes from its own")
        summary = finetune_folds(run, tracker=tracker, fresh=args.fresh)
        metrics = {split: {key: value["mean"] for key, value in values.items()}
                   for split, values in summary.items()}
        print(f"mean over {run.split.folds} folds (mean ± std: {Path(run.out_dir) / 'folds_summary.md'})")
    else:
        metrics = finetune(run, tracker=tracker, resume=args.resume, fresh=args.fresh)
    print(headline(metrics))
    report = "folds_summary.md" if run.split.folds else "report.md"
    print(f"run folder: {run.out_dir}  (report: {Path(run.out_dir) / report})")
    return 0
