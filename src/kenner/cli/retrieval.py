"""``kenner search RUN IMAGE... [-k 10]``: the nearest gallery items of new images in a metric run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kenner.errors import KennerError


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser(
        "search", help="nearest gallery items (labels, distances, paths) of images in a metric run",
        description="Embed images as the run did, search its Faiss gallery and list the nearest items. "
                    "Distance = 1 - cosine similarity.",
    )
    search.add_argument("run", help="run folder of a `kenner train --mode metric` run")
    search.add_argument("images", nargs="+", help="image files, folders or a TSV/CSV manifest")
    search.add_argument("-k", "--top-k", type=int, default=10, help="neighbours per image (default: 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--cache-dir", help="embedding cache (default: $KENNER_CACHE/embeddings)")
    search.add_argument("--device", default="auto", help="auto | cpu | cuda")
    search.set_defaults(func=cmd_search)


def search_run(run_dir: Path, items: list[str], *, k: int = 10, cache_dir: str | None = None,
               device: str = "auto") -> list[dict]:
    """Per query: its id, paths, the retrieval prediction ("unclassifiable" if rejected) and neighbours."""
    from kenner.predict import collect_inputs, embed_for_run, query_views
    from kenner.retrieval.model import RetrievalModel
    from kenner.evaluate.reject import UNCLASSIFIABLE
    from kenner.train.run import load_model_info

    if k < 1:
        raise KennerError("-k/--top-k must be at least 1")
    info = load_model_info(run_dir)
    if "retrieval" not in info:
        raise KennerError(f"{run_dir}: a {info['mode']!r} run has no gallery; search needs a metric run")
    model = RetrievalModel.load(run_dir / "model")
    inputs = collect_inputs(items, query_views(info))
    X = embed_for_run(info, inputs, cache_dir=cache_dir, device=device)
    prediction = model.classify_neighbours(model.search(X, max(k, model.k)))
    gallery = model.gallery
    names = gallery.class_names or [str(c) for c in range(model.n_classes)]
    results = []
    neighbours = prediction.neighbours
    for q, (item_id, item_paths) in enumerate(zip(inputs.ids, inputs.paths, strict=True)):
        rows = [
            {"rank": rank + 1, "label": names[neighbours.labels[q, rank]],
             "similarity": float(neighbours.similarities[q, rank]),
             "distance": float(neighbours.distances[q, rank]),
             "id": gallery.ids[index] if gallery.ids else str(index),
             "path": gallery.paths[index] if gallery.paths else ""}
            for rank, index in enumerate(neighbours.indices[q, :k]) if index >= 0
        ]
        label = prediction.predicted[q]
        results.append({"id": item_id, "paths": {v: str(p) for v, p in item_paths.items()},
                        "predicted": names[label] if label >= 0 else UNCLASSIFIABLE,
                        "neighbours": rows})
    return results


def format_results(results: list[dict]) -> str:
    """A plain table per query."""
    lines = []
    for result in results:
        lines.append(f"{result['id']}  ->  {result['predicted']}")
        lines.append(f"{'rank':>4}  {'distance':>8}  {'cosine':>7}  label  id  path")
        lines += [f"{n['rank']:>4}  {n['distance']:8.4f}  {n['similarity']:7.4f}  {n['label']}  {n['id']}  "
                  f"{n['path']}" for n in result["neighbours"]]
        lines.append("")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    results = search_run(Path(args.run), args.images, k=args.top_k, cache_dir=args.cache_dir,
                         device=args.device)
    sys.stdout.write(json.dumps(results, indent=2) + "\n" if args.json else format_results(results))
    return 0
