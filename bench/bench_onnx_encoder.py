"""Torch vs ONNX Runtime throughput of the default encoder on CPU (batch 32, 224 px).

Usage: python bench/bench_onnx_encoder.py [--batch 32] [--repeats 5] [--threads 1 2]
Prints images/s for both backends per thread count and the ratio onnx/torch (best of ``repeats``).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import onnxruntime
import torch

from kenner.encoders import Encoder, create_encoder
from kenner.encoders.onnx import OnnxEncoder, to_onnx


def images_per_second(encoder: Encoder, batch: torch.Tensor, repeats: int) -> float:
    """Best-of-``repeats`` throughput of ``encoder.embed`` on ``batch`` after one warm-up call."""
    encoder.embed(batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.embed(batch)
        best = min(best, time.perf_counter() - start)
    return batch.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    torch_encoder = create_encoder("default", backend="torch")
    size = torch_encoder.preprocessing.size
    batch = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as cache:
        exported = to_onnx(torch_encoder, cache_dir=cache)
        print("### Default encoder: torch vs ONNX Runtime on CPU (`bench/bench_onnx_encoder.py`)\n")
        print(
            f"Fingerprint `{torch_encoder.fingerprint}`, batch {args.batch}, {size} px, best of {args.repeats}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. `--backend auto` picks ONNX "
            "Runtime for the default encoder on CPU.\n"
        )
        print("| threads | torch images/s | ONNX Runtime images/s | ONNX / torch |")
        print("|---:|---:|---:|---:|")
        for threads in args.threads:
            torch.set_num_threads(threads)
            onnx_encoder = OnnxEncoder(torch_encoder, exported.path, threads=threads)
            torch_rate = images_per_second(torch_encoder, batch, args.repeats)
            onnx_rate = images_per_second(onnx_encoder, batch, args.repeats)
            print(f"| {threads} | {torch_rate:.1f} | {onnx_rate:.1f} | {onnx_rate / torch_rate:.2f}× |")


if __name__ == "__main__":
    main()
