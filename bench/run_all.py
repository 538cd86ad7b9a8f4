"""Run the benchmarks and write their Markdown figures into BENCHMARKS.md.

Each ``bench/bench_*.py`` prints a Markdown snippet on stdout (progress on stderr). This script runs
them one after another on this machine, keeps each snippet in ``bench/out/<name>.md`` and assembles
``BENCHMARKS.md`` from the snippets with the machine and versions they were measured on — so every
figure there comes from this code, in one run of its script.

    .venv/bin/python bench/run_all.py                 # all of them (about half an hour on 2 cores)
    .venv/bin/python bench/run_all.py extract sweep   # some; the others keep their last snippet
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
ORDER = ("extract", "onnx_encoder", "sweep", "retrieval", "finetune", "compare", "encoders", "audit", "serve", "scale")
TITLE = """# Benchmarks

Figures measured by the scripts in `bench/` (see `bench/README.md`); regenerate with `make bench`.
Each section is one run of its script: baseline and kenner measured in the same run, on the same data.
"""


def machine() -> str:
    import numpy
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}"
    )


def run(name: str) -> None:
    script = ROOT / "bench" / f"bench_{name}.py"
    print(f"== {script.name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{script.name} failed with exit code {result.returncode}")
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    footer = f"\n_Run {stamp} in {time.perf_counter() - started:.0f} s on {machine()}._\n"
    (OUT / f"{name}.md").write_text(result.stdout.strip() + "\n" + footer, encoding="utf-8")


def assemble() -> None:
    parts = [TITLE]
    parts += [(OUT / f"{name}.md").read_text(encoding="utf-8") for name in ORDER if (OUT / f"{name}.md").exists()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(ORDER)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    for name in args.names or ORDER:
        run(name)
    assemble()


if __name__ == "__main__":
    main()
