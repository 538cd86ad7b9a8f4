"""kenner at the face-name track's size: 434,528 x 768 float16 embeddings, 500 classes (synthetic).

Each stage runs in its own process, so its peak RSS (``ru_maxrss``) is its own:

- store: write the matrix into an embedding store through ``ShardWriter`` (shards of 1,024 rows, as extraction
  writes them), then read it all back in a fresh process (float16, and float32 as runs read it);
- sweep: 20 linear-head configurations (4 learning rates x 5 weight decays, one batched group) through kenner's
  sweep machinery (``sweep_tasks``) on ``--sweep-rows`` rows of the matrix, locally and as a Ray task;
- faiss: 1,000 held-out queries against the rest as a gallery: exact ``Flat``, what ``auto`` picks, HNSW32;
  queries/s, Recall@1 (label of the nearest neighbour) and its ratio to exact, top-1 agreement with exact;
- extraction: ``--images`` real PNGs (tuxpaint stamps) with the default encoder, in this process vs Ray with
  2 encoder actors (Ray started before the clock; actor start-up is inside it).

Prints a Markdown snippet on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N, DIM, CLASSES = 434_528, 768, 500
QUERIES = 1_000
STAMPS = Path("/usr/share/tuxpaint/stamps")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    """This process's resident memory now (Linux), to tell what a stage adds above its imports."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def keys_of(n: int) -> list[str]:
    return [f"{i:064x}" for i in range(n)]


def labels_of(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, CLASSES, n)


