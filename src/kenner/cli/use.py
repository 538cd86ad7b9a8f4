"""Using a finished run: ``kenner evaluate``, ``kenner predict`` and ``kenner search`` (any method)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("evaluate", help="evaluate a run on its own split or another labelled dataset")
    evaluate.add_argument("run", help="run folder (or one fold_i of a k-fold run)")
    evaluate.add_argument(
        "--data", help="labelled dataset, all of it as test (default: the run's own, on the run's split)"
    )
    evaluate.add_argument("--out-dir", help="where to write (default: RUN/eval)")
    evaluate.add_argument("--background-class", help="class meaning 'none of these' (foreground metrics)")
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = subparsers.add_parser("predict", help="top-k labels for new images (files, folders, manifest)")
    predict.add_argument("run", help="run folder")
    predict.add_argument("images", nargs="+", help="image files, folders or a TSV/CSV manifest")
    predict.add_argument("-k", "--top-k", type=int, default=5, help="labels per image (default: 5)")
    predict.add_argument(
        "--format", choices=("csv", "json"), help="output format (default: from --output's suffix, else csv)"
    )
    predict.add_argument("--output", help="write here instead of stdout")
    predict.add_argument(
        "--on-bad-image",
        choices=("fail", "skip"),
        default="fail",
        help="an image that cannot be used: stop (fail), or answer its item with the reason (skip) (default: fail)",
    )
    _add_common(predict)
    predict.set_defaults(func=cmd_predict)

    search = subparsers.add_parser(
        "search",
        help="nearest gallery items of images in a run with a gallery",
        description="Embed images as the run did, search its Faiss gallery and list "
        "the nearest items. Distance = 1 - cosine similarity.",
    )
    search.add_argument("run", help="run folder of a knn or metric run")
    search.add_argument("images", nargs="+", help="image files, folders or a TSV/CSV manifest")
    search.add_argument("-k", "--top-k", type=int, default=10, help="neighbours per image (default: 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(search)
    search.set_defaults(func=cmd_search)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kenner.runs.evaluate import evaluate_run
    from kenner.runs.folder import headline

    result = evaluate_run(
        args.run,
        data=args.data,
        out_dir=args.out_dir,
        background_class=args.background_class,
        cache_dir=args.cache_dir,
        device=args.device,
    )
    print(headline(result.metrics))
    print(f"evaluation written to {result.out_dir}  (report: {result.report})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from kenner.io import atomic_write_text, writable_file
    from kenner.runs.predict import format_predictions, predict_run

    fmt = args.format or ("json" if args.output and args.output.endswith(".json") else "csv")
    if args.output:
        writable_file(args.output, "--output")  # before any embedding
    results = predict_run(
        args.run,
        args.images,
        k=args.top_k,
        cache_dir=args.cache_dir,
        device=args.device,
        on_bad_image=args.on_bad_image,
    )
    text = format_predictions(results, fmt)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(results)} prediction(s) written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from kenner.runs.search import format_results, search_run

    results = search_run(args.run, args.images, k=args.top_k, cache_dir=args.cache_dir, device=args.device)
    sys.stdout.write(json.dumps(results, indent=2) + "\n" if args.json else format_results(results))
    return 0
