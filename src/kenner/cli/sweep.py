"""``kenner sweep``: many head configurations over encoders x profiles x knob values, on one saved split."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from kenner.config.legacy import (
    DataConfig,
    EncoderConfig,
    SplitConfig,
    add_dataclass_arguments,
    build_dataclass,
    explicit_values,
    parse_value,
    parsed_explicit,
)
from kenner.encoders.views import combine_views
from kenner.errors import KennerError
from kenner.heads.config import HeadConfig
from kenner.track import add_tracking_arguments, tracker_from_args

log = logging.getLogger(__name__)

# HeadConfig fields the sweep sets itself (from the lists below or per profile/device).
SWEPT = ("lr", "weight_decay", "label_smoothing", "mixup", "seed", "head_type", "hidden_sizes", "device")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="train many heads (encoders x profiles x knobs) on one split; results + summary",
        description="Every combination of the comma-separated values below is fitted on cached embeddings "
        "over the same saved split. Configurations differing only in lr, weight decay, label smoothing or "
        "class weights train together as one batched model. Rerunning skips finished configurations. "
        "Each configuration is also one tracked run (MLflow by default) in --experiment.",
    )
    grid = parser.add_argument_group("grid (comma-separated values; every combination runs)")
    grid.add_argument("--encoders", default="default", help="encoder specs (default: default)")
    grid.add_argument("--profiles", default="base", help="head profiles (default: base; see README)")
    grid.add_argument("--mlp", nargs="+", default=["lin"], metavar="SIZES",
                      help="architectures: 'lin' or hidden sizes like 1024,512 (several: --mlp lin 768,384)")
    grid.add_argument("--mixup", default="0", help="mixup alphas (default: 0)")
    grid.add_argument("--label-smoothing", default="0", help="label smoothing values (default: 0)")
    grid.add_argument("--lr", help="learning rates (default: the profile's)")
    grid.add_argument("--weight-decay", help="weight decays (default: the profile's)")
    grid.add_argument("--seeds", default="0", help="head seeds; several give mean ± std (default: 0)")
    parser.add_argument("--reference", default="base", help="profile the summary compares others with")
    parser.add_argument("--out-dir", required=True, help="sweep folder (results.csv, results.md, summary.md)")
    add_dataclass_arguments(parser.add_argument_group("data"), DataConfig)
    add_dataclass_arguments(parser.add_argument_group("split"), SplitConfig)
    add_dataclass_arguments(parser.add_argument_group("encoder"), EncoderConfig, skip=("encoder",))
    add_dataclass_arguments(parser.add_argument_group("head (every run)"), HeadConfig, skip=SWEPT)
    add_tracking_arguments(parser)
    parser.set_defaults(func=cmd_sweep)


def _values(text: str | None, kind: type, flag: str) -> tuple:
    if text is None:
        return ()
    return tuple(parse_value(kind, item.strip(), name=flag) for item in text.split(",") if item.strip())


def _architectures(items: list[str]) -> tuple[tuple[int, ...], ...]:
    archs = []
    for item in items:
        sizes = () if item.lower() in ("lin", "linear", "0") else _values(item, int, "--mlp")
        if any(size < 1 for size in sizes):
            raise KennerError(f"--mlp {item}: hidden sizes must be positive integers")
        archs.append(sizes)
    return tuple(archs)


def build_grid(args: argparse.Namespace):
    """The :class:`~kenner.train.sweep.SweepGrid` the flags describe."""
    from kenner.train.profiles import PROFILES
    from kenner.train.sweep import SweepGrid

    fixed = parsed_explicit(args, HeadConfig, where="head", skip=SWEPT)
    profiles = tuple(p.strip() for p in args.profiles.split(",") if p.strip())
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise KennerError(f"--profiles: unknown {', '.join(unknown)}; profiles: {', '.join(PROFILES)}")
    return SweepGrid(
        profiles=profiles, mlp=_architectures(args.mlp), mixup=_values(args.mixup, float, "--mixup"),
        label_smoothing=_values(args.label_smoothing, float, "--label-smoothing"),
        lr=_values(args.lr, float, "--lr"), weight_decay=_values(args.weight_decay, float, "--weight-decay"),
        seeds=_values(args.seeds, int, "--seeds"), fixed=fixed,
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    from kenner.device import resolve_device
    from kenner.pipeline import build_encoder, embed_background, prepare_embeddings
    from kenner.train.sweep import run_sweep

    grid = build_grid(args)
    data = build_dataclass(DataConfig, explicit_values(args, DataConfig), where="data")
    split_cfg = build_dataclass(SplitConfig, explicit_values(args, SplitConfig), where="split")
    if split_cfg.folds:
        raise KennerError("kenner sweep compares configurations on one split; --folds is for kenner train "
                          "(repeat runs with --seeds instead)")
    out_dir = Path(args.out_dir)
    embeddings, background = {}, {}
    for spec in (s.strip() for s in args.encoders.split(",") if s.strip()):
        enc_cfg = build_dataclass(EncoderConfig, {**explicit_values(args, EncoderConfig), "encoder": spec},
                                  where="encoder")
        encoder = build_encoder(enc_cfg)
        # the first encoder saves the split in out_dir/splits; the others reuse it
        prepared = prepare_embeddings(data, split_cfg, enc_cfg, out_dir=out_dir, encoder=encoder)
        embeddings[prepared.encoder_name] = prepared
        if data.bg:
            _, per_view = embed_background(data, prepared.dataset.views, encoder, enc_cfg)
            background[prepared.encoder_name] = combine_views(per_view, enc_cfg.views).astype(np.float32)
    device = resolve_device(args.device or "auto")
    results = run_sweep(embeddings, grid, out_dir, background_class=data.background_class,
                        background=background or None, bg=data.bg, reference=args.reference, device=device,
                        tracker=tracker_from_args(args))
    best = results.sort_values("macro_f1_fg", ascending=False).head(5)
    for row in best.itertuples():
        print(f"{row.macro_f1_fg:.4f}  {row.name}")
    print(f"{len(results)} runs; results: {out_dir / 'results.md'}  summary: {out_dir / 'summary.md'}")
    return 0
