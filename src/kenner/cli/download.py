"""``kenner download``: fetch the images of a ``url,class[,source]`` CSV into a class-folder dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``download`` subcommand."""
    parser = subparsers.add_parser(
        "download",
        help="download images listed in a url,class CSV into ROOT/<class>/",
        description="Download the images of a url,class[,source] CSV in parallel (retries, size and "
        "type checks, decode check, de-duplication by content), keep them under the sources folder "
        "and consolidate them into ROOT/<class>/. A rerun resumes and moves URLs whose class changed; failures "
        "go to ROOT/download_failures.csv and make the exit status 1.",
    )
    parser.add_argument("--csv", type=Path, required=True, help="CSV with url and class columns (source optional)")
    parser.add_argument("--out-dir", type=Path, required=True, help="dataset root: images end up in ROOT/<class>/")
    parser.add_argument(
        "--sources-dir",
        type=Path,
        default=None,
        help="where downloads are kept as <source>/<class>/ (default: ROOT/.sources)",
    )
    parser.add_argument("--source", default="default", help="source name for rows without one (default: default)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads (default: 8)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to connect and per read (default: 10)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="seconds one file may take in all: every attempt, the waits between them and the whole "
        "body (default: 120)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts on timeouts, connection errors, HTTP 408/429/5xx (default: 3)",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="first wait between attempts in seconds, doubled each time (default: 1)",
    )
    parser.add_argument(
        "--max-bytes", type=int, default=50_000_000, help="largest accepted image in bytes (default: 50000000)"
    )
    parser.add_argument(
        "--link-mode",
        choices=("hard", "symlink", "copy"),
        default="hard",
        help="how ROOT/<class>/ gets the files: hard link (copy across file systems), "
        "relative symbolic link or copy (default: hard)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Download and print the summary; exit code 1 (and one line on stderr) when any row failed."""
    from kenner.data.download import download_images

    summary = download_images(
        args.csv,
        args.out_dir,
        sources_dir=args.sources_dir,
        default_source=args.source,
        workers=args.workers,
        timeout=args.timeout,
        deadline=args.deadline,
        retries=args.retries,
        backoff=args.backoff,
        max_bytes=args.max_bytes,
        link_mode=args.link_mode,
    )
    print(summary)
    if summary.problem:
        print(f"kenner: {summary.problem}", file=sys.stderr)
        return 1
    return 0
