"""The ``kenner`` command: one subcommand per pipeline stage.

Each module in this package owns a group of subcommands and exposes ``register(subparsers)``,
which adds its parsers and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from kenner import __version__
from kenner.errors import Interrupted, KennerError, interrupt_on_signal

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "kenner.cli.train",
    "kenner.cli.compare",
    "kenner.cli.sweep",
    "kenner.cli.use",
    "kenner.cli.data",
    "kenner.cli.demo",
    "kenner.cli.download",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kenner",
        description="Classify photos of specialist collections: frozen embeddings, heads, retrieval, fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"kenner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
