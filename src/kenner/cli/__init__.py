"""The ``kenner`` command: one subcommand per pipeline stage.

Each module in this package owns a group of subcommands and exposes ``register(subparsers)``,
which adds its parsers and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from kenner import __version__
from kenner.errors import Interrupted, KennerError, interrupt_on_signal
from kenner.progress import QUIET

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "kenner.cli.train",
    "kenner.cli.compare",
    "kenner.cli.sweep",
    "kenner.cli.use",
    "kenner.cli.export",
    "kenner.cli.serve",
    "kenner.cli.data",
    "kenner.cli.audit",
    "kenner.cli.demo",
    "kenner.cli.download",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kenner",
        description="Classify photos of specialist collections: frozen embeddings, heads, retrieval, fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"kenner {__version__}")
    add_output_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for subparser in subparsers.choices.values():  # also after the subcommand: kenner train ... --quiet
        add_output_options(subparser, default=argparse.SUPPRESS)
    return parser


def add_output_options(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``-v/--verbose`` and ``-q/--quiet``."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging and full tracebacks"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bars and only warnings (progress bars show on a terminal only anyway)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    was_quiet = os.environ.get(QUIET)
    if args.quiet:
        os.environ[QUIET] = "1"  # every progress bar, in this process and in its workers (for this command)
    if not args.verbose:  # timm announces every checkpoint it loads, faiss which CPU build it picked
        for name in ("timm", "faiss"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)  # schedulers and `timeout` stop a run like ^C
    try:
        return int(args.func(args) or 0)
    except KennerError as error:
        if args.verbose:
            raise
        print(f"kenner: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print("kenner: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 128 + (interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if was_quiet is None:
            os.environ.pop(QUIET, None)
        else:
            os.environ[QUIET] = was_quiet


if __name__ == "__main__":
    sys.exit(main())
