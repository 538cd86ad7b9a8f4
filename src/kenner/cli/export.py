"""``kenner export RUN --format NAME``: a finished run in another layout (``arrays``: the face-name track's)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a finished run in another layout (--format arrays | onnx)")
    parser.add_argument("run", help="run folder (or one fold_i of a k-fold run)")
    parser.add_argument(
        "--format",
        required=True,
        help="arrays: predictions.npy, true_labels.npy, names.json, results.csv, summary.json, embeddings.npy; "
        "onnx: model.onnx (encoder + head, dynamic batch; the encoder alone for knn/metric galleries) and onnx.json "
        "(checked against torch on the run's images)",
    )
    parser.add_argument("--out-dir", help="where to write (default: RUN/export_<format>)")
    parser.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    parser.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from kenner.runs.export import export_run

    files = export_run(args.run, args.format, args.out_dir, cache_dir=args.cache_dir)
    print(f"{len(files)} file(s) written to {files[0].parent}: {', '.join(path.name for path in files)}")
    return 0
