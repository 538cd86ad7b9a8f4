"""Load benchmark of ``kenner serve`` on loopback: concurrent clients, requests/s and p50/p95 latency, with
micro-batching (``--max-batch 16``) against the same server without it (``--max-batch 1``).

Usage: python bench/bench_serve.py [--clients 16] [--requests 240] [--backend torch] [--device auto]
A linear run on generated images (3 colours, 64 px) is trained once into a temporary folder; each server is
``kenner serve`` in a subprocess; each client posts one image per request (multipart) and waits for the answer.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-c", "import sys; from kenner.cli import main; sys.exit(main(sys.argv[1:]))"]
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 220)}


def make_run(root: Path) -> tuple[Path, list[bytes]]:
    """A trained linear run and the PNG bytes of its images (the requests' payloads)."""
    rng = np.random.default_rng(0)
    payloads = []
    for label, colour in COLOURS.items():
        for i in range(12):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
            path = root / "data" / label / f"{label[0]}{i:02d}_0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            payloads.append(path.read_bytes())
    args = ["train", "--data", str(root / "data"), "--out-dir", str(root / "run"), "--cache-dir", str(root / "cache")]
    command = [*COMMAND, *args, "--epochs", "10", "--no-track", "-q"]
    subprocess.run(command, check=True, env=env(), cwd=root, stdout=subprocess.DEVNULL)
    return root / "run", payloads


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(run: Path, payloads: list[bytes], *, max_batch: int, clients: int, requests: int, extra: list[str]) -> dict:
    """Requests/s, latency percentiles and the server's mean batch for one server configuration."""
    port = free_port()
    args = ["serve", str(run), "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", "5"]
    args += ["--cache-dir", str(run.parent / "cache"), *extra, "-q"]
    server = subprocess.Popen([*COMMAND, *args], env=env(), stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not become ready")
                time.sleep(0.2)

            def ask(i: int) -> float:
                start = time.perf_counter()
                files = {"image": (f"{i}.png", payloads[i % len(payloads)], "image/png")}
                response = client.post("/v1/predict", files=files)
                response.raise_for_status()
                return time.perf_counter() - start

            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(ask, range(2 * clients)))  # warm-up
                before = client.get("/v1/info").json()["batching"]
                start = time.perf_counter()
                latencies = list(pool.map(ask, range(requests)))
                wall = time.perf_counter() - start
            after = client.get("/v1/info").json()["batching"]
    finally:
        server.terminate()
        server.wait(30)
    batches = after["batches"] - before["batches"]
    return {
        "rps": requests / wall,
        "p50": 1000 * float(np.percentile(latencies, 50)),
        "p95": 1000 * float(np.percentile(latencies, 95)),
        "mean_batch": (after["queries"] - before["queries"]) / max(1, batches),
    }


def encoder_rates(device: str, images: int = 64) -> dict[int, float]:
    """Images/s of the default encoder alone (as the server builds it) at batch 1 and batch 8."""
    import torch

    from kenner.device import resolve_device
    from kenner.encoders import create_encoder

    encoder = create_encoder("default", device=str(resolve_device(device)))
    size = encoder.preprocessing.size
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    rates = {}
    for batch in (1, 8):
        encoder.embed(pixels[:batch])
        start = time.perf_counter()
        for first in range(0, images, batch):
            encoder.embed(pixels[first : first + batch])
        rates[batch] = images / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", default="auto", help="the server's device (cuda on a GPU machine)")
    args = parser.parse_args()
    extra = ["--backend", args.backend, "--device", args.device]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        run, payloads = make_run(Path(folder))
        rows = {
            batch: measure(run, payloads, max_batch=batch, clients=args.clients, requests=args.requests, extra=extra)
            for batch in (16, 1)
        }
    rates = encoder_rates(args.device)
    print("### `kenner serve` under load on loopback (`bench/bench_serve.py`)\n")
    print(
        f"{args.clients} concurrent clients, {args.requests} requests each configuration (after a warm-up), one "
        f"64 px PNG per multipart request, linear run on the default encoder, backend `{args.backend}`, device "
        f"`{args.device}`, "
        "`--max-wait-ms 5`; server and clients share this machine's CPU cores.\n"
    )
    print("| server | requests/s | p50 ms | p95 ms | mean batch |")
    print("|---|---:|---:|---:|---:|")
    for batch, row in rows.items():
        name = f"micro-batching, `--max-batch {batch}`" if batch > 1 else "no batching, `--max-batch 1`"
        print(f"| {name} | {row['rps']:.1f} | {row['p50']:.0f} | {row['p95']:.0f} | {row['mean_batch']:.2f} |")
    ratio, p95 = rows[16]["rps"] / rows[1]["rps"], rows[16]["p95"] / rows[1]["p95"]
    print(f"\nThroughput ratio batched / unbatched: **{ratio:.2f}x**; p95 latency ratio: {p95:.2f}.")
    print(
        f"\nThe default encoder alone, same device: {rates[1]:.1f} images/s at batch 1, {rates[8]:.1f} at batch 8 "
        f"({rates[8] / rates[1]:.2f}x), measured before the servers started."
    )


if __name__ == "__main__":
    main()