def chunks(n: int, size: int = 16_384):
    """Synthetic embeddings chunk by chunk: a class centre plus noise (never the whole matrix at once); the noise
    (4x the centres' spread) makes neighbours ambiguous, so approximate search has a top-1 to miss."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (CLASSES, DIM)).astype(np.float32)
    labels = labels_of(n)
    for start in range(0, n, size):
        part = labels[start : start + size]
        noise = (
            np.random.default_rng(10**9 + start).normal(0, 4.0, (len(part), DIM)).astype(np.float32)
        )  # not the centres
        yield start, (centres[part] + noise).astype(np.float16)


def store_of(root: Path):
    from kenner.encoders.store import EmbeddingStore

    return EmbeddingStore(root, "synthetic-434k", DIM, "float16")


def stage_write(root: Path, n: int) -> dict:
    from kenner.encoders.extract import ShardWriter

    baseline = rss_now_mb()
    start = time.perf_counter()
    store = store_of(root)
    keys = keys_of(n)
    with ShardWriter(store, first=1024, shard_size=1024) as writer:
        for offset, part in chunks(n):
            writer.add(keys[offset : offset + len(part)], part)
    store.save_index()
    seconds = time.perf_counter() - start
    shards = len(list(store.shard_dir.glob("*.npz")))
    return {"seconds": seconds, "shards": shards, "rss": peak_rss_mb(), "baseline": baseline}


def stage_read(root: Path, n: int, dtype: str) -> dict:
    import kenner.encoders.store  # noqa: F401  (imported before the clock and the baseline)

    keys = keys_of(n)
    baseline = rss_now_mb()
    start = time.perf_counter()
    store = store_of(root)
    opened = time.perf_counter() - start
    matrix = store.get(keys, dtype=dtype)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "open_seconds": opened,
        "nbytes": matrix.nbytes,
        "rss": peak_rss_mb(),
        "baseline": baseline,
    }


def stage_sweep(root: Path, rows: int, ray: bool, out: Path) -> dict:
    import torch

    from kenner.methods.base import Samples, TaskData
    from kenner.runs.sweep import Grid, sweep_tasks

    torch.set_num_threads(2)
    X = store_of(root).get(keys_of(rows))
    y = labels_of(rows)
    split = np.random.default_rng(2).choice(["train", "val", "test"], rows, p=[0.7, 0.15, 0.15])
    ids = [str(i) for i in range(rows)]
    samples = Samples(ids, [{"image": Path(i)} for i in ids], embedder=None, views="image")
    data = TaskData(samples.with_embeddings({"image": X}), y, split, [f"c{i}" for i in range(CLASSES)], ids)
    grid = Grid(values={"lr": ("0.003", "0.01", "0.03", "0.1"), "weight_decay": ("0", "1e-5", "1e-4", "1e-3", "1e-2")})
    base = {"epochs": 3, "batch_size": 1024, "device": "cpu", "patience": 3, "track": "none"}
    ray_address = None
    if ray:
        import ray as ray_api

        ray_api.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_address = "local"
    start = time.perf_counter()
    results = sweep_tasks({"synthetic": data}, grid, base, out, dataset="bench", ray=ray_address)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "configs": len(results),
        "batched": int(results["batched_heads"].max()),
        "best_macro_f1": float(results["macro_f1"].max()),
        "rss": peak_rss_mb(),
    }


def stage_faiss(root: Path, n: int) -> dict:
    import faiss

    from kenner.retrieval.index import Gallery

    faiss.omp_set_num_threads(2)
    labels = labels_of(n)
    matrix = store_of(root).get(keys_of(n))
    is_query = np.zeros(n, bool)
    is_query[np.random.default_rng(3).choice(n, QUERIES, replace=False)] = True
    queries, gallery, q_labels, g_labels = matrix[is_query], matrix[~is_query], labels[is_query], labels[~is_query]
    del matrix
    figures = {}
    exact_top1 = None
    for name, factory, params in (
        ("exact", "Flat", ""),
        ("auto", "auto", ""),
        ("HNSW32", "HNSW32", "efSearch=128"),
    ):
        start = time.perf_counter()
        index = Gallery.build(gallery, g_labels, factory=factory, search_params=params)
        built = time.perf_counter() - start
        start = time.perf_counter()
        found = index.search(queries, k=1)
        searched = time.perf_counter() - start
        top1 = found.indices[:, 0]
        exact_top1 = top1 if exact_top1 is None else exact_top1
        figures[name] = {
            "factory": index.factory,
            "params": index.search_params,
            "build_s": built,
            "qps": QUERIES / searched,
            "recall1": float((found.labels[:, 0] == q_labels).mean()),
            "agree": float((top1 == exact_top1).mean()),
        }
        del index
        print(f"faiss {name}: {figures[name]}", file=sys.stderr)
    return {"indexes": figures, "gallery": int((~is_query).sum()), "rss": peak_rss_mb()}


def stage_extract(images: int, ray: bool, cache: Path) -> dict:
    import torch

    from kenner.config.sections import ComputeConfig, EncoderConfig
    from kenner.encoders.embedder import Embedder

    paths = sorted(STAMPS.rglob("*.png"))[:images]
    address = None
    if ray:
        import ray as ray_api

        ray_api.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        address = "local"
    else:
        torch.set_num_threads(2)
    embedder = Embedder(
        EncoderConfig(encoder="default", cache_dir=str(cache)),
        ComputeConfig(device="cpu", ray=address, ray_workers=2 if ray else None),
    )
    encoder = embedder.encoder  # built before the clock in both cases
    decode_s = 0.0
    if not ray:  # decoding + preprocessing alone, one thread: the CPU cost per image a GPU cluster still pays
        from kenner.encoders.extract import prepare_batch

        torch.set_num_threads(1)
        start = time.perf_counter()
        for path in paths:
            prepare_batch([path], encoder.preprocessing, (255, 255, 255))
        decode_s = (time.perf_counter() - start) / len(paths)
        torch.set_num_threads(2)
    start = time.perf_counter()
    matrix = embedder.embed(paths)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "images": len(matrix),
        "per_s": len(matrix) / seconds,
        "decode_s": decode_s,
        "rss": peak_rss_mb(),
    }


def run_stage(*args: str) -> dict:
    """Run one stage in a fresh process and return its JSON figures."""
    command = [sys.executable, __file__, "--stage", *args]
    print("stage:", " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=N, help="rows of the synthetic matrix (default: 434,528)")
    parser.add_argument("--sweep-rows", type=int, default=43_453, help="rows the sweep fits on (default: 10 %%)")
    parser.add_argument("--images", type=int, default=200, help="images for the extraction comparison")
    parser.add_argument("--skip", nargs="*", default=(), help="stages to leave out: store sweep faiss extract")
    parser.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        name, *rest = args.stage
        work = Path(rest[0])
        if name == "write":
            figures = stage_write(work, int(rest[1]))
        elif name == "read":
            figures = stage_read(work, int(rest[1]), rest[2])
        elif name == "sweep":
            figures = stage_sweep(work, int(rest[1]), rest[2] == "ray", Path(rest[3]))
        elif name == "faiss":
            figures = stage_faiss(work, int(rest[1]))
        else:
            figures = stage_extract(int(rest[1]), rest[2] == "ray", Path(rest[3]))
        print(json.dumps(figures))
        return
    began = time.time()
    work = Path(tempfile.mkdtemp(prefix="kenner-bench-scale-"))
    lines = [f"### Scale: {args.rows:,} x {DIM} float16 embeddings, {CLASSES} classes (synthetic)", ""]
    matrix_mb = args.rows * DIM * 2 / 2**20
    try:
        write = run_stage("write", str(work), str(args.rows))
        read16 = run_stage("read", str(work), str(args.rows), "float16")
        read32 = run_stage("read", str(work), str(args.rows), "float32")
        lines += [
            f"Store (float16 matrix = {matrix_mb:,.0f} MiB; shards of 1,024 rows written by `ShardWriter`):",
            "",
            "| step | seconds | rows/s | MiB/s | peak RSS MiB | RSS after imports MiB | (peak - that) / matrix |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, fig in (
            (f"write ({write['shards']} shards + index)", write),
            ("read all, float16 (fresh process)", read16),
            ("read all, float32 (fresh process)", read32),
        ):
            lines.append(
                f"| {label} | {fig['seconds']:.1f} | {args.rows / fig['seconds']:,.0f} | "
                f"{matrix_mb / fig['seconds']:,.0f} | {fig['rss']:,.0f} | {fig['baseline']:,.0f} | "
                f"{(fig['rss'] - fig['baseline']) / matrix_mb:.2f}x |"
            )
        lines.append("")
        if "sweep" not in args.skip:
            local = run_stage("sweep", str(work), str(args.sweep_rows), "local", str(work / "sweep_local"))
            on_ray = run_stage("sweep", str(work), str(args.sweep_rows), "ray", str(work / "sweep_ray"))
            scale = args.rows / args.sweep_rows
            lines += [
                f"20-configuration linear-head sweep (4 lr x 5 weight decay, {local['batched']} heads batched, "
                f"3 epochs, batch 1024) on {args.sweep_rows:,} rows (70/15/15 split), via `sweep_tasks`:",
                "",
                "| where | seconds | s / config | peak RSS MiB | best macro-F1 |",
                "|---|---|---|---|---|",
                f"| this process | {local['seconds']:.1f} | {local['seconds'] / 20:.2f} | {local['rss']:,.0f} | "
                f"{local['best_macro_f1']:.4f} |",
                f"| one Ray task (local Ray, 2 CPUs) | {on_ray['seconds']:.1f} | {on_ray['seconds'] / 20:.2f} | "
                f"{on_ray['rss']:,.0f} (driver) | {on_ray['best_macro_f1']:.4f} |",
                "",
                f"Fitting costs rows x epochs; scaled by rows (x{scale:.1f}, the per-configuration metric costs "
                f"included, so an upper bound) the full {args.rows:,} rows take at most about "
                f"{local['seconds'] * scale / 60:,.0f} min on these 2 cores.",
                "",
            ]
        if "faiss" not in args.skip:
            faiss_fig = run_stage("faiss", str(work), str(args.rows))
            exact = faiss_fig["indexes"]["exact"]
            lines += [
                f"Faiss, {QUERIES:,} held-out queries against a {faiss_fig['gallery']:,}-vector gallery "
                f"(2 threads; peak RSS {faiss_fig['rss']:,.0f} MiB):",
                "",
                "| index | search params | build s | queries/s | speed-up | Recall@1 | R@1 / exact | top-1 = exact |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for name, fig in faiss_fig["indexes"].items():
                label = f"{name} (`{fig['factory']}`)" if name != "HNSW32" else "`HNSW32`"
                lines.append(
                    f"| {label} | {fig['params'] or '-'} | {fig['build_s']:.1f} | {fig['qps']:,.0f} | "
                    f"{fig['qps'] / exact['qps']:.1f}x | {fig['recall1']:.4f} | "
                    f"{fig['recall1'] / exact['recall1']:.4f} | {fig['agree']:.4f} |"
                )
            lines.append("")
        if "extract" not in args.skip:
            local = run_stage("extract", str(work), str(args.images), "local", str(work / "cache_local"))
            on_ray = run_stage("extract", str(work), str(args.images), "ray", str(work / "cache_ray"))
            lines += [
                f"Extraction of {local['images']} tuxpaint PNGs with the default encoder (EfficientNet-Lite0, 224 px, "
                "CPU) into a fresh store:",
                "",
                "| path | seconds | images/s | ratio |",
                "|---|---|---|---|",
                f"| this process (2 torch threads, 2 decode threads) | {local['seconds']:.1f} | "
                f"{local['per_s']:.1f} | 1.00x |",
                f"| Ray, 2 encoder actors (0.75 CPU each) + decode tasks (0.25 CPU) | {on_ray['seconds']:.1f} | "
                f"{on_ray['per_s']:.1f} | {on_ray['per_s'] / local['per_s']:.2f}x |",
                "",
            ]
            decode_ms = local["decode_s"] * 1000
            lines += [
                f"Measured per-image costs: decoding + preprocessing {decode_ms:.1f} ms of one core (tuxpaint PNGs, "
                f"measured alone); decode + default encoder on this CPU {2000 / local['per_s']:.0f} core-ms. "
                "Projection on paper for a 4-GPU cluster (assumed, not measured: there is no GPU here): 8 cores "
                "per GPU decode at the measured cost; a ViT-B/16 at 224 px embeds about 1,500 images/s per "
                "A100-class GPU in fp16 (EfficientNet-Lite0 several times more); images on shared storage.",
                "",
                "| images | decode-bound (32 cores) | encoder-bound (4 GPUs x 1,500/s) | projected |",
                "|---|---|---|---|",
            ]
            decode_per_s = 32 / local["decode_s"]
            for count in (N, 10_000_000):
                decode_h, gpu_h = count / decode_per_s / 3600, count / 6000 / 3600
                lines.append(
                    f"| {count:,} | {decode_h:.2f} h | {gpu_h:.2f} h | {max(decode_h, gpu_h):.2f} h "
                    f"(+ store write at the measured {args.rows / write['seconds']:,.0f} rows/s: "
                    f"{count / (args.rows / write['seconds']) / 60:.1f} min) |"
                )
            lines.append("")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines.append(
        f"_Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in {time.time() - began:.0f} s on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared, nice 10), Python {platform.python_version()}, "
        f"numpy {np.__version__}._"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
