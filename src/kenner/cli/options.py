"""Options shared by the subcommands that run methods (train, finetune, compare, sweep): generated from the
config tree and the method registry, then composed into a :class:`~kenner.config.tree.RunConfig`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kenner.config.compose import compose_config
from kenner.config.flags import add_config_flags, explicit_layer
from kenner.config.profiles import PROFILES
from kenner.config.sections import SECTIONS
from kenner.config.tree import MODES, RunConfig, default_out_dir
from kenner.methods import METHODS


def warn(message: str) -> None:
    print(f"kenner: warning: {message}", file=sys.stderr)


def method_defaults() -> dict[str, dict[str, Any]]:
    return {name: dict(spec.defaults) for name, spec in METHODS.items()}


def section_methods() -> dict[str, list[str]]:
    """Section -> the methods that read it."""
    return {section: [name for name, spec in METHODS.items() if section in spec.all_sections] for section in SECTIONS}


def add_method_options(parser: argparse.ArgumentParser, *, method: bool = True) -> None:
    """``--method`` (or the seeds' ``--mode``), ``--config``, ``--set``, ``--profile``."""
    if method:
        choice = parser.add_argument_group("method")
        choice.add_argument(
            "--method",
            choices=METHODS.list(),
            default=None,
            help="how to classify: "
            + "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())
            + " (default: linear, or --head-type's head)",
        )
        choice.add_argument(
            "--mode",
            choices=MODES,
            default=None,
            help="the coin pipeline's name for the method: classifier (a head, --head-type), "
            "metric, side-classifier, finetune",
        )
    parser.add_argument(
        "--config", metavar="FILE", help="run_config.json of an earlier run to repeat (flags override it)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one field, e.g. --set lr=0.01 or --set optim.lr=0.01 (repeatable)",
    )
    parser.add_argument(
        "--profile", choices=list(PROFILES), default=None, help="named preset of head knobs (README); flags override it"
    )


def add_config_options(parser: argparse.ArgumentParser, *, grid: bool = False, skip: tuple[str, ...] = ()) -> None:
    """Every section's flags, and ``--wandb``/``--no-track`` for ``--track wandb|none``."""
    add_config_flags(
        parser, SECTIONS, method_defaults=method_defaults(), section_methods=section_methods(), grid=grid, skip=skip
    )
    shortcuts = parser.add_mutually_exclusive_group()
    shortcuts.add_argument(
        "--wandb",
        dest="track",
        action="store_const",
        const="wandb",
        help="track with Weights & Biases (same as --track wandb)",
    )
    shortcuts.add_argument(
        "--no-track", dest="track", action="store_const", const="none", help="do not track (same as --track none)"
    )


def compose_from_args(args: argparse.Namespace, *, method: str | None = None) -> RunConfig:
    """The run config of the parsed flags (method: the subcommand's own, e.g. finetune)."""
    cfg = compose_config(
        dict(METHODS.items()),
        method=method or getattr(args, "method", None),
        mode=getattr(args, "mode", None),
        config_file=args.config,
        profile=args.profile,
        explicit=explicit_layer(args, SECTIONS),
        overrides=args.set,
        out_dir=getattr(args, "out_dir", None),
        warn=warn,
    )
    return cfg if cfg.out_dir else cfg.replace(out_dir=default_out_dir(cfg))
