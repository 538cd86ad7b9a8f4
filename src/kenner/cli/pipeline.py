"""Core subcommands: ``train``, ``split``, ``embed``, ``evaluate``, ``predict``, ``demo``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from kenner.config.legacy import (
    DataConfig,
    EncoderConfig,
    RunConfig,
    SplitConfig,
    add_dataclass_arguments,
    apply_overrides,
    load_run_config,
    merge_explicit,
    parsed_explicit,
)
from kenner.errors import KennerError
from kenner.heads.config import HeadConfig
from kenner.io import atomic_write_text
from kenner.retrieval.config import RetrievalConfig
from kenner.track import add_tracking_arguments, tracker_from_args

log = logging.getLogger(__name__)

MODES = ("classifier", "metric", "side-classifier")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="split, embed (cached), fit a head, evaluate and report",
        description="Split (or reuse a split), embed with a frozen encoder (cached), fit a head on the "
                    "embeddings, evaluate every split and write a run folder with a report.",
    )
    train.add_argument("--out-dir", help="run folder (default: runs/<dataset>_<encoder>_<head>)")
    train.add_argument("--mode", choices=MODES, default=None, help="what to train (default: classifier)")
    train.add_argument("--config", help="run_config.json of an earlier run to repeat (flags override it)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="dotted override, e.g. --set head.lr=0.01 (repeatable)")
    train.add_argument("--profile", help="named preset of head knobs (see README); flags override it")
    add_run_arguments(train)
    add_tracking_arguments(train)
    train.set_defaults(func=cmd_train)

    split = subparsers.add_parser("split", help="make and save a group-aware stratified split")
    split.add_argument("--out-dir", required=True, help="folder for train_ids.json, val_ids.json, ...")
    add_dataclass_arguments(split.add_argument_group("data"), DataConfig)
    add_dataclass_arguments(split.add_argument_group("split"), SplitConfig, skip=("splits",))
    split.set_defaults(func=cmd_split)

    embed = subparsers.add_parser("embed", help="fill the embedding cache for a dataset")
    embed.add_argument("--output", help="also export the embeddings (.npz with ids, labels, one array per view)")
    add_dataclass_arguments(embed.add_argument_group("data"), DataConfig)
    add_dataclass_arguments(embed.add_argument_group("encoder"), EncoderConfig)
    embed.set_defaults(func=cmd_embed)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a trained run on its data or another dataset")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--data", help="labelled dataset (default: the run's own, on the run's split)")
    evaluate.add_argument("--out-dir", help="where to write (default: RUN/eval)")
    evaluate.add_argument("--background-class", help="class meaning 'none of these'")
    evaluate.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = subparsers.add_parser("predict", help="top-k labels for new images (files, folders, manifest)")
    predict.add_argument("run", help="run folder")
    predict.add_argument("images", nargs="+", help="image files, folders or a TSV/CSV manifest")
    predict.add_argument("-k", "--top-k", type=int, default=5, help="labels per image (default: 5)")
    predict.add_argument("--format", choices=("csv", "json"), help="default: from --output, else csv")
    predict.add_argument("--output", help="write here instead of stdout")
    predict.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda")
    predict.set_defaults(func=cmd_predict)

    demo = subparsers.add_parser("demo", help="the whole pipeline on Fashion-MNIST with the default encoder")
    demo.add_argument("--out-dir", default="demo_runs", help="where the images and the run go")
    demo.add_argument("--per-class", type=int, default=200, help="images per class (default: 200)")
    demo.add_argument("--encoder", default="default", help="encoder spec (default: default)")
    demo.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    demo.set_defaults(func=cmd_demo)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of every config section, generated from the dataclasses (defaults shown in --help)."""
    add_dataclass_arguments(parser.add_argument_group("data"), DataConfig)
    add_dataclass_arguments(parser.add_argument_group("split"), SplitConfig)
    add_dataclass_arguments(parser.add_argument_group("encoder"), EncoderConfig)
    add_dataclass_arguments(parser.add_argument_group("head"), HeadConfig, skip=("device",))
    add_dataclass_arguments(parser.add_argument_group("retrieval, reject option, side classifier"),
                            RetrievalConfig)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults <- --config file <- --profile <- explicit flags <- --set overrides."""
    from kenner.train.profiles import resolve_config

    base = load_run_config(args.config) if args.config else RunConfig()
    data = merge_explicit(base.data, args, where="data")
    encoder = merge_explicit(base.encoder, args, where="encoder")
    profile = args.profile or base.profile
    if profile:  # head.device is not a flag of its own: it follows --device
        head = resolve_config(profile, {**_differences(base.head), **parsed_explicit(args, HeadConfig, where="head")})
    else:
        head = merge_explicit(base.head, args, where="head")
    out_dir = args.out_dir or (base.out_dir if args.config else None)
    cfg = RunConfig(
        out_dir=out_dir or default_run_name(data, encoder, head),
        mode=args.mode or base.mode,
        data=data, split=merge_explicit(base.split, args, where="split"), encoder=encoder, head=head,
        retrieval=merge_explicit(base.retrieval, args, where="retrieval"), profile=profile,
    )
    return apply_overrides(cfg, args.set) if args.set else cfg


def _differences(head: HeadConfig) -> dict:
    """Fields of a loaded config that differ from the defaults (so a profile does not undo them)."""
    default = HeadConfig()
    return {f.name: getattr(head, f.name) for f in dataclasses.fields(head)
            if getattr(head, f.name) != getattr(default, f.name)}


def default_run_name(data: DataConfig, encoder: EncoderConfig, head: HeadConfig) -> str:
    from kenner.pipeline import safe_name

    dataset = safe_name(Path(data.data).stem if Path(data.data).suffix else Path(data.data).name)
    return str(Path("runs") / f"{dataset}_{safe_name(encoder.encoder)}_{head.head_type}")


def cmd_train(args: argparse.Namespace) -> int:
    from kenner.train.run import headline, train_classifier, train_folds

    cfg = config_from_args(args)
    tracker = tracker_from_args(args)
    if cfg.mode != "classifier":
        from kenner.retrieval.run import train_metric_or_side

        metrics = train_metric_or_side(cfg, tracker)
    elif cfg.split.folds:
        metrics = {split: {k: v["mean"] for k, v in values.items()}
                   for split, values in train_folds(cfg, tracker).items()}
        print(f"mean over {cfg.split.folds} folds:")
    else:
        metrics = train_classifier(cfg, tracker=tracker)
    print(headline(metrics))
    report = "folds_summary.md" if cfg.mode == "classifier" and cfg.split.folds else "report.md"
    print(f"run folder: {cfg.out_dir}  (report: {Path(cfg.out_dir) / report})")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from kenner.data.splits import make_folds, make_split, save_folds, save_split
    from kenner.pipeline import load_data

    data = merge_explicit(DataConfig(), args, where="data")
    split_cfg = merge_explicit(SplitConfig(), args, where="split")
    out_dir = Path(args.out_dir)
    dataset, _ = load_data(data, out_dir)
    if split_cfg.folds:
        folds = make_folds(dataset.groups, dataset.labels, k=split_cfg.folds, seed=split_cfg.split_seed,
                           val_fraction=split_cfg.split_ratios[1])
        save_folds(folds, out_dir, groups=dataset.groups, labels=dataset.labels)
        print(f"{len(folds)} folds of {len(set(dataset.groups))} groups written to {out_dir}")
        return 0
    split, warnings = make_split(dataset.groups, dataset.labels, ratios=split_cfg.split_ratios,
                                 seed=split_cfg.split_seed)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    save_split(split, out_dir, groups=dataset.groups, labels=dataset.labels)
    print(f"train/val/test groups: {len(split.train)}/{len(split.val)}/{len(split.test)} -> {out_dir}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from kenner.pipeline import build_encoder, embed_views, load_data

    data = merge_explicit(DataConfig(), args, where="data")
    enc_cfg = merge_explicit(EncoderConfig(), args, where="encoder")
    dataset, _ = load_data(data)
    encoder = build_encoder(enc_cfg)
    per_view = embed_views([s.paths for s in dataset.samples], dataset.views, encoder, enc_cfg,
                           data.background_color)
    print(f"{len(dataset.samples)} samples x {len(dataset.views)} view(s) embedded with {enc_cfg.encoder} "
          f"(fingerprint {encoder.fingerprint}, dim {encoder.dim})")
    if args.output:
        import io

        from kenner.io import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, ids=np.asarray(dataset.ids), labels=np.asarray(dataset.labels),
                 groups=np.asarray(dataset.groups), **{f"view_{v}": a for v, a in per_view.items()})
        atomic_write_bytes(args.output, buffer.getvalue())
        print(f"exported to {args.output}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kenner.train.evaluate_run import evaluate_run
    from kenner.train.run import headline

    metrics = evaluate_run(Path(args.run), data=args.data, out_dir=args.out_dir,
                           background_class=args.background_class, cache_dir=args.cache_dir)
    print(headline(metrics))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kenner.predict import format_predictions, predict_run

    if args.top_k < 1:
        raise KennerError("--top-k must be at least 1")
    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "csv")
    results = predict_run(Path(args.run), args.images, k=args.top_k, cache_dir=args.cache_dir,
                          device=args.device)
    text = format_predictions(results, fmt)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(results)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kenner.demo import run_demo

    run_demo(Path(args.out_dir), per_class=args.per_class, encoder=args.encoder, cache_dir=args.cache_dir)
    return 0
